"""The study pipeline end to end on a micro config: resume, LR selection, haystacks, the RoPE-scaled row, several
seeds; and its refusals."""

import dataclasses
import json
import math
import multiprocessing
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from infini_llama import host
from infini_llama.data.sampler import WindowSampler
from infini_llama.study import StudyError, run_study, study_config
from infini_llama.study import results as study_results
from infini_llama.study import runner as study_runner
from infini_llama.study import stages as study_stages
from infini_llama.study.arms import pretraining_copies, pretraining_source
from infini_llama.study.estimate import estimate_study
from infini_llama.train import read_metrics

TEXT = "\n".join(f"Sentence number {i} tells of the sea, the ship and the whale." for i in range(1500))


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """study_config("tiny") shrunk to seconds: 1-layer width-32 models, 3 steps, one sample per cell."""
    corpus = tmp_path_factory.mktemp("data") / "corpus.txt"
    corpus.write_text(TEXT)
    model = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=2, segment_len=16)  # fmt: skip
    steps = dict(steps=3, eval_every=0, save_every=0, eval_windows=2, batch_size=4, log_every=1, compile=False)

    def make(**overrides):
        fields = dict(
            model=model, pretrain=dict(data=[str(corpus)], seq_len=128, **steps), finetune=dict(seq_len=128, **steps),
            eval_multiples=(1, 2), eval_depths=(0.0, 1.0), eval_samples=1, eval_batch_size=2, selection_samples=4,
            perplexity_windows=1, perplexity_bucket=32,
        )  # fmt: skip
        return study_config("tiny", **{**fields, **overrides})

    return make


