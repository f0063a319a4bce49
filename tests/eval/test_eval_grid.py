"""The passkey and multi-needle grids: rows, summaries, batching, and resuming a killed run."""

import dataclasses
import json
import os

import pytest
import torch

import infini_llama.eval.passkey_grid as passkey_grid
from infini_llama.eval import (
    MultiNeedleConfig,
    PasskeyGridConfig,
    PerplexityConfig,
    perplexity_by_position,
    run_multineedle_grid,
    run_passkey_grid,
)
from infini_llama.eval.records import read_rows

ROW_FIELDS = {
    "cell", "length", "depth", "sample", "seed", "key", "prompt_tokens", "needle_position", "memory_updates",
    "key_last_token", "haystack",
    "prediction", "exact", "token_exact", "digit_acc", "contains", "answer_logprob", "roundtrip",
}  # fmt: skip


def grid(**overrides) -> PasskeyGridConfig:
    return PasskeyGridConfig(
        **{"lengths": (160, 224), "depths": (0.0, 0.5, 1.0), "samples": 3, "batch_size": 2, "progress": False,
           **overrides}
    )  # fmt: skip


def comparable(rows):
    return [{k: v for k, v in r.items() if k != "answer_logprob"} for r in rows]


def test_passkey_grid_rows_and_summary(bpe_tok, micro_model, tmp_path):
    model = micro_model(len(bpe_tok))
    summary = run_passkey_grid(model, bpe_tok, grid(), tmp_path)
    rows = read_rows(tmp_path / "samples.jsonl")
    assert len(rows) == 2 * 3 * 3 and ROW_FIELDS <= set(rows[0])
    assert all(r["prompt_tokens"] == r["length"] for r in rows)
    for r in rows:
        # Counted from the last token of the key's last copy, not from the needle's first token.
        assert r["needle_position"] < r["key_last_token"] < r["needle_end"] and r["haystack"] == "repeat"
        assert bpe_tok.decode(r["answer_ids"]).strip() == r["key"]
        assert r["memory_updates"] == (r["length"] - 1) // 16 - r["key_last_token"] // 16
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary, default=str))
    assert saved["status"] == "complete"
    assert saved["model"]["fingerprint"] and saved["tokenizer"]["fingerprint"]
    assert saved["environment"]["versions"]["torch"] == torch.__version__
    assert saved["environment"]["device_name"].endswith(f"{len(os.sched_getaffinity(0))} cores")  # CPU and cores
    assert saved["settings"]["seed"] == 0 and saved["settings"]["segment_len"] == 16
    cells = saved["results"]["cells"]
    assert [(c["length"], c["depth"]) for c in cells] == [(n, d) for n in (160, 224) for d in (0.0, 0.5, 1.0)]
    assert all(c["exact"]["n"] == 3 for c in cells)
    exact = sum(r["exact"] for r in rows)
    assert saved["results"]["overall"]["exact"]["successes"] == exact
    assert sum(b["n"] for b in saved["results"]["by_memory_updates"]) == len(rows)
    assert sum(g["n"] for g in saved["results"]["by_length_and_memory_updates"]) == len(rows)


def test_accuracy_by_memory_updates_is_also_given_within_each_length():
    """Pooled over lengths, a bucket of memory updates mixes short prompts with long ones; within a length, not."""

    def row(length, updates, exact):
        return {"length": length, "depth": 1.0, "memory_updates": updates, "exact": exact, "token_exact": exact,
                "contains": exact, "digit_acc": float(exact)}  # fmt: skip

    rows = [row(128, 1, True)] * 4 + [row(1024, 1, True), row(1024, 1, False)] + [row(1024, 40, False)] * 3
    rows = [{**r, "sample": i} for i, r in enumerate(rows)]  # each its own key
    summary = passkey_grid.summarize_passkey(rows, (128, 1024), (1.0,))
    assert [(b["memory_updates"], b["exact"]["successes"], b["n"]) for b in summary["by_memory_updates"]] == [
        ("1", 5, 6), ("33-64", 0, 3),
    ]  # fmt: skip
    both = [(g["length"], g["memory_updates"], g["exact"]["successes"], g["n"])
            for g in summary["by_length_and_memory_updates"]]  # fmt: skip
    assert both == [(128, "1", 4, 4), (1024, "1", 1, 2), (1024, "33-64", 0, 3)]
    # A model without a memory has no update count: nothing to separate.
    full = passkey_grid.summarize_passkey([{**r, "memory_updates": None} for r in rows], (128, 1024), (1.0,))
    assert full["by_length_and_memory_updates"] == [] and full["by_memory_updates"][0]["memory_updates"] == "n/a"


