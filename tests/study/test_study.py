"""The study pipeline end to end on a micro config, its resume, and its refusals."""

import json

import pytest

from infini_llama.study import StudyError, expand_arms, run_study, study_config
from infini_llama.study import runner as study_runner
from infini_llama.study.cli import parse_sets
from infini_llama.study.config import parse_sweep

TEXT = "\n".join(f"Sentence number {i} tells of the sea, the ship and the whale." for i in range(1500))


@pytest.fixture(scope="module")
def micro_config(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("data") / "corpus.txt"
    corpus.write_text(TEXT)
    model = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=2, segment_len=16)  # fmt: skip
    steps = dict(steps=3, eval_every=0, save_every=0, eval_windows=2, batch_size=4, log_every=1)
    return study_config(
        "tiny", model=model, pretrain=dict(data=[str(corpus)], seq_len=128, **steps),
        finetune=dict(seq_len=128, **steps), eval_multiples=(1, 2), eval_samples=1, eval_batch_size=2,
        perplexity_windows=1, perplexity_bucket=32,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def shared_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("INFINI_LLAMA_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_study_runs_end_to_end_and_resumes(micro_config, tmp_path, monkeypatch):
    out = tmp_path / "study"
    # Kill the study in the baseline's fine-tuning: everything before it must survive and not be redone.
    real_train = study_runner.train
    calls = []

    def dying_train(cfg, **kwargs):
        calls.append(cfg.out)
        if cfg.out.endswith("full/finetune"):
            raise KeyboardInterrupt
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(study_runner, "train", dying_train)
    with pytest.raises(KeyboardInterrupt):
        run_study(micro_config, out, device="cpu", progress=False, jobs=1)
    assert (out / "infini" / "gates.done").exists() and (out / "full" / "pretrain.done").exists()
    assert not (out / "full" / "finetune.done").exists()

    monkeypatch.setattr(study_runner, "train", real_train)
    calls.clear()
    monkeypatch.setattr(study_runner, "train", lambda cfg, **kw: (calls.append(cfg.out), real_train(cfg, **kw))[1])
    report = run_study(micro_config, out, device="cpu", progress=False, jobs=1)
    assert [c.split("/")[-2:] for c in calls] == [["full", "finetune"]]  # only the unfinished stage ran again

    for arm, stages in (
        ("infini", ["pretrain", "finetune", "passkey", "passkey-memory-off", "perplexity", "gates"]),
        ("full", ["pretrain", "finetune", "passkey", "perplexity"]),
    ):
        for stage in stages:
            assert (out / arm / f"{stage}.done").exists(), (arm, stage)
        assert (out / arm / "finetune" / "final" / "config.json").exists()
    text = report.read_text()
    assert "| infini |" in text and "| full |" in text and "| infini (memory off) |" in text
    assert list((out / "report").glob("passkey_heatmap_*.png"))
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"infini", "full"}
    assert [r["length"] for r in results["arms"]["full"]["passkey"]["by_length"]] == [128, 256]


def test_arms_run_in_parallel_processes(micro_config, tmp_path):
    """--jobs 2: each arm in its own process; the same stages finish and the report names every arm."""
    out = tmp_path / "study"
    command = "infini-llama study --preset tiny --out study --jobs 2"
    report = run_study(micro_config, out, device="cpu", progress=False, jobs=2, command=command)
    assert f"Command: `{command}`" in report.read_text()
    assert (out / "infini" / "gates.done").exists() and (out / "full" / "perplexity.done").exists()
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"infini", "full"}
    assert all(results["arms"][arm]["finetune"]["steps"] == 3 for arm in ("infini", "full"))
    assert "| infini |" in report.read_text() and "| full |" in report.read_text()
    with pytest.raises(StudyError, match="jobs must be at least 1"):
        run_study(micro_config, out, device="cpu", progress=False, jobs=0)


def test_default_jobs(monkeypatch):
    monkeypatch.setattr(study_runner.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert study_runner.default_jobs(2, "cpu") == 2
    assert study_runner.default_jobs(5, "cpu") == 2  # one arm per core
    assert study_runner.default_jobs(1, "cpu") == 1
    assert study_runner.default_jobs(3, "cuda") == 1  # arms share one GPU only when asked (--jobs)


def test_folder_of_another_study_is_refused(micro_config, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"preset": "mini"}))
    with pytest.raises(StudyError, match="different config"):
        run_study(micro_config, out, device="cpu", progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StudyError, match="holds no study"):
        run_study(micro_config, tmp_path / "other", device="cpu", progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_sweeps_expand_into_arms():
    cfg = study_config(
        "tiny", sweeps=dict([parse_sweep("gate_activation=sigmoid,hard_sigmoid"), parse_sweep("lr=1e-3")])
    )
    names = [a.name for a in expand_arms(cfg)]
    assert names == [
        "infini-gate_activation=sigmoid-lr=0.001",
        "infini-gate_activation=hard_sigmoid-lr=0.001",
        "full-lr=0.001",
    ]
    arm = expand_arms(cfg)[0]
    assert arm.model == {"gate_activation": "sigmoid"} and arm.train == {"lr": 0.001}
    gate_lr = expand_arms(study_config("tiny", sweeps=dict([parse_sweep("gate_lr=0.01,none")])))
    assert [a.train for a in gate_lr] == [{"gate_lr": 0.01}, {"gate_lr": None}, {}]


def test_bad_study_arguments():
    with pytest.raises(ValueError, match="unknown preset"):
        study_config("huge")
    with pytest.raises(ValueError, match="unknown sweep key"):
        study_config("tiny", sweeps={"segment_length": [1]})
    with pytest.raises(ValueError, match="KEY=V1,V2"):
        parse_sweep("segment_len")
    assert parse_sets(["pretrain.steps=10", "eval_multiples=1,2"]) == {
        "pretrain": {"steps": 10},
        "eval_multiples": [1, 2],
    }