@pytest.fixture(autouse=True)
def shared_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("INFINI_LLAMA_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def one_thread():
    """Micro models run fastest on one thread (with two, their tiny ops mostly wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_study_runs_end_to_end_and_resumes(micro, tmp_path, monkeypatch):
    scalings = [{"rope_type": "dynamic", "factor": 1.0}, {"rope_type": "yarn", "factor": 2.0}]
    cfg = micro(finetune_lr_grid=(1e-3, 3e-3), eval_rope_scaling=scalings)
    # Fine-tuning with an automatic micro-batch, as the GPU presets have it: on a CPU, the whole batch in one pass.
    cfg = dataclasses.replace(cfg, finetune={**cfg.finetune, "batch_size": None, "global_batch": 4})
    out = tmp_path / "study"
    # Kill the study in the baseline's second fine-tuning: everything before it must survive and not be redone.
    real_train = study_stages.train
    calls = []

    def dying_train(tcfg, **kwargs):
        calls.append(tcfg.out)
        if tcfg.out.endswith("full/finetune-lr=0.003"):
            raise KeyboardInterrupt
        return real_train(tcfg, **kwargs)

    monkeypatch.setattr(study_stages, "train", dying_train)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, out, device="cpu", progress=False, jobs=1)
    assert (out / "infini" / "gates.done").exists() and (out / "full" / "finetune-lr=0.001.done").exists()
    assert not (out / "full" / "finetune-lr=0.003.done").exists()

    calls.clear()
    monkeypatch.setattr(study_stages, "train", lambda tcfg, **kw: (calls.append(tcfg.out), real_train(tcfg, **kw))[1])
    report = run_study(cfg, out, device="cpu", progress=False, jobs=1, command="infini-llama study --out study")
    assert [c.split("/")[-2:] for c in calls] == [["full", "finetune-lr=0.003"]], "only the unfinished stage ran"

    passkey = [f"{task}-{h}" for h in ("repeat", "book") for task in ("passkey", "passkey-memory-off")]
    baseline = [f"{task}-{h}" for h in ("repeat", "book") for task in ("passkey", "passkey-rope", "passkey-rope2")]
    for arm, stages in (
        ("infini", passkey + ["perplexity", "gates", "layers-off"]),
        ("full", baseline + ["perplexity"]),
    ):
        for stage in ["pretrain", "finetune-lr=0.001", "finetune-lr=0.003", "select"] + stages:
            assert (out / arm / f"{stage}.done").exists(), (arm, stage)

    results = json.loads((out / "results.json").read_text())
    for arm in ("infini", "full"):
        selection = results["arms"][arm]["selection"]
        assert selection["length"] == 128, "the LR is chosen at the training length, never beyond"
        assert [c["lr"] for c in selection["candidates"]] == [1e-3, 3e-3]
        ranked = [(c["exact"]["rate"], c["digit_acc"]["mean"], -c["val_loss"]) for c in selection["candidates"]]
        assert selection["chosen_lr"] == selection["candidates"][ranked.index(max(ranked))]["lr"]
        evaluated = json.loads((out / arm / "eval" / "passkey-book" / "summary.json").read_text())
        assert evaluated["model"]["checkpoint"].endswith(f"{arm}/finetune-lr={selection['chosen_lr']:g}/final")
        assert evaluated["settings"]["haystack"] == "book" and evaluated["settings"]["seed"] == 0
    rope = json.loads((out / "full" / "eval" / "passkey-rope-repeat" / "summary.json").read_text())
    assert rope["settings"]["rope_scaling"] == {
        "rope_type": "dynamic", "factor": 1.0, "original_max_position_embeddings": 128,
    }  # fmt: skip
    yarn = json.loads((out / "full" / "eval" / "passkey-rope2-book" / "summary.json").read_text())
    assert yarn["settings"]["rope_scaling"] == {
        "rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 128,
    }  # fmt: skip
    assert results["arms"]["full"]["passkey"]["passkey-rope2"]["label"] == "full (RoPE YaRN ×2)"
    assert "full (RoPE YaRN ×2)" in (out / "REPORT.md").read_text()
    # Each fine-tuning run's loss curve, from its own metrics: every LR of the grid, windows of one step here.
    for arm in ("infini", "full"):
        curves = results["arms"][arm]["finetune_curves"]
        assert [c["lr"] for c in curves] == [1e-3, 3e-3]
        for curve in curves:
            logged = read_metrics(out / arm / f"finetune-lr={curve['lr']:g}" / "metrics.jsonl", "train")
            assert curve["window_steps"] == 1
            assert curve["train"] == [[r["step"], round(r["loss"], 5)] for r in logged] and len(logged) == 3
            val = read_metrics(out / arm / f"finetune-lr={curve['lr']:g}" / "metrics.jsonl", "val")
            assert val and curve["val_by_token"] == [
                [r["step"], [round(x, 5) for x in r["answer_token_losses"]]] for r in val
            ]  # fmt: skip
    text = (out / "REPORT.md").read_text()
    assert "## Fine-tuning loss" in text and "| infini, LR 0.003 |" in text and (out / "finetune_loss.png").is_file()
    assert "| run | step | space | digit 1 |" in text, "the validation loss by answer token"
    assert (out / "answer_token_loss.png").is_file() and "![validation loss by answer token]" in text
    # Each stage's wall time, from its marker, in the order the stages run; grouped in the report.
    for arm in ("infini", "full"):
        seconds = results["arms"][arm]["stage_seconds"]
        assert list(seconds)[:4] == ["pretrain", "finetune-lr=0.001", "finetune-lr=0.003", "select"]
        for stage, value in seconds.items():
            assert value == round(json.loads((out / arm / f"{stage}.done").read_text())["seconds"], 1)
    assert "## Stage times" in text and "| arm | pretraining | fine-tuning | evaluation | total |" in text
    # Where each training stage's time went, from the trainer, a row per stage (an LR grid's fine-tunings each).
    # How many times each pretraining read its training split (its windows over the split's), from its run.json.
    for arm in ("infini", "full"):
        run = json.loads((out / arm / "pretrain" / "run.json").read_text())
        windows = WindowSampler(run["data"]["num_tokens"], run["data"]["seq_len"]).num_windows
        reads = results["arms"][arm]["pretrain_reads"]
        assert reads == round(cfg.pretrain["steps"] * run["data"]["sequences_per_step"] / windows, 2) > 0
    assert f"| {reads:.2f} |" in text and "training split read (times)" in text
    reads_of = study_results.training_split_reads
    assert reads_of(out / "full" / "finetune-lr=0.001") is None, "passkey prompts are not a split of text"
    assert reads_of(out / "missing") is None
    split = results["arms"]["infini"]["pretrain"]["split_seconds"]
    assert set(split) == {"setup", "first_step", "steps", "validation", "checkpoints", "final"}
    assert "| stage | setup | first step | other steps | validations | checkpoints | final model |" in text
    assert "| infini, fine-tuning, LR 0.003 |" in text and "| full, pretraining |" in text
    # Against the best RoPE-scaled row: at each (haystack, length) the row with Infini's smallest lead.
    best = results["best_rope"]
    assert sorted((b["haystack"], b["multiple"]) for b in best) == [(h, m) for h in ("book", "repeat") for m in (1, 2)]
    for b in best:
        rows = [c for c in results["comparisons"] if c["task"].startswith("passkey-rope")
                and (c["haystack"], c["multiple"]) == (b["haystack"], b["multiple"])]  # fmt: skip
        assert len(rows) == 2 and b["difference"] == min(c["difference"] for c in rows)
    assert {b["scaling"] for b in best} <= {"RoPE dynamic NTK", "RoPE YaRN ×2"}
    assert "## Infini against the best RoPE-scaled row, length by length" in (out / "REPORT.md").read_text()
    assert [r["length"] for r in results["arms"]["full"]["passkey"]["passkey"]["haystacks"]["book"]["by_length"]] == [
        128,
        256,
    ]
    import transformers

    (env,) = results["environments"]  # every evaluation ran here, so one environment, with its versions
    assert env["versions"]["transformers"] == transformers.__version__
    text = report.read_text()
    for needle in (
        f"transformers {transformers.__version__}",
        "## Passkey accuracy by length: classic filler",
        "## Passkey accuracy by length: held-out text",
        "| infini (memory off) |",
        "| full (RoPE dynamic NTK) |",
        "## What each arm got",
        "## Did each arm learn the task?",
        "## Infini's lead beyond the training length",
        "Command: `infini-llama study --out study`",
        "| updates \\ length | 128 | 256 |",
    ):
        assert needle in text, needle
    assert "1 × 3 tokens" not in text and "3 steps of 4 × 128 tokens" in text
    run = json.loads((out / "infini" / "finetune-lr=0.001" / "run.json").read_text())
    assert (run["train"]["batch_size"], run["grad_accum"]) == (4, 1) and run["micro_batch"]["global_batch"] == 4
    assert list((out / "report").glob("passkey_heatmap_*_book.png"))


def test_several_seeds_run_whole_studies_and_report_their_spread(micro, tmp_path):
    cfg = micro(seeds=(0, 1), eval_haystacks=("book",), eval_rope_scaling=None)
    out = tmp_path / "study"
    report = run_study(cfg, out, device="cpu", progress=False, jobs=2)
    for seed in (0, 1):
        saved = json.loads((out / f"seed-{seed}" / "study.json").read_text())
        assert saved["seeds"] == [seed] and (out / f"seed-{seed}" / "REPORT.md").is_file()
        grid = json.loads((out / f"seed-{seed}" / "full" / "eval" / "passkey-book" / "summary.json").read_text())
        assert grid["settings"]["seed"] == seed
    assert json.loads((out / "study.json").read_text())["seeds"] == [0, 1]
    summary = json.loads((out / "results.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["per_seed"]) == {"0", "1"}
    row = next(r for r in summary["rows"] if r["label"] == "infini")
    for i, cell in enumerate(row["haystacks"]["book"]):
        rates = [summary["per_seed"][s]["arms"]["infini"]["passkey"]["passkey"]["haystacks"]["book"]["by_length"][i]
                 ["exact"]["rate"] for s in ("0", "1")]  # fmt: skip
        assert cell["exact"]["mean"] == pytest.approx(sum(rates) / 2)
        assert (cell["exact"]["min"], cell["exact"]["max"]) == (min(rates), max(rates))
    text = report.read_text()
    assert "## Passkey accuracy across seeds: held-out text" in text and "[seed 1](seed-1/REPORT.md)" in text
    assert "| infini | 1 |" in text and "## Fine-tuning LR chosen per seed" in text
    # Each run's fine-tuning loss at half and all of its steps, per seed, from the seeds' curves; a panel per run.
    assert "## Fine-tuning loss per seed" in text and (out / "finetune_loss.png").is_file()
    assert "## Stage times per seed" in text
    # 3 steps teach nothing: no arm learned the task, in any seed, and the report says so before any lead.
    assert text.index("## Did each arm learn the task?") < text.index("## Infini's lead beyond the training")
    assert "Not learned (seed 0: infini, full; seed 1: infini, full)." in text
    assert summary["learned"]["0"]["full"]["book"]["learned"] is False
    curves = [summary["per_seed"][s]["arms"]["full"]["finetune_curves"][0]["train"] for s in ("0", "1")]
    half_and_end = [f"{curve[1][1]:.3f} → {curve[2][1]:.3f}" for curve in curves]  # steps 2 and 3 of 3
    assert f"| full | {half_and_end[0]} | {half_and_end[1]} |" in text
    # Accuracy by memory updates, every seed's samples pooled: the counts are the seeds' counts added up.
    pooled = summary["memory_updates_pooled"]["infini"]["haystacks"]["book"]
    for key in ("by_memory_updates", "by_length_and_memory_updates"):
        per_seed = [summary["per_seed"][s]["arms"]["infini"]["passkey"]["passkey"]["haystacks"]["book"][key]
                    for s in ("0", "1")]  # fmt: skip
        assert sum(g["exact"]["n"] for g in pooled[key]) == sum(g["exact"]["n"] for seed in per_seed for g in seed)
        assert sum(g["exact"]["successes"] for g in pooled[key]) == sum(
            g["exact"]["successes"] for seed in per_seed for g in seed
        )
    assert "full" not in summary["memory_updates_pooled"], "no memory, no update count"
    assert "## Accuracy by memory updates, seeds pooled: held-out text" in text and "| updates \\ length |" in text
    # Accuracy by kind of key, pooled likewise, for every row: each seed's samples counted once, every key in it.
    from infini_llama.eval.scoring import key_kind

    samples = [json.loads(line) for s in (0, 1)
               for line in (out / f"seed-{s}" / "full" / "eval" / "passkey-book" / "samples.jsonl").open()]  # fmt: skip
    kinds = summary["key_kinds_pooled"]["full"]["book"]
    for r in kinds:
        group = [x for x in samples if x["length"] == r["length"] and key_kind(x["key"]) == r["key_kind"]]
        assert (r["exact"]["n"], r["exact"]["successes"]) == (len(group), sum(x["exact"] for x in group))
        assert r["exact"]["clusters"] == len({(x["seed"], x["sample"]) for x in group})
    assert sum(r["exact"]["n"] for r in kinds) == len(samples)
    assert "## Accuracy by kind of key, seeds pooled: held-out text" in text
    assert "## Accuracy by kind of key: held-out text" in (out / "seed-0" / "REPORT.md").read_text()
    # Accuracy by where a segment boundary cuts the needle (segments of 16: every needle is cut), pooled likewise.
    from infini_llama.eval.diagnostics import needle_cut_bucket

    cuts = summary["needle_cuts_pooled"]["full"]["book"]
    for r in cuts:
        group = [x for x in samples if x["length"] == r["length"]
                 and needle_cut_bucket(x["needle_position"], x["needle_end"], 16) == r["needle_cut"]]  # fmt: skip
        assert (r["exact"]["n"], r["exact"]["successes"]) == (len(group), sum(x["exact"] for x in group)) != (0, 0)
    assert sum(r["exact"]["n"] for r in cuts) == len(samples) and all(r["needle_cut"] != "whole" for r in cuts)
    assert "## Accuracy by where a segment boundary cuts the needle, seeds pooled: held-out text" in text
    assert (
        "## Accuracy by where a segment boundary cuts the needle: held-out text"
        in (out / "seed-0" / "REPORT.md").read_text()
    )
    # Accuracy by the needle's depth beyond the training length, pooled likewise.
    longest = summary["per_seed"]["0"]["arms"]["full"]["training_length"]
    depths = summary["depths_pooled"]["full"]["book"]
    for r in depths:
        group = [x for x in samples if x["length"] > longest and x["depth"] == r["depth"]]
        assert (r["exact"]["n"], r["exact"]["successes"]) == (len(group), sum(x["exact"] for x in group))
        assert r["exact"]["clusters"] == len({(x["seed"], x["sample"]) for x in group})
    assert sum(r["exact"]["n"] for r in depths) == sum(x["length"] > longest for x in samples) > 0
    assert "## Accuracy by depth beyond the training length, seeds pooled: held-out text" in text
    assert (
        "## Accuracy by depth beyond the training length: held-out text" in (out / "seed-0" / "REPORT.md").read_text()
    )
    # What the answers hold, pooled likewise: every seed's prompts counted once, their digits from scoring.
    from infini_llama.eval.scoring import answer_digits

    answers = summary["answers_pooled"]["full"]["book"]
    for r in answers:
        group = [answer_digits(x["prediction"], x["key"]) for x in samples if x["length"] == r["length"]]
        assert r["prompts"] == r["first"]["n"] == len(group)
        assert r["first"]["successes"] == sum(g["first"] for g in group)
        assert (r["from_key"]["successes"], r["from_key"]["n"]) == (
            sum(g["from_key"] for g in group), sum(g["digits"] for g in group)
        )  # fmt: skip
    assert "## What the answers hold, seeds pooled: held-out text" in text
    assert "## What the answers hold: held-out text" in (out / "seed-0" / "REPORT.md").read_text()
    # The keys missed up to the training length, per seed and row, from the same samples.
    seed0 = [json.loads(line) for line in (out / "seed-0" / "full" / "eval" / "passkey-book" / "samples.jsonl").open()]
    length = summary["per_seed"]["0"]["arms"]["full"]["training_length"]
    keys = summary["per_seed"]["0"]["arms"]["full"]["passkey"]["passkey"]["haystacks"]["book"]["keys_missed"]
    assert keys["keys"] == len({x["key"] for x in seed0 if x["length"] <= length})
    assert {m["key"]: m["wrong"] for m in keys["missed"]} == {
        k: n for k in {x["key"] for x in seed0}
        if (n := sum(not x["exact"] for x in seed0 if x["key"] == k and x["length"] <= length))
    }  # fmt: skip
    assert "## Keys missed up to the training length: held-out text" in (out / "seed-0" / "REPORT.md").read_text()
    assert run_study(cfg, out, device="cpu", progress=False, jobs=1) == report, "a finished study resumes instantly"
    with pytest.raises(StudyError, match="different config \\(differs in: seeds\\)"):  # a seed left out
        run_study(dataclasses.replace(cfg, seeds=(0,)), out, device="cpu", progress=False)
    with pytest.raises(StudyError, match="different config \\(differs in: eval_samples, seeds\\)"):
        run_study(dataclasses.replace(cfg, seeds=(0, 1, 2), eval_samples=2), out, device="cpu", progress=False)


def test_default_jobs(monkeypatch):
    monkeypatch.setattr(study_runner.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert study_runner.default_jobs(2, "cpu") == 2
    assert study_runner.default_jobs(5, "cpu") == 2  # one arm per core
    assert study_runner.default_jobs(1, "cpu") == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert study_runner.default_jobs(3, "cuda") == 1  # arms share one GPU only when asked (--jobs)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert study_runner.visible_gpus() == ["4", "5"]
    assert study_runner.default_jobs(3, "cuda") == 2  # one arm per GPU
    assert study_runner.default_jobs(3, "cuda:1") == 1  # a device named by index is one GPU


def test_workers_keep_one_gpu_each(monkeypatch):
    """Each pool worker is pinned to the next visible GPU, round robin, as its only visible one."""
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    seen = []
    for _ in range(5):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
        study_runner._pin_gpu(counter, ["4", "5"])
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["4", "5", "4", "5", "4"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    study_runner._pin_gpu(counter, ["7"])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"  # one GPU: left as it is


def test_arms_run_on_two_machines_are_reported_together_without_their_weights(micro, tmp_path, capsys, monkeypatch):
    # Two seeds, each machine running one arm of both; only small files come back (no weights, no checkpoints).
    cfg = micro(seeds=(0, 1), eval_haystacks=("repeat",))
    here, there, whole = tmp_path / "here", tmp_path / "there", tmp_path / "whole"
    with pytest.raises(StudyError, match="unknown arm.*'memory'.*this study's arms are infini, full"):
        run_study(cfg, here, device="cpu", progress=False, arms=["infini", "memory"])
    assert not here.exists(), "nothing is written for a refused --arms"
    monkeypatch.setattr(host, "busy_cores", lambda: 64.0)  # another run on the cores already
    assert run_study(cfg, here, device="cpu", progress=False, jobs=1, estimate=False, arms=["infini"]) is None
    out = capsys.readouterr().out
    assert "[study] warning: this host's CPUs are busy before the start (64.0 of" in out
    assert re.search(r"the report waits for: seed-0/full has (\d+) of \1 stages left .*; seed-1/full has", out), out
    assert (here / "seed-1" / "infini" / "layers-off.done").exists() and not (here / "seed-0" / "full").exists()
    assert not (here / "REPORT.md").exists()
    with pytest.raises(StudyError, match="cannot report .*seed-0/full has (\\d+) of \\1 stages left .*seed-1/full"):
        run_study(cfg, here, device="cpu", progress=False, report_only=True)
    with pytest.raises(StudyError, match="cannot report .*seed-0/full .*or leave them out of --arms"):
        run_study(cfg, here, device="cpu", progress=False, report_only=True, arms=["*"])
    # The arm finished so far, reported alone: its rows, no comparison with the arm left out, which is named.
    partial = run_study(cfg, here, device="cpu", progress=False, report_only=True, arms=["infini"])
    assert partial == here / "REPORT.md"
    for text in (partial.read_text(), (here / "seed-0" / "REPORT.md").read_text()):
        assert "**A report of some arms only:** it leaves out full (not run or not chosen)" in text
    seed_0 = json.loads((here / "seed-0" / "results.json").read_text())
    assert list(seed_0["arms"]) == ["infini"] and seed_0["left_out"] == ["full"]
    assert seed_0["comparisons"] == [] and seed_0["leads"] == []
    assert json.loads((here / "results.json").read_text())["left_out"] == ["full"]

    run_study(cfg, there, device="cpu", progress=False, jobs=1, estimate=False, arms=["full"])
    for seed in (0, 1):
        shutil.copytree(there / f"seed-{seed}" / "full", here / f"seed-{seed}" / "full")
    weights = [p for p in here.rglob("*") if p.suffix in (".safetensors", ".pt") or p.name == "checkpoints"]
    assert weights
    for path in weights:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    report = run_study(cfg, here, device="cpu", progress=False, report_only=True)
    assert report == here / "REPORT.md" and report.is_file()
    for seed in (0, 1):  # the fine-tuning curves come from the metrics brought back
        assert "## Fine-tuning loss" in (here / f"seed-{seed}" / "REPORT.md").read_text()
        assert (here / f"seed-{seed}" / "finetune_loss.png").is_file()

    # The same study run whole in one folder gives the same numbers.
    run_study(cfg, whole, device="cpu", progress=False, jobs=1, estimate=False)
    split, together = (json.loads((folder / "results.json").read_text()) for folder in (here, whole))
    assert split["rows"] == together["rows"] and split["per_seed"].keys() == together["per_seed"].keys()
    assert split["left_out"] == [] and "some arms only" not in report.read_text()
    assert split["per_seed"]["0"]["comparisons"] and split["per_seed"]["0"]["leads"]
    with pytest.raises(StudyError, match="holds no study"):
        run_study(cfg, tmp_path / "empty", device="cpu", progress=False, report_only=True)


def test_the_seeds_of_a_study_run_on_two_machines_are_reported_together(micro, tmp_path, capsys):
    # A seed's arms can take a GPU lease each: `seed-<s>/<arm>` patterns choose one seed's arms.
    cfg = micro(seeds=(0, 1), eval_haystacks=("repeat",), eval_rope_scaling=None, layer_off_multiple=None)
    here, there = tmp_path / "here", tmp_path / "there"
    with pytest.raises(StudyError, match=r"unknown arm\(s\) \['seed-2/\*'\].*seed-<s>/<arm> for one seed's"):
        run_study(cfg, here, device="cpu", progress=False, arms=["seed-2/*"])
    run_study(cfg, here, device="cpu", progress=False, jobs=1, estimate=False, arms=["seed-0/*"])
    assert (here / "seed-0" / "full" / "passkey-repeat.done").exists() and not (here / "seed-1" / "infini").exists()
    with pytest.raises(StudyError, match="reports the same arms of every seed.*--seeds <s> --out"):
        run_study(cfg, here, device="cpu", progress=False, report_only=True, arms=["seed-0/*"])
    # One seed's arms, reported alone as the study of that seed its folder holds.
    alone = run_study(dataclasses.replace(cfg, seeds=(0,)), here / "seed-0", device="cpu", progress=False,
                      report_only=True)  # fmt: skip
    assert alone == here / "seed-0" / "REPORT.md"
    run_study(cfg, there, device="cpu", progress=False, jobs=1, estimate=False, arms=["seed-1/infini", "seed-1/full"])
    shutil.copytree(there / "seed-1", here / "seed-1", dirs_exist_ok=True)
    report = run_study(cfg, here, device="cpu", progress=False, report_only=True)
    summary = json.loads((here / "results.json").read_text())
    assert report.is_file() and set(summary["per_seed"]) == {"0", "1"} and summary["left_out"] == []
    (env,) = summary["environments"]
    assert env["git_revision"] == json.loads(next((here / "seed-0").glob("*/eval/*/summary.json")).read_text())[
        "environment"]["git_revision"]  # fmt: skip
    assert "\nEnvironment: " in report.read_text() and "\nSeed 0: " not in report.read_text()
    # A seed run elsewhere (another GPU, another commit): the report names the machine and commit of each seed.
    for path in (here / "seed-1").glob("*/eval/*/summary.json"):
        record = json.loads(path.read_text())
        record["environment"] |= {"device_name": "Other GPU", "git_revision": "1234567890abcdef"}
        path.write_text(json.dumps(record))
    run_study(cfg, here, device="cpu", progress=False, report_only=True)
    text = report.read_text()
    assert "\nSeed 1: " in text and "; Other GPU; commit 1234567.\n" in text and "\nSeed 0: " in text
    assert "\nEnvironment: " not in text
    # A third seed, run later on a third machine, is added to the study and reported with the first two.
    third, wider = tmp_path / "third", dataclasses.replace(cfg, seeds=(0, 1, 2))
    run_study(wider, third, device="cpu", progress=False, jobs=1, estimate=False, arms=["seed-2/*"])
    shutil.copytree(third / "seed-2", here / "seed-2")
    with pytest.raises(StudyError, match="cannot report .*seed-0/infini"):
        run_study(wider, third, device="cpu", progress=False, report_only=True)
    assert run_study(wider, here, device="cpu", progress=False, report_only=True) == report
    assert "[study] adding seed(s) 2 to the study in" in capsys.readouterr().out
    assert json.loads((here / "study.json").read_text())["seeds"] == [0, 1, 2]
    assert set(json.loads((here / "results.json").read_text())["per_seed"]) == {"0", "1", "2"}
    assert "seeds 0, 1, 2" in report.read_text().splitlines()[0]
    with pytest.raises(StudyError, match="different config"):  # one seed's study has no seed folders to add to
        run_study(dataclasses.replace(cfg, seeds=(0, 1)), here / "seed-0", device="cpu", progress=False)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_worker_stops_when_the_study_process_is_gone(tmp_path):
    # The study's process starts a worker and dies (as under `kill`, which reaches it alone): the worker stops too,
    # by the SIGTERM that makes a training stage checkpoint and return, instead of training on for nobody.
    import subprocess
    import sys

    worker = (
        "import os, sys, time; from infini_llama.study.runner import _stop_with_parent; "
        "_stop_with_parent(int(sys.argv[2]), every_s=0.05); open(sys.argv[1], 'w').write(str(os.getpid())); "
        "time.sleep(60); open(sys.argv[1] + '.late', 'w')"
    )
    study = (  # starts the worker, waits until it watches, and ends
        f"import os, subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {worker!r}, sys.argv[1], "
        "str(os.getpid())])\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.05)"
    )
    pid_file = tmp_path / "worker.pid"
    subprocess.run([sys.executable, "-c", study, str(pid_file)], check=True, timeout=120)
    time.sleep(0.5)  # the pid written whole
    pid = int(pid_file.read_text())

    def alive() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError):
            return False

    deadline = time.time() + 30
    while alive():
        assert time.time() < deadline, "the worker outlived the study's process"
        time.sleep(0.05)
    assert not Path(f"{pid_file}.late").exists()


def test_arms_are_chosen_by_name_or_pattern():
    from types import SimpleNamespace

    names = [
        "infini-finetune.lr=0.0001",
        "infini-finetune.lr=0.0003",
        "full-finetune.lr=0.0001",
        "full-finetune.lr=0.0003",
    ]
    tasks = [(SimpleNamespace(seed=0), SimpleNamespace(name=name), Path("study")) for name in names]
    chosen = lambda arms: [t[1].name for t in study_runner._chosen_tasks(tasks, arms)]  # noqa: E731
    assert chosen(["infini*"]) == names[:2] and chosen(["full-finetune.lr=0.0003"]) == names[3:]
    assert chosen(["*lr=0.0001", "full*"]) == [names[0], names[2], names[3]] and chosen(None) == names
    with pytest.raises(StudyError, match=r"unknown arm\(s\) \['local\*'\]; this study's arms are infini-finetune"):
        chosen(["infini*", "local*"])
    with pytest.raises(StudyError, match=r"unknown arm\(s\) \['seed-0/\*'\]"):  # one seed: no seed folders
        chosen(["seed-0/*"])
    # Several seeds: an arm's name takes it in every seed, seed-<s>/<arm> in one.
    seeds = [(SimpleNamespace(seed=s), SimpleNamespace(name=n), Path(f"study/seed-{s}")) for s in (0, 1)
             for n in ("infini", "full")]  # fmt: skip
    where = lambda arms: [f"{t[2].name}/{t[1].name}" for t in study_runner._chosen_tasks(seeds, arms)]  # noqa: E731
    assert where(["seed-1/*"]) == ["seed-1/infini", "seed-1/full"]
    assert where(["infini", "seed-0/full"]) == ["seed-0/infini", "seed-0/full", "seed-1/infini"]


def test_folder_of_another_study_is_refused(micro, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"preset": "mini"}))
    with pytest.raises(StudyError, match="different config"):
        run_study(micro(), out, device="cpu", progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StudyError, match="holds no study"):
        run_study(micro(), tmp_path / "other", device="cpu", progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    with pytest.raises(StudyError, match="jobs must be at least 1"):
        run_study(micro(), tmp_path / "new", device="cpu", progress=False, jobs=0)


def test_a_stage_that_stops_part_way_is_one_line_and_exit_status_1(tmp_path, monkeypatch, capsys):
    from infini_llama.cli import main
    from infini_llama.train import RunError

    def stop(*args, **kwargs):
        raise RunError("5 non-finite steps in a row (steps 7-11); the last checkpoint, step_5, is intact")

    monkeypatch.setattr(study_runner, "run_study", stop)
    assert main(["study", "--preset", "tiny", "--out", str(tmp_path / "s"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "stopped: 5 non-finite steps" in err and "run the same command again" in err


def test_worker_output_carries_only_the_current_arms_prefix(monkeypatch):
    import io
    import sys

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    study_runner.prefix_stdout("[seed-0/infini] ")
    print("step 1")
    study_runner.prefix_stdout("[seed-1/full] ")  # the next arm in the same (reused) worker process
    print("step 2\n[study] full: pretrain ...")
    assert out.getvalue() == "[seed-0/infini] step 1\n[seed-1/full] step 2\n[study] full: pretrain ...\n"


def test_control_arm_and_frozen_gate_arms_run_and_are_reported(micro, tmp_path):
    cfg = micro(seeds=(0, 1), control_arm=True, eval_haystacks=("repeat",), eval_rope_scaling=None,
                sweeps={"gate_trainable": [True, False]})  # fmt: skip
    out = tmp_path / "study"
    report = run_study(cfg, out, device="cpu", progress=False, jobs=1)
    seed_out = out / "seed-0"
    local = seed_out / "local"
    for stage in ("pretrain", "select", "passkey-repeat", "perplexity"):
        assert (local / f"{stage}.done").exists(), stage
    assert not (local / "passkey-memory-off-repeat.done").exists() and not (local / "gates.done").exists()
    config = json.loads((local / "pretrain" / "final" / "config.json").read_text())
    assert config["attention"] == "local" and config["segment_len"] == 16

    results = json.loads((seed_out / "results.json").read_text())
    frozen = results["arms"]["infini-gate_trainable=False"]
    assert frozen["gate_trainable"] is False and results["arms"]["local"]["gate_trainable"] is None
    assert frozen["gates"]["gates"] == [[0.5, 0.5]], "g = sigmoid(0), never trained"
    assert frozen["gates"]["saturated"]["saturated"] == 0
    # One layer: closing its memory alone is the whole ablation, on the plain grid's samples at 2x.
    off = results["arms"]["infini-gate_trainable=True"]["layers_off"]
    whole = results["arms"]["infini-gate_trainable=True"]["passkey"]["passkey-memory-off"]["haystacks"]["repeat"]
    assert off["length"] == 256 and off["haystack"] == "repeat" and off["pearson"] is None
    assert off["layers"][0]["exact"] == whole["by_length"][1]["exact"]
    plain = results["arms"]["infini-gate_trainable=True"]["passkey"]["passkey"]["haystacks"]["repeat"]
    assert off["memory_on"] == plain["by_length"][1]["exact"]
    assert off["layers"][0]["drop"] == pytest.approx(
        100 * (plain["by_length"][1]["exact"]["rate"] - whole["by_length"][1]["exact"]["rate"])
    )
    assert (local / "gates.done").exists() is False and "layers_off" not in results["arms"]["local"]
    compared = {(d["infini"], d["baseline"]) for d in results["leads"]}
    assert compared == {(i, o) for i in ("infini-gate_trainable=True", "infini-gate_trainable=False")
                        for o in ("full", "local")}  # fmt: skip
    by_length = [c for c in results["comparisons"] if c["baseline"] == "local" and c["haystack"] == "repeat"]
    assert len(by_length) == 2 * 2, "each Infini arm against the local control at both lengths"
    assert all(c["verdict"] in ("ahead", "level", "behind") and c["ci_low"] <= c["difference"] <= c["ci_high"]
               for c in by_length)  # fmt: skip

    text = (seed_out / "REPORT.md").read_text()
    for needle in (
        "The local control is the Infini arm's segment-local attention",
        "| local | 0 |",  # the arm table
        "| infini-gate_trainable=False | local | classic filler |",  # the lead over the control
        "## Memory gates",
        "| infini-gate_trainable=False | sigmoid, frozen | 0.500 |",
        "(frozen) | 3 × 4 × 128, frozen |",  # no gate LR for a frozen gate
        "saturated heads (g < 0.01 or g > 0.99): 0/2",
        "## Memory switched off in one layer",
        "| infini-gate_trainable=False | 0 | 0.50 |",
    ):
        assert needle in text, needle
    across = report.read_text()
    assert "## Memory switched off in one layer, across seeds" in across and "r per seed" in across
    assert (
        "## Saturated gates per seed" in across
        and "| infini-gate_trainable=False | 0/2, g 0.50 | 0/2, g 0.50 |" in across
    )
    assert "| local | 0 |" in across and "| infini-gate_trainable=True | local | classic filler |" in across
    assert "## Gates per layer across seeds" in across
    for when in ("after pretraining", "after fine-tuning"):
        assert f"| infini-gate_trainable=False | {when} | 0.50 ± 0.00 | 0.50 ± 0.00 |" in across


def test_a_finished_training_stage_keeps_its_final_model_and_newest_checkpoint_alone(micro, tmp_path):
    """Each checkpoint of the 302M model is 3.6 GB: a finished stage keeps `final/` and its newest checkpoint, not
    the `keep` - 1 before it, so that a study of several arms and LRs fits a GPU machine's disk."""
    saving = dict(steps=3, save_every=1, keep=3)
    cfg = micro(pretrain={**micro().pretrain, **saving}, finetune={**micro().finetune, **saving})
    run_study(cfg, tmp_path / "study", device="cpu", progress=False, jobs=1, estimate=False, arms=["full"])
    runs = sorted((tmp_path / "study" / "full").glob("*/checkpoints"))
    assert [run.parent.name for run in runs] == ["finetune-lr=0.002", "pretrain"]
    for run in runs:
        assert [p.name for p in run.iterdir()] == ["step_0000003"], run
        assert (run.parent / "final").is_dir()


def test_a_fine_tuning_curve_averages_the_logged_losses_over_windows_of_equal_steps(tmp_path):
    logged = [{"kind": "train", "step": s, "loss": s / 100} for s in range(10, 101, 10)]
    logged.append({"kind": "train", "step": 40, "loss": 0.7})  # a resumed run logs step 40 again: the later counts
    logged += [{"kind": "val", "step": 0, "loss": 2.0},  # a run from before answer_token_losses: none
               {"kind": "val", "step": 100, "loss": 0.5, "answer_token_losses": [0.0, 1.0, None, 0.5],
                "boundary_loss": 1.25, "needle_boundary_loss": 0.75}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logged))
    curve = study_results.finetune_curve(tmp_path, steps=100, points=4)
    assert curve["window_steps"] == 25
    assert curve["train"] == [[25, 0.15], [50, 0.5], [75, 0.65], [100, 0.9]]
    assert curve["val"] == [[0, 2.0], [100, 0.5]]
    assert curve["val_by_token"] == [[100, [0.0, 1.0, None, 0.5]]]
    assert curve["val_boundary"] == [[100, 1.25]] and curve["val_needle_boundary"] == [[100, 0.75]]
    assert study_results.finetune_curve(tmp_path / "none", steps=100) is None