def test_the_validation_split_is_another_grid_of_the_same_design(bpe_tok, micro_model, tmp_path):
    model = micro_model(len(bpe_tok))
    test = run_passkey_grid(model, bpe_tok, grid(), tmp_path / "test")
    validation = run_passkey_grid(model, bpe_tok, grid(split="validation"), tmp_path / "validation")
    assert validation["settings"]["split"] == "validation" and test["settings"]["split"] == "test"
    test_rows, validation_rows = (
        read_rows(tmp_path / "test/samples.jsonl"),
        read_rows(tmp_path / "validation/samples.jsonl"),
    )
    assert [(r["length"], r["depth"]) for r in test_rows] == [(r["length"], r["depth"]) for r in validation_rows]
    assert not {r["key"] for r in test_rows} & {r["key"] for r in validation_rows}
    with pytest.raises(ValueError, match="split must be one of"):
        grid(split="train")


def test_batching_does_not_change_results(bpe_tok, micro_model, tmp_path):
    model = micro_model(len(bpe_tok), dtype=torch.float64)
    run_passkey_grid(model, bpe_tok, grid(batch_size=1, chunk_len=16), tmp_path / "one")
    run_passkey_grid(model, bpe_tok, grid(batch_size=3, chunk_len=50), tmp_path / "three")
    # A token budget: three prompts to a batch at 160 tokens, two at 224.
    run_passkey_grid(model, bpe_tok, grid(batch_tokens=3 * 160), tmp_path / "budget")
    one = read_rows(tmp_path / "one/samples.jsonl")
    for other in ("three", "budget"):
        rows = read_rows(tmp_path / other / "samples.jsonl")
        assert comparable(one) == comparable(rows)
        for a, b in zip(one, rows, strict=True):
            assert a["answer_logprob"] == pytest.approx(b["answer_logprob"], rel=1e-9)
    with pytest.raises(ValueError, match="batch_tokens"):
        grid(batch_tokens=0)


def test_a_killed_grid_resumes_without_recomputing_finished_cells(bpe_tok, micro_model, tmp_path, monkeypatch):
    model = micro_model(len(bpe_tok))
    straight = run_passkey_grid(model, bpe_tok, grid(), tmp_path / "straight")

    real = passkey_grid.evaluate_passkey
    calls = []

    def killed_after_two_cells(runner, tokenizer, samples, *args):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies in the middle of the third cell
        calls.append((samples[0].length, samples[0].depth))
        return real(runner, tokenizer, samples, *args)

    monkeypatch.setattr(passkey_grid, "evaluate_passkey", killed_after_two_cells)
    with pytest.raises(KeyboardInterrupt):
        run_passkey_grid(model, bpe_tok, grid(), tmp_path / "resumed")
    assert len(read_rows(tmp_path / "resumed/samples.jsonl")) == 2 * 3
    assert json.loads((tmp_path / "resumed/summary.json").read_text())["status"] == "running"
    with open(tmp_path / "resumed/samples.jsonl", "a") as f:
        f.write('{"cell": "L224|d0.5", "length": 22')  # a row cut short by the kill

    def counting(runner, tokenizer, samples, *args):
        calls.append((samples[0].length, samples[0].depth))
        return real(runner, tokenizer, samples, *args)

    calls.clear()
    monkeypatch.setattr(passkey_grid, "evaluate_passkey", counting)
    resumed = run_passkey_grid(model, bpe_tok, grid(batch_size=3), tmp_path / "resumed")  # speed settings may change
    assert calls == [(160, 1.0), (224, 0.0), (224, 0.5), (224, 1.0)], "finished cells are not recomputed"
    assert comparable(read_rows(tmp_path / "resumed/samples.jsonl")) == comparable(
        read_rows(tmp_path / "straight/samples.jsonl")
    )
    assert resumed["results"]["cells"] == straight["results"]["cells"]


