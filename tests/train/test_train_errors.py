"""Bad input: one clear message, exit status 2 from the CLI, and the run folder left exactly as it was."""

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from train_helpers import snapshot
from transformers import LlamaConfig

from infini_llama.cli import main
from infini_llama.train import ConfigError, train


@pytest.fixture
def existing_run(micro_cfg, tmp_path) -> Path:
    """A finished 4-step run with its checkpoint, final folder and metrics."""
    return train(micro_cfg(out=str(tmp_path / "existing"), steps=4, save_every=2)).run_dir


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.fixture
def bad_inputs(tmp_path) -> dict[str, Path]:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 50)
    llama = tmp_path / "llama"
    LlamaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1).save_pretrained(llama)
    return {"empty": empty, "latin1": latin1, "llama": llama, "missing": tmp_path / "missing.txt"}


CASES = {
    "missing-data": (["--data", "{missing}"], "does not exist"),
    "empty-file": (["--data", "{empty}"], r"no usable text .*empty\.txt"),
    "non-utf8-file": (["--data", "{latin1}"], r"no usable text .*latin1\.txt"),
    "missing-tokenizer": (["--tokenizer", "{missing}"], "could not load tokenizer"),
    "tokenizer-larger-than-vocab": (
        ["--set", "vocab_size=256"],
        "tokenizer has 300 tokens but the model's vocab",
    ),
    "seq-shorter-than-segment": (["--seq-len", "8"], r"seq_len \(8\) is shorter than segment_len \(16\)"),
    "init-from-not-infini": (["--init-from", "{llama}"], "holds a LlamaConfig, not an infini_llama model"),
    "init-from-missing": (["--init-from", "{missing}"], "is not a folder"),
    "other-lr": (["--lr", "0.01"], r"cannot resume .*lr: 0\.002 then, 0\.01 now"),
    "other-segment": (["--set", "segment_len=8"], r"cannot resume .*model\.segment_len: 16 then, 8 now"),
    "other-data": (["--seed", "3"], r"cannot resume .*seed: 0 then, 3 now"),
    "unknown-setting": (["--set", "segment=8"], "unknown setting 'segment'"),
    "global-batch": (["--global-batch", "6"], r"global_batch \(6\) must be a multiple"),
}


@pytest.mark.filterwarnings("ignore:skipping bad data file:UserWarning")  # the data layer's, as designed
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_one_message_run_untouched(case, existing_run, micro_args, bad_inputs, capsys):
    extra, message = CASES[case]
    extra = [arg.format(**bad_inputs) for arg in extra]
    before = snapshot(existing_run)
    args = micro_args("--steps", "4", "--save-every", "2", "--resume", *extra, out=existing_run)
    code, err = run_cli(args, capsys)
    assert code == 2
    assert err.startswith("infini-llama train: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert snapshot(existing_run) == before


def test_a_folder_holding_a_run_needs_resume_or_overwrite(existing_run, micro_args, capsys):
    before = snapshot(existing_run)
    code, err = run_cli(micro_args("--steps", "4", out=existing_run), capsys)
    assert code == 2 and "already holds a run; pass --resume" in err
    assert snapshot(existing_run) == before
    code, err = run_cli(micro_args("--steps", "2", "--overwrite", out=existing_run), capsys)
    assert code == 0, err
    assert json.loads((existing_run / "run.json").read_text())["train"]["steps"] == 2
    assert not (existing_run / "checkpoints" / "step_0000004").exists()


def test_a_folder_that_is_not_a_run_is_never_touched(tmp_path, micro_args, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.txt").write_text("precious")
    for extra in ([], ["--overwrite"], ["--resume"]):
        code, err = run_cli(micro_args(*extra, out=folder), capsys)
        assert code == 2 and "holds no run" in err
    assert snapshot(folder) == {"thesis.txt": hashlib.sha256(b"precious").hexdigest()}
    file_out = tmp_path / "file"
    file_out.write_text("x")
    code, err = run_cli(micro_args(out=file_out), capsys)
    assert code == 2 and "is a file" in err


def test_resume_and_overwrite_together(micro_args, capsys):
    code, err = run_cli(micro_args("--resume", "--overwrite"), capsys)
    assert code == 2 and "pass only one" in err


def test_a_bad_file_among_good_ones_is_skipped_with_a_warning(micro_cfg, text_dir, bad_inputs):
    cfg = micro_cfg(data=[str(text_dir), str(bad_inputs["latin1"])], steps=2)
    with pytest.warns(UserWarning, match=r"latin1\.txt is not valid UTF-8"):
        result = train(cfg)
    assert result.step == 2


def test_init_from_cannot_change_shapes(micro_cfg, existing_run):
    with pytest.raises(ConfigError, match="has hidden_size=32; it cannot become 64"):
        train(micro_cfg(init_from=str(existing_run / "final"), model={"hidden_size": 64}))


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_asked_for_but_not_installed(micro_args, capsys):
    code, err = run_cli(micro_args("--wandb"), capsys)
    assert code == 2 and "pip install wandb" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_asked_for_without_a_gpu(micro_args, capsys):
    code, err = run_cli(micro_args("--device", "cuda"), capsys)
    assert code == 2 and "no CUDA device is visible" in err