def test_the_answer_token_table_adds_the_losses_on_prompts_at_a_segment_boundary_where_logged(tmp_path):
    """A run that logged `boundary_loss` (and `needle_boundary_loss`) gets each as a last column (and a line of its
    panel); a run beside it that did not gets "–" there; with no such run the columns are left out."""
    from infini_llama.study import report as study_report

    entry = {"recipe": {"passkey_data": {"key_digits": 2}}}
    new = {"val_by_token": [[0, [0.5, 2.0, 2.1]], [100, [0.0, 0.4, 0.9]]], "val_boundary": [[0, 2.5], [100, 1.75]]}
    newer = {**new, "val_needle_boundary": [[100, 0.25]]}
    old = {"val_by_token": [[100, [0.0, 1.0, 1.1]]]}
    text = "\n".join(study_report._answer_tokens({"new": (new, entry), "old": (old, entry)}, tmp_path))
    answer, needle = (name for name, _ in study_report.ALIGNED_COLUMNS.values())
    assert f"| run | step | space | digit 1 | digit 2 | {answer} |" in text and needle not in text
    assert "| new | 100 | 0.00 | 0.40 | 0.90 | 1.75 |" in text and "| old | 100 | 0.00 | 1.00 | 1.10 | – |" in text
    assert (tmp_path / "answer_token_loss.png").is_file()
    text = "\n".join(study_report._answer_tokens({"newer": (newer, entry), "old": (old, entry)}, tmp_path))
    assert f"| digit 2 | {answer} | {needle} |" in text
    assert "| newer | 0 | 0.50 | 2.00 | 2.10 | 2.50 | – |" in text
    assert "| newer | 100 | 0.00 | 0.40 | 0.90 | 1.75 | 0.25 |" in text
    assert "| old | 100 | 0.00 | 1.00 | 1.10 | – | – |" in text
    text = "\n".join(study_report._answer_tokens({"old": (old, entry)}, tmp_path))
    assert answer not in text and "| run | step | space | digit 1 | digit 2 |" in text


