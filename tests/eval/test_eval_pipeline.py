"""The whole pipeline through the command line: finetune → passkey grid (+ memory off, + baseline) → multi-needle
→ perplexity → gates → report; and the errors a user sees for bad input."""

import json

import pytest

from infini_llama.cli import main
from infini_llama.eval.checkpoint import checkpoint_label, gate_trajectory, training_length
from infini_llama.eval.records import read_rows


@pytest.fixture
def checkpoints(tmp_path, bpe_tok, micro_model):
    """A micro Infini model and a micro full-attention baseline saved with the tokenizer, as the trainer does."""
    paths = {}
    for attention in ("infini", "full"):
        path = tmp_path / f"base-{attention}"
        micro_model(len(bpe_tok), attention=attention).save_pretrained(path)
        bpe_tok.save_pretrained(path)
        paths[attention] = str(path)
    return paths


def run(*argv) -> int:
    return main([str(a) for a in argv])


def test_finetune_evaluate_and_report(tmp_path, checkpoints):
    ft = tmp_path / "ft"
    assert run("finetune", "passkey", "--checkpoint", checkpoints["infini"], "--out", ft, "--steps", 3,
               "--seq-len", 160, "--global-batch", 4, "--batch-size", 2, "--warmup-steps", 1, "--eval-every", 0,
               "--save-every", 0, "--device", "cpu", "--no-progress") == 0  # fmt: skip
    final = ft / "final"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()

    ev = tmp_path / "ev"
    grid = ["--lengths", "160,224", "--depths", "0,0.5,1", "--samples", 2, "--batch-size", 2, "--no-progress"]
    assert run("eval", "passkey", "--checkpoint", final, "--out", ev / "pk", *grid) == 0
    assert run("eval", "passkey", "--checkpoint", final, "--out", ev / "pk-off", "--memory-off", *grid) == 0
    assert run("eval", "passkey", "--checkpoint", checkpoints["full"], "--out", ev / "pk-full", *grid) == 0
    assert run("eval", "passkey", "--checkpoint", checkpoints["full"], "--out", ev / "pk-full-ntk", "--rope-scaling",
               "dynamic", "--train-len", 128, *grid) == 0  # fmt: skip
    assert run("eval", "multineedle", "--checkpoint", final, "--out", ev / "mn", "--lengths", 400, "--samples", 1,
               "--max-new-tokens", 4, "--batch-tokens", 800, "--no-progress") == 0  # fmt: skip
    # --train-len comes from the fine-tuning run's run.json (160), windows reach 8x that.
    assert run("eval", "perplexity", "--checkpoint", final, "--out", ev / "ppl", "--bucket-len", 160,
               "--windows", 2, "--no-progress") == 0  # fmt: skip
    assert run("eval", "gates", "--checkpoint", final, "--out", ev / "gates") == 0

    passkey = json.loads((ev / "pk" / "summary.json").read_text())
    assert passkey["label"] == "ft" and passkey["status"] == "complete"
    assert passkey["model"]["checkpoint"] == str(final)
    assert len(read_rows(ev / "pk" / "samples.jsonl")) == 2 * 3 * 2
    assert json.loads((ev / "mn" / "summary.json").read_text())["settings"]["batch_tokens"] == 800
    ppl = json.loads((ev / "ppl" / "summary.json").read_text())
    assert ppl["results"]["train_len"] == 160 and ppl["settings"]["max_len"] == 1280
    gates = json.loads((ev / "gates" / "summary.json").read_text())
    assert [p["step"] for p in gates["results"]["trajectory"]] == [0, 3], "gates logged by the trainer"
    assert (ev / "gates" / "gates.png").is_file() and (ev / "gates" / "gates_trajectory.png").is_file()
    # The run folder itself names the same run as its final/ folder.
    assert gate_trajectory(ft) == gates["results"]["trajectory"] and checkpoint_label(ft) == "ft"
    assert training_length(tmp_path) is None and gate_trajectory(checkpoints["infini"]) == []

    report = tmp_path / "report"
    assert run("report", ev, "--out", report) == 0
    text = (report / "report.md").read_text()
    for heading in ("## Runs", "## Passkey retrieval", "## Multi-needle retrieval", "## Perplexity by position",
                    "## Memory gates", "### ft (memory off)", "### base-full",
                    "### base-full (RoPE dynamic NTK)"):  # fmt: skip
        assert heading in text, heading
    assert "| depth \\ length | 160 | 224 |" in text
    assert "(0/2) [0–66]" in text or "(1/2)" in text or "(2/2)" in text, "cells show counts and intervals"
    figures = json.loads((report / "report.json").read_text())["figures"]
    assert "passkey_vs_length_depth0_repeat.png" in figures and "perplexity_vs_position.png" in figures
    assert "passkey_vs_memory_updates_repeat.png" in figures and "passkey_heatmap_ft-memory-off_repeat.png" in figures
    assert "### Haystack: classic filler (`repeat`)" in text and "### Haystack: held-out" not in text
    for name in figures:
        assert (report / name).stat().st_size > 1000, name