def test_a_run_folder_refuses_other_settings_or_models(bpe_tok, micro_model, tmp_path):
    model = micro_model(len(bpe_tok))
    run_passkey_grid(model, bpe_tok, grid(), tmp_path)
    with pytest.raises(ValueError, match="other settings"):
        run_passkey_grid(model, bpe_tok, grid(samples=4), tmp_path)
    with pytest.raises(ValueError, match="other settings"):
        run_passkey_grid(micro_model(len(bpe_tok), seed=1), bpe_tok, grid(), tmp_path)


def test_bad_grids_are_refused_before_any_work(bpe_tok, micro_model, tmp_path):
    model = micro_model(len(bpe_tok))
    with pytest.raises(ValueError, match="shorter than the prompt template"):
        run_passkey_grid(model, bpe_tok, grid(lengths=(500, 50)), tmp_path / "short")
    assert not (tmp_path / "short").exists()
    with pytest.raises(ValueError, match="depths must be fractions"):
        grid(depths=(0.0, 2.0))
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        run_passkey_grid(micro_model(100), bpe_tok, grid(), tmp_path / "mismatch")
    with pytest.raises(ValueError, match="unknown task"):
        MultiNeedleConfig(tasks=("multikey", "needle-in-a-sock"))


def test_memory_off_grid_differs_and_is_labelled(bpe_tok, micro_model, tmp_path):
    model = micro_model(len(bpe_tok), gate_init=2.0)
    on = run_passkey_grid(model, bpe_tok, grid(), tmp_path / "on", label="infini")
    off = run_passkey_grid(model, bpe_tok, grid(memory_off=True), tmp_path / "off")
    assert off["settings"]["memory_off"] and "memory off" in off["label"]
    on_rows, off_rows = read_rows(tmp_path / "on/samples.jsonl"), read_rows(tmp_path / "off/samples.jsonl")
    assert [r["answer_logprob"] for r in on_rows] != [r["answer_logprob"] for r in off_rows]
    assert bool((model.gate_values() > 0.5).all()), "the gates are restored after the ablation"
    assert on["label"] == "infini"


def test_grids_of_the_same_prompts_build_them_once(bpe_tok, micro_model, tmp_path, monkeypatch):
    """A grid run right after another of the same prompts (memory off, a RoPE row) takes its prompts from it: the
    same prompts, built once; another haystack, seed or split builds its own, and one grid's are kept at most."""
    model = micro_model(len(bpe_tok), gate_init=2.0)
    built = []
    make = passkey_grid.make_passkey_sample
    monkeypatch.setattr(passkey_grid, "make_passkey_sample", lambda *a, **kw: built.append(a[1:3]) or make(*a, **kw))
    monkeypatch.setattr(passkey_grid, "_last_prompts", ((), {}))
    run_passkey_grid(model, bpe_tok, grid(), tmp_path / "on")
    assert len(built) == 2 * 3 * 3, "every prompt once (the length check's prompts among them)"
    run_passkey_grid(model, bpe_tok, grid(memory_off=True), tmp_path / "off")
    run_passkey_grid(model, bpe_tok, grid(lengths=(160,)), tmp_path / "shorter")
    assert len(built) == 18, "the same prompts again: none built"
    on, off = read_rows(tmp_path / "on/samples.jsonl"), read_rows(tmp_path / "off/samples.jsonl")
    assert [r["prompt_sha256"] for r in on] == [r["prompt_sha256"] for r in off]
    for other in (dict(haystack="styles"), dict(seed=1), dict(split="validation")):
        run_passkey_grid(model, bpe_tok, grid(**other), tmp_path / str(other))
    assert len(built) == 18 * 4 and len(passkey_grid._last_prompts[1]) == 18


def test_memory_off_in_one_layer_is_its_own_labelled_resumable_grid(bpe_tok, micro_model, tmp_path):
    model = micro_model(len(bpe_tok), gate_init=2.0)
    run_passkey_grid(model, bpe_tok, grid(memory_off=True), tmp_path / "every")
    one = run_passkey_grid(model, bpe_tok, grid(memory_off=(1,)), tmp_path / "one")
    assert one["settings"]["memory_off"] == [1] and one["label"].endswith("(memory off in layer 1)")
    every_rows, one_rows = read_rows(tmp_path / "every/samples.jsonl"), read_rows(tmp_path / "one/samples.jsonl")
    assert [r["answer_logprob"] for r in every_rows] != [r["answer_logprob"] for r in one_rows]
    again = run_passkey_grid(model, bpe_tok, grid(memory_off=[1]), tmp_path / "one")
    assert again["results"] == one["results"], "the same grid continues, not refused"
    assert grid(memory_off=[]).memory_off is False
    with pytest.raises(ValueError, match="layer indices"):
        grid(memory_off=[-2])