def test_the_needle_cut_table_is_left_out_where_no_boundary_cuts_a_needle():
    from infini_llama.study import report as study_report

    cfg = study_config("tiny", eval_haystacks=("repeat",))
    whole = {"exact": {"successes": 3, "n": 4, "rate": 0.75, "ci_low": 0.3, "ci_high": 0.95, "clusters": 4}}
    cut = {**whole, "exact": {**whole["exact"], "successes": 0, "rate": 0.0}}
    grid = [{"length": 4096, "needle_cut": "whole", **whole}]
    assert study_report._needle_cuts(cfg, {"infini": {"repeat": grid}}, pooled=False) == []
    grid.append({"length": 4096, "needle_cut": "13-16", **cut})
    text = "\n".join(study_report._needle_cuts(cfg, {"infini": {"repeat": grid}}, pooled=False))
    assert "| row | needle | 4,096 |" in text
    assert "| infini | no boundary in it | 75%" in text and "| infini | cut after 13-16 of its tokens | 0%" in text


def test_a_runs_trend_is_fitted_over_its_second_half_and_projected(tmp_path):
    """A loss halving every 1,000 steps: the line through its log over the second half says so, and where it would
    reach each target, with the tokens and time at the run's rate; the report labels it a projection."""
    from infini_llama.study.report import _trends

    curve = {"train": [[end, 0.5 ** (end / 1000)] for end in range(100, 2001, 100)], "tokens_per_s": 1000.0}
    curve["train"][2][1] = 9.0  # a spike in the first half (and in the curriculum) is not fitted
    trend = study_results.loss_trend(curve, steps=2000, curriculum_steps=300, tokens_per_step=64)
    assert (trend["from_step"], trend["to_step"]) == (1100, 2000)
    assert trend["kept_per_1000_steps"] == pytest.approx(0.5) and trend["fitted_loss"] == pytest.approx(0.25)
    step = 2000 + 1000 * math.log(0.1 / 0.25) / math.log(0.5)
    [to_01, to_001] = trend["projections"]
    assert to_01 == {"loss": 0.1, "step": round(step), "tokens": round(step * 64), "seconds": round(step * 64 / 1000)}
    assert to_001["loss"] == 0.01 and to_001["step"] > to_01["step"]
    # A curriculum past the half: only the windows after it count.
    assert study_results.loss_trend(curve, steps=2000, curriculum_steps=1500)["from_step"] == 1600
    # Too few windows to fit: none.
    assert study_results.loss_trend(curve, steps=2000, curriculum_steps=1800) is None
    # A run on its plateau projects nothing; one already below a target has reached it.
    flat = study_results.loss_trend({"train": [[e, 1.8] for e in range(100, 1001, 100)]}, steps=1000)
    assert flat["projections"] == [] and flat["kept_per_1000_steps"] == pytest.approx(1.0)
    low = study_results.loss_trend({"train": [[e, 0.05 * 0.9 ** (e / 100)] for e in range(100, 1001, 100)]}, 1000)
    assert [p["loss"] for p in low["projections"]] == [0.01]
    text = "\n".join(_trends({"falling": ({**curve, "trend": trend}, {}), "flat": ({"trend": flat}, {}),
                              "low": ({"trend": low}, {})}))  # fmt: skip
    assert "**A projection, not a result**" in text
    assert f"| falling | 1,100–2,000 | × 0.50 | 0.250 | step {to_01['step']:,}, 0.21M tokens, 3 min 33 s |" in text
    assert "| flat | 600–1,000 | × 1.00 | 1.800 | not falling | not falling |" in text
    assert "| low |" in text and "| reached | step " in text