def test_bad_input_gives_a_clear_error(tmp_path, checkpoints, bpe_tok, micro_model, capsys):
    out = tmp_path / "out"
    assert run("eval", "passkey", "--checkpoint", tmp_path / "nowhere", "--out", out) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run("eval", "passkey", "--checkpoint", checkpoints["infini"], "--out", out, "--lengths", "32") == 2
    assert "shorter than the prompt template" in capsys.readouterr().err
    small = tmp_path / "small-vocab"
    micro_model(100).save_pretrained(small)
    bpe_tok.save_pretrained(small)
    assert run("eval", "passkey", "--checkpoint", small, "--out", out) == 2
    assert "tokenizer mismatch" in capsys.readouterr().err
    micro_model(len(bpe_tok)).save_pretrained(tmp_path / "no-tokenizer")
    assert run("eval", "gates", "--checkpoint", tmp_path / "no-tokenizer", "--out", out) == 2
    assert "holds no tokenizer" in capsys.readouterr().err
    assert run("eval", "gates", "--checkpoint", checkpoints["full"], "--out", out) == 2
    assert "no memory gates" in capsys.readouterr().err
    assert run("eval", "passkey", "--checkpoint", checkpoints["full"], "--out", out, "--rope-scaling", "yarn") == 2
    assert "pass --train-len" in capsys.readouterr().err
    assert run("eval", "multineedle", "--checkpoint", checkpoints["infini"], "--out", out, "--tasks", "x") == 2
    assert "unknown task" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("eval", "needles", "--checkpoint", checkpoints["infini"], "--out", out)
    assert "invalid choice" in capsys.readouterr().err
    assert run("report", tmp_path / "empty-nothing", "--out", out) == 2


def test_report_shows_each_haystack_in_its_own_section(tmp_path, checkpoints, bpe_tok):
    from infini_llama.eval import PasskeyGridConfig, build_report, load_model, run_passkey_grid

    model = load_model(checkpoints["full"], device="cpu")
    for haystack in ("repeat", "book"):
        grid = PasskeyGridConfig(lengths=(160,), depths=(0.0,), samples=1, haystack=haystack, progress=False)
        run_passkey_grid(model, bpe_tok, grid, tmp_path / "ev" / haystack, label="full")
    text = build_report([tmp_path / "ev"], tmp_path / "report").read_text()
    classic, held_out = text.index("### Haystack: classic filler"), text.index("### Haystack: held-out text")
    assert classic < held_out and "#### full" in text[classic:held_out] and "#### full" in text[held_out:]
    assert "full #2" not in text, "the same label in two haystacks is not a duplicate"
    assert (tmp_path / "report" / "passkey_heatmap_full_book.png").is_file()