def test_multineedle_grid(bpe_tok, micro_model, tmp_path):
    model = micro_model(len(bpe_tok))
    config = MultiNeedleConfig(lengths=(400,), samples=2, max_new_tokens=6, batch_size=2, progress=False)
    summary = run_multineedle_grid(model, bpe_tok, config, tmp_path)
    rows = read_rows(tmp_path / "samples.jsonl")
    assert len(rows) == 3 * 2
    assert {r["task"] for r in rows} == {"multikey", "multivalue", "multiquery"}
    assert all(0.0 <= r["score"] <= 1.0 and len(r["needles"]) == 4 for r in rows)
    for n in (n for r in rows for n in r["needles"]):
        assert n["start"] < n["value_last_token"] < n["end"]
        assert n["memory_updates"] == 399 // 16 - n["value_last_token"] // 16
    assert [c["task"] for c in summary["results"]["by_task"]] == ["multikey", "multivalue", "multiquery"]


def test_perplexity_by_position(bpe_tok, micro_model, tmp_path):
    model = micro_model(len(bpe_tok), dtype=torch.float64)
    config = PerplexityConfig(train_len=16, bucket_len=40, windows=3, batch_size=2, chunk_len=9, progress=False)
    summary = perplexity_by_position(model, bpe_tok, config, tmp_path)
    results = summary["results"]
    assert config.max_len == 128 and results["windows"] == 3 and results["train_len"] == 16
    assert [(b["start"], b["end"]) for b in results["buckets"]] == [(0, 40), (40, 80), (80, 120), (120, 128)]
    assert [b["tokens"] for b in results["buckets"]] == [3 * 39, 3 * 40, 3 * 40, 3 * 8]
    # The overall loss is the model's own mean loss over the same windows (labels shifted inside).
    windows = [r["window"] for r in read_rows(tmp_path / "samples.jsonl")]
    assert windows == [0, 1, 2]
    from infini_llama.data import held_out_book

    ids = bpe_tok.encode(held_out_book().text[:20_000], add_special_tokens=False)[: 3 * 128]
    batch = torch.tensor(ids).view(3, 128)
    with torch.no_grad():
        loss = model(input_ids=batch, labels=batch).loss
    assert results["overall"]["mean_loss"] == pytest.approx(float(loss), rel=1e-9)
    budget = dataclasses.replace(config, batch_size=1, batch_tokens=3 * 128)  # the three windows in one batch
    batched = perplexity_by_position(model, bpe_tok, budget, tmp_path / "budget")["results"]
    assert batched["overall"]["mean_loss"] == pytest.approx(results["overall"]["mean_loss"], rel=1e-9)
    with pytest.raises(ValueError, match="give max_len"):
        PerplexityConfig()
    with pytest.raises(ValueError, match="batch_tokens"):
        PerplexityConfig(train_len=16, batch_tokens=0)


@pytest.mark.parametrize(
    ("start", "end", "bucket"),
    [
        (41, 64, "whole"),  # inside the first segment
        (1024, 1047, "whole"),  # starts a segment
        (1000, 1024, "whole"),  # ends one: the boundary is after its last token
        (2047, 2070, "1-4"),  # one token before the boundary
        (1020, 1047, "1-4"),
        (1019, 1047, "5-8"),
        (3059, 3082, "13-16"),  # lease D's depth 0.75 at 4,096
        (10, 2000, "1013-1016"),  # longer than a segment: the first boundary inside it
    ],
)
def test_needle_cut_bucket_counts_the_needle_tokens_before_the_first_boundary_inside_it(start, end, bucket):
    from infini_llama.eval.diagnostics import needle_cut_bucket, needle_cut_order

    assert needle_cut_bucket(start, end, 1024) == bucket
    assert sorted(["13-16", "whole", "1-4", "5-8"], key=needle_cut_order) == ["whole", "1-4", "5-8", "13-16"]