def test_missed_keys_are_counted_per_key_up_to_the_training_length(tmp_path):
    rows = [  # key 11211 wrong twice at 8 tokens, once more at 16 (not counted); 12345 wrong once; 55555 never
        {"length": 8, "key": "11211", "exact": False, "prediction": " 11121"},
        {"length": 8, "key": "11211", "exact": False, "prediction": " 11121"},
        {"length": 8, "key": "12345", "exact": False, "prediction": " 12354"},
        {"length": 8, "key": "12345", "exact": True, "prediction": " 12345"},
        {"length": 8, "key": "55555", "exact": True, "prediction": " 55555"},
        {"length": 16, "key": "11211", "exact": False, "prediction": ""},
    ]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert study_results.missed_keys(tmp_path, 8) == {
        "keys": 3,
        "missed": [
            {"key": "11211", "prompts": 2, "wrong": 2, "commonest_answer": "11121"},
            {"key": "12345", "prompts": 2, "wrong": 1, "commonest_answer": "12354"},
        ],
    }
    assert study_results.missed_keys(tmp_path, 16)["missed"][0] == {
        "key": "11211", "prompts": 3, "wrong": 3, "commonest_answer": "11121"
    }  # fmt: skip


def test_answers_by_length_count_what_each_answer_holds_of_its_key(tmp_path):
    rows = [  # sample 0 (key 7537) twice at 8 tokens, sample 1 (key 1234) once; one prompt of sample 0 at 16
        {"length": 8, "sample": 0, "key": "7537", "prediction": " 3757"},  # reordered: 4 of 4 digits from the key
        {"length": 8, "sample": 0, "key": "7537", "prediction": " 7777"},  # first right: 4 of 4
        {"length": 8, "sample": 1, "key": "1234", "prediction": " 19"},  # first right: 1 of 2
        {"length": 16, "sample": 0, "key": "7537", "prediction": ""},
    ]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    short, long = study_results.answers_by_length(tmp_path)
    assert short["length"] == 8 and short["prompts"] == 3
    assert short["first"]["key_totals"] == [[1, 2], [1, 1]] and short["first"]["rate"] == pytest.approx(2 / 3)
    assert short["reordered"]["key_totals"] == [[1, 2], [0, 1]] and short["reordered"]["clusters"] == 2
    assert short["from_key"]["key_totals"] == [[8, 8], [1, 2]] and short["from_key"]["rate"] == pytest.approx(0.9)
    assert short["chance_from_key"] == pytest.approx((0.3 + 0.3 + 0.4) / 3)
    assert (long["first"]["rate"], long["from_key"]["n"], long["prompts"]) == (0.0, 0, 1)


def test_the_answers_table_reads_each_length_and_marks_one_without_digits(tmp_path):
    from infini_llama.study.report import _answers

    rows = [  # at 8 tokens one answer holds the key reordered; at 16 no answer holds a number
        {"length": 8, "sample": 0, "key": "7537", "prediction": " 3757"},
        {"length": 16, "sample": 0, "key": "7537", "prediction": " none"},
    ]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    grid = study_results.answers_by_length(tmp_path)
    text = "\n".join(_answers(study_config("tiny", eval_haystacks=("repeat",)), {"infini": {"repeat": grid}}, False))
    assert "## What the answers hold: classic filler" in text and "| row | answers | 8 | 16 |" in text
    assert "| infini | the key's digits, reordered | 100% [" in text and "| infini | first digit right | 0% [" in text
    assert re.search(r"\| infini \| answer digits found in the key \(random: 30%\) \| 100% \[[^|]*\| – \|", text)


def test_the_lr_chosen_is_the_most_often_right_then_the_surest_then_the_first():
    def candidate(exact, digits, loss):
        return {"exact": {"rate": exact}, "digit_acc": {"mean": digits}, "val_loss": loss}

    assert study_stages.best_candidate([candidate(0.9, 0.95, 0.1), candidate(1.0, 1.0, 0.3)]) == 1
    assert study_stages.best_candidate([candidate(0.9, 0.95, 0.1), candidate(0.9, 0.97, 0.3)]) == 1
    # All right on every prompt: the lower fine-tuning validation loss decides, not the place in the grid.
    assert study_stages.best_candidate([candidate(1.0, 1.0, 0.02), candidate(1.0, 1.0, 0.001)]) == 1
    assert study_stages.best_candidate([candidate(1.0, 1.0, None), candidate(1.0, 1.0, 0.5)]) == 1
    assert study_stages.best_candidate([candidate(1.0, 1.0, 0.5), candidate(1.0, 1.0, 0.5)]) == 0


def test_the_best_rope_row_is_the_one_infini_leads_least_and_needs_two_rows():
    def compared(task, haystack, multiple, difference, other="full"):
        return {"infini": "infini", "other": other, "baseline": f"{other} ({task})", "task": task,
                "haystack": haystack, "multiple": multiple, "difference": difference}  # fmt: skip

    rows = [
        compared("passkey", "repeat", 2.0, 0.9),  # the plain baseline is no RoPE row
        compared("passkey-rope", "repeat", 2.0, 0.3),
        compared("passkey-rope2", "repeat", 2.0, -0.1),
        compared("passkey-rope", "repeat", 4.0, 0.2),
        compared("passkey-rope2", "repeat", 4.0, 0.2),  # a tie: the first row
        compared("passkey-rope", "repeat", 2.0, 0.5, other="full-b"),  # another baseline's only RoPE row
    ]
    best = study_results.best_rope(rows)
    assert [(b["multiple"], b["task"]) for b in best] == [(2.0, "passkey-rope2"), (4.0, "passkey-rope")]


def test_the_report_across_seeds_gives_each_seeds_interval_against_the_best_rope_row():
    from infini_llama.study.report import _best_rope_by_seed

    def best(multiple, difference, low, high, verdict, scaling="RoPE YaRN ×16"):
        return {"infini": "infini", "haystack": "repeat", "multiple": multiple, "scaling": scaling,
                "difference": difference, "ci_low": low, "ci_high": high, "verdict": verdict}  # fmt: skip

    summary = {
        "seeds": ["0", "1"],
        "per_seed": {
            "0": {"best_rope": [best(1.0, -0.11, -0.22, -0.02, "behind"), best(2.0, 0.0, 0.0, 0.0, "level")]},
            "1": {"best_rope": [best(1.0, -0.06, -0.16, 0.0, "level", "RoPE dynamic NTK")]},  # no 2x grid
        },
    }
    text = "\n".join(_best_rope_by_seed(study_config("tiny"), summary))
    assert "with its 95% interval by a bootstrap over keys" in text
    seeds = "| -11 [-22, -2] behind (RoPE YaRN ×16) | -6 [-16, +0] level (RoPE dynamic NTK) |"
    assert f"| infini | classic filler | 1× {seeds} 0 / 1 / 1 |" in text
    assert "| infini | classic filler | 2× | +0 [+0, +0] level (RoPE YaRN ×16) | – | 0 / 1 / 0 |" in text


def test_an_lr_chosen_at_the_grids_edge_is_marked():
    from infini_llama.study.report import _arm_table

    def entry(chosen, lrs):
        score = {"exact": {"rate": 0.5, "ci_low": 0.4, "ci_high": 0.6}, "digit_acc": {"mean": 0.9}}
        return {
            "attention": "full", "seed": 0,
            "recipe": {"pretrain": {"lr": 1e-3, "gate_lr": None},
                       "finetune": {"steps": 3, "sequences_per_step": 4, "seq_len": 128, "gate_lr": None}},
            "selection": {"chosen_lr": chosen, "candidates": [{"lr": lr, **score} for lr in lrs]},
        }  # fmt: skip

    grid = (2.5e-4, 5e-4, 1e-3)
    text = "\n".join(_arm_table(None, {"a": entry(1e-3, grid), "b": entry(2.5e-4, grid), "c": entry(5e-4, grid)}))
    assert "| 0.001 (largest tried) |" in text and "| 0.00025 (smallest tried) |" in text
    assert "| 0.0005 |" in text and "widen the grid" in text
    # Two LRs, or the middle of three: nothing to say.
    for entries in ({"a": entry(1e-3, (5e-4, 1e-3))}, {"c": entry(5e-4, grid)}):
        text = "\n".join(_arm_table(None, entries))
        assert "tried)" not in text and "widen" not in text


def test_an_lr_grids_fine_tunings_are_one_phase_of_independent_units(micro, tmp_path):
    cfg = micro(finetune_lr_grid=(1e-3, 3e-3))
    infini, full = study_runner.expand_arms(cfg)
    phases = study_runner.stage_phases(cfg, infini, tmp_path, "cpu")
    assert phases[0] == [["pretrain"]]
    assert phases[1] == [["finetune-lr=0.001"], ["finetune-lr=0.003"]]
    assert phases[2][0][0] == "select" and len(phases) == 3 and len(phases[2]) == 1
    # Without a grid: phases of one unit each, every stage in order, as the arm runs alone.
    names = [name for name, _ in study_stages.arm_stages(micro(), full, tmp_path / "full", "cpu", False)]
    phases = study_runner.stage_phases(micro(), full, tmp_path, "cpu")
    assert all(len(phase) == 1 for phase in phases) and [n for p in phases for n in p[0]] == names


def test_a_parallel_study_runs_an_lr_grids_fine_tunings_at_once_in_the_arms_order(micro, tmp_path, monkeypatch):
    cfg = micro(seeds=(0, 1), finetune_lr_grid=(1e-3, 3e-3))
    tasks = [(seed_cfg, arm, seed_out) for seed_cfg, seed_out in study_runner.seed_studies(cfg, tmp_path)
             for arm in study_runner.expand_arms(seed_cfg)]  # fmt: skip
    together = threading.Barrier(2, timeout=10)  # an arm's two fine-tunings must be running at the same time
    log = []

    def fake_run_arm(cfg, arm, out, device, progress, threads, stages):
        log.append(("start", out.name, arm.name, tuple(stages)))
        if stages[0].startswith("finetune-lr="):
            together.wait()
        time.sleep(0.01)
        log.append(("end", out.name, arm.name, tuple(stages)))

    monkeypatch.setattr(study_runner, "_run_arm", fake_run_arm)
    with ThreadPoolExecutor(2) as pool:
        study_runner._run_parallel(pool, tasks, 2, "cpu", 1)
    starts = [(seed, arm, stages[0]) for kind, seed, arm, stages in log if kind == "start"]
    assert len(starts) == 4 * 4  # 2 seeds × 2 arms × (pretrain, 2 fine-tunings, the rest)
    # The first seed's arms go first: pretraining both, then each arm's fine-tunings, two at a time.
    assert starts[:2] == [("seed-0", "infini", "pretrain"), ("seed-0", "full", "pretrain")]
    assert [s[2] for s in starts[2:4]] == ["finetune-lr=0.001", "finetune-lr=0.003"]
    assert starts[2][1] == starts[3][1]
    for seed in ("seed-0", "seed-1"):
        for arm in ("infini", "full"):
            order = [stage for s, a, stage in starts if (s, a) == (seed, arm)]
            assert order[0] == "pretrain" and order[-1] == "select", order
    assert max(i for i, s in enumerate(starts) if s[0] == "seed-0") < max(i for i, s in enumerate(starts))


def test_arms_that_differ_only_in_fine_tuning_share_one_pretraining(micro, tmp_path, monkeypatch):
    cfg = micro(sweeps={"finetune.lr": [1e-3, 3e-3]}, eval_haystacks=("repeat",), eval_rope_scaling=None)
    arms = study_runner.expand_arms(cfg)
    sources = {arm.name: getattr(pretraining_source(arms, arm), "name", None) for arm in arms}
    assert sources == {
        "infini-finetune.lr=0.001": None, "infini-finetune.lr=0.003": "infini-finetune.lr=0.001",
        "full-finetune.lr=0.001": None, "full-finetune.lr=0.003": "full-finetune.lr=0.001",
    }  # fmt: skip
    real_train = study_stages.train
    pretrained = []

    def counting_train(tcfg, **kwargs):
        if tcfg.out.endswith("/pretrain"):
            pretrained.append(tcfg.out.split("/")[-2])
        return real_train(tcfg, **kwargs)

    monkeypatch.setattr(study_stages, "train", counting_train)
    out = tmp_path / "study"
    run_study(cfg, out, device="cpu", progress=False, jobs=1)
    assert pretrained == ["infini-finetune.lr=0.001", "full-finetune.lr=0.001"], "one pretraining per attention"
    assert "(copied from infini-finetune.lr=0.001) |" in (out / "REPORT.md").read_text()
    for name, source in sources.items():
        done = json.loads((out / name / "pretrain.done").read_text())
        assert done.get("shared_from") == source
        if source is not None:
            weights = [(out / arm / "pretrain" / "final" / "model.safetensors").read_bytes() for arm in (name, source)]
            assert weights[0] == weights[1]
            assert done["val_loss"] == json.loads((out / source / "pretrain.done").read_text())["val_loss"]
    # Each fine-tuned from the shared model (its own copy) at its own LR.
    for name, lr in (("infini-finetune.lr=0.001", 1e-3), ("infini-finetune.lr=0.003", 3e-3)):
        run = json.loads((out / name / f"finetune-lr={lr:g}" / "run.json").read_text())["train"]
        assert run["lr"] == lr and run["init_from"] == str(out / name / "pretrain" / "final")


def test_an_arm_whose_source_of_pretraining_is_left_out_trains_and_is_estimated_on_its_own(micro, tmp_path):
    cfg = micro(sweeps={"finetune.lr": [1e-3, 3e-3]}, eval_haystacks=("repeat",), eval_rope_scaling=None)
    tasks = [(cfg, arm, tmp_path) for arm in study_runner.expand_arms(cfg)]
    names = [arm.name for _, arm, _ in tasks]
    assert pretraining_copies(tasks) == {1: 0, 3: 2}
    chosen = study_runner._chosen_tasks(tasks, ["*lr=0.003"])
    assert [arm.name for _, arm, _ in chosen] == [names[1], names[3]] and pretraining_copies(chosen) == {}
    estimates, _ = estimate_study(tasks, jobs=1, device="cpu", threads=1)
    alone, _ = estimate_study(chosen, jobs=1, device="cpu", threads=1)
    pretraining = lambda task: next(s.seconds for s in task.stages if s.name == "pretrain")  # noqa: E731
    assert [pretraining(task) > 0 for task in estimates] == [True, False, True, False]
    assert all(pretraining(task) > 0 for task in alone)


def test_a_parallel_study_starts_an_arm_that_copies_a_pretraining_once_it_is_done(micro, tmp_path, monkeypatch):
    cfg = micro(sweeps={"finetune.lr": [1e-3, 3e-3]}, eval_haystacks=("repeat",), eval_rope_scaling=None)
    tasks = [(cfg, arm, tmp_path) for arm in study_runner.expand_arms(cfg)]
    log = []

    def fake_run_arm(cfg, arm, out, device, progress, threads, stages):
        log.append(("start", arm.name, stages[0]))
        time.sleep(0.05)
        log.append(("end", arm.name, stages[0]))

    monkeypatch.setattr(study_runner, "_run_arm", fake_run_arm)
    with ThreadPoolExecutor(4) as pool:
        study_runner._run_parallel(pool, tasks, 4, "cpu", 1)
    for sharer, source in (("infini-finetune.lr=0.003", "infini-finetune.lr=0.001"),
                           ("full-finetune.lr=0.003", "full-finetune.lr=0.001")):  # fmt: skip
        assert log.index(("start", sharer, "pretrain")) > log.index(("end", source, "pretrain"))
    # The two sources pretrain at once; every arm's stages all ran.
    assert log[:2] == [
        ("start", "infini-finetune.lr=0.001", "pretrain"),
        ("start", "full-finetune.lr=0.001", "pretrain"),
    ]
    assert sum(kind == "start" for kind, _, _ in log) == 4 * 2


def test_a_screens_finished_arms_carry_over_into_a_wider_grid_and_are_reported_with_its_new_arms(micro, tmp_path):
    # A screen run over leases: one LR first (the Infini arm only), then the grid widened; the finished arm's folder
    # is copied into the wider study, which runs only its new arms and reports the arms finished so far.
    narrow = micro(sweeps={"finetune.lr": [1e-3]}, eval_haystacks=("repeat",), eval_rope_scaling=None)
    wide = dataclasses.replace(narrow, sweeps={"finetune.lr": [1e-3, 3e-3]})
    first, second = tmp_path / "first", tmp_path / "second"
    run_study(narrow, first, device="cpu", progress=False, jobs=1, estimate=False, arms=["infini*"])
    (second / "notes").mkdir(parents=True)
    with pytest.raises(StudyError, match="not empty and holds no study .*notes"):
        run_study(wide, second, device="cpu", progress=False, jobs=1, estimate=False, arms=["*lr=0.003"])
    (second / "notes").rmdir()
    # A folder holding only this study's arm folders is claimed by it.
    shutil.copytree(first / "infini-finetune.lr=0.001", second / "infini-finetune.lr=0.001")
    run_study(wide, second, device="cpu", progress=False, jobs=1, estimate=False, arms=["*lr=0.003"])
    assert not (second / "full-finetune.lr=0.001").exists(), "the arms named only"
    report = run_study(wide, second, device="cpu", progress=False, report_only=True, arms=["infini*", "*lr=0.003"])
    assert "it leaves out full-finetune.lr=0.001 (not run or not chosen)" in report.read_text()
    carried = json.loads((first / "infini-finetune.lr=0.001" / "eval" / "passkey-repeat" / "summary.json").read_text())
    results = json.loads((second / "results.json").read_text())
    assert list(results["arms"]) == ["infini-finetune.lr=0.001", "infini-finetune.lr=0.003", "full-finetune.lr=0.003"]
    rows = results["arms"]["infini-finetune.lr=0.001"]["passkey"]["passkey"]["haystacks"]["repeat"]["by_length"]
    assert [r["exact"]["successes"] for r in rows] == [r["exact"]["successes"] for r in carried["results"]["by_length"]]
    # The new Infini arm is compared with its baseline; the carried one, whose baseline is left out, with nothing.
    assert {(c["infini"], c["other"]) for c in results["comparisons"]} == {
        ("infini-finetune.lr=0.003", "full-finetune.lr=0.003")
    }


def test_bf16_evaluation_keeps_the_memory_in_float32_and_stays_close_to_float32(micro):
    from infini_llama.eval import ChunkedLM
    from infini_llama.models import InfiniLlamaForCausalLM, config_from_preset

    cfg = micro(eval_precision="bf16")
    torch.manual_seed(0)
    model = InfiniLlamaForCausalLM(config_from_preset(cfg.model_preset, **cfg.model, attention="infini")).eval()
    ids = torch.randint(model.config.vocab_size, (2, 80))  # five segments: the memory is written and read
    runner = ChunkedLM(model, chunk_len=32)
    exact, exact_state = runner.prefill(ids)
    with study_stages.evaluation_numerics(cfg.eval_precision, "cpu"):
        assert torch.is_autocast_enabled("cpu")
        fast, fast_state = runner.prefill(ids)
    assert not torch.is_autocast_enabled("cpu"), "the autocast ends with the block"
    assert exact.dtype == torch.float32 and fast.dtype == torch.bfloat16
    memory = [tensor for layer in fast_state for tensor in layer[0]]  # each layer's (memory, normalizer)
    assert len(memory) == 2 and all(t.dtype == torch.float32 for t in memory), [t.dtype for t in memory]
    for fast_part, exact_part in zip(memory, exact_state[0][0], strict=True):  # the memory as float32 reads it
        assert (fast_part - exact_part).norm() / exact_part.norm() < 0.02
    error = (fast.float() - exact).abs().max() / exact.abs().max()
    assert error < 0.05, error  # bf16 keeps about 3 significant digits
    with study_stages.evaluation_numerics(micro().eval_precision, "cpu"):  # fp32, the default: nothing changes
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="eval_precision must be one of"):
        micro(eval_precision="fp16")


def test_tf32_evaluation_is_float32_with_tf32_matmuls_on_a_gpu_alone(micro):
    """eval_precision=tf32: no autocast; on a GPU its float32 matmuls may use TF32 inside the block only, on a CPU
    it is float32 as it is."""
    assert micro(eval_precision="tf32").eval_precision == "tf32"
    before = torch.backends.cuda.matmul.allow_tf32
    with study_stages.evaluation_numerics("tf32", "cuda"):  # the flag alone: no GPU is needed to set it
        assert torch.backends.cuda.matmul.allow_tf32 and not torch.is_autocast_enabled("cuda")
    assert torch.backends.cuda.matmul.allow_tf32 == before, "PyTorch's setting is restored after the block"
    with study_stages.evaluation_numerics("tf32", "cpu"):
        assert torch.backends.cuda.matmul.allow_tf32 == before and not torch.is_autocast_enabled("cpu")


def test_a_study_evaluated_in_bf16_runs_every_evaluation_under_it_and_says_so(micro, tmp_path, monkeypatch):
    seen = []
    for name in ("run_passkey_grid", "evaluate_passkey", "perplexity_by_position"):
        real = getattr(study_stages, name)

        def recording(*args, _real=real, _name=name, **kwargs):
            seen.append((_name, torch.is_autocast_enabled("cpu")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(study_stages, name, recording)
    cfg = micro(eval_precision="bf16", eval_haystacks=("repeat",), eval_rope_scaling=None, layer_off_multiple=None,
                eval_batch_tokens=1024)  # fmt: skip
    report = run_study(cfg, tmp_path / "study", device="cpu", progress=False, jobs=1, estimate=False)
    assert {name for name, _ in seen} == {"run_passkey_grid", "evaluate_passkey", "perplexity_by_position"}
    assert all(autocast for _, autocast in seen), seen
    assert "Evaluated with eval_precision=bf16" in report.read_text()
    # The token budget reaches every evaluation.
    for grid in ("passkey-repeat", "perplexity"):
        summary = json.loads((tmp_path / "study" / "infini" / "eval" / grid / "summary.json").read_text())
        assert summary["settings"]["batch_tokens"] == 1024, grid


def test_the_report_says_when_the_fine_tuning_lr_is_held_before_its_decay():
    from infini_llama.study.arms import expand_arms
    from infini_llama.study.report import describe_study
    from infini_llama.study.results import recipe_summary
    from infini_llama.study.stages import train_recipe

    cfg = study_config("tiny", finetune={"steps": 2000, "warmup_steps": 100, "lr": 1e-3, "min_lr": 1e-4,
                                         "decay_steps": 500})  # fmt: skip
    assert "LR 0.001, held, then a cosine to 0.1 of it over the last 500 steps;" in describe_study(cfg)
    assert "held, then" not in describe_study(study_config("tiny"))
    arm = expand_arms(cfg)[0]
    assert recipe_summary(train_recipe(cfg, arm, "finetune"))["decay_steps"] == 500


def test_an_arm_has_learned_the_task_where_it_answers_at_its_fine_tuning_length():
    from infini_llama.study import report as study_report

    def grid(rates):
        return {"by_length": [
            {"length": n, "exact": {"rate": r, "ci_low": r / 2, "ci_high": 1.0, "key_totals": [[1, 1]]}}
            for n, r in rates
        ]}  # fmt: skip

    def arm(seq_len, haystacks):
        return {"recipe": {"finetune": {"seq_len": seq_len}}, "passkey": {
            "passkey": {"haystacks": haystacks},
            "passkey-memory-off": {"haystacks": {"repeat": grid([(2048, 0.0), (4096, 0.0)])}},
        }}  # fmt: skip

    seed_1 = study_results.learned({
        "infini": arm(4096, {"repeat": grid([(2048, 1.0), (4096, 0.88), (8192, 0.9)]),
                             "book": grid([(2048, 1.0), (4096, 0.98), (8192, 0.95)])}),
        "full": arm(3000, {"repeat": grid([(1024, 0.5), (2048, 0.95), (4096, 0.08)])}),
    })  # fmt: skip
    infini, full = seed_1["infini"], seed_1["full"]["repeat"]
    assert (infini["repeat"]["length"], infini["repeat"]["rate"], infini["repeat"]["learned"]) == (4096, 0.88, False)
    assert infini["book"]["learned"] and "key_totals" not in infini["book"], "the rate and its interval only"
    assert (full["length"], full["learned"]) == (2048, True), "the longest grid length within the fine-tuning length"
    seed_0 = {
        name: {h: {**at, "rate": 1.0, "learned": True} for h, at in found.items()} for name, found in seed_1.items()
    }
    text = "\n".join(study_report._learned_table({0: seed_0, 1: seed_1}, [0, 1]))
    assert "| arm | haystack | seed 0 | seed 1 |" in text
    assert "| infini | classic filler | 100% [44–100] at 4,096 | 88% [44–100] at 4,096, **not learned** |" in text
    assert "| full | classic filler | 100% [48–100] at 2,048 | 95% [48–100] at 2,048 |" in text
    assert "Not learned (seed 1: infini). Beyond the fine-tuning length" in text
    assert "Every arm learned the task." in study_report._learned_table({0: seed_0}, [0])
    assert study_report._learned_table({0: {}}, [0]) == []
