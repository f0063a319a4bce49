"""Untrusted files: a checkpoint or weights file carrying a pickle payload is refused and the payload never runs;
a damaged final model is named before it is loaded; YAML and JSON configs are read as data."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from infini_llama.cli import main
from infini_llama.eval.checkpoint import load_model
from infini_llama.train import train
from infini_llama.train.manifest import CheckpointError, write_manifest


class Payload:
    """Unpickling this writes `marker`: what a malicious pickle would do with any code of its choosing."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "the payload ran"))


def booby_trap(file: Path, marker: Path, content) -> None:
    """Save `content` with a payload inside to `file`, and check that a plain unpickling would run it."""
    torch.save({"payload": Payload(marker), "content": content}, file)
    torch.load(file, weights_only=False)
    assert marker.exists(), "the payload is not live"
    marker.unlink()


@pytest.fixture
def stopped_run(micro_cfg, tmp_path):
    """A run whose newest checkpoint (step 4 of 8) is about to be tampered with; its manifest is rewritten, so
    the checksums pass and only the loader stands between the payload and the trainer."""
    result = train(micro_cfg(out=str(tmp_path / "run"), steps=4, save_every=4))
    shutil.rmtree(result.final_dir)
    return result.checkpoint


def test_a_pickle_payload_in_the_trainer_state_is_refused(stopped_run, micro_args, tmp_path, capsys):
    optimizer = stopped_run / "trainer_state" / "optimizer.pt"
    booby_trap(optimizer, tmp_path / "marker", torch.load(optimizer, weights_only=True))
    write_manifest(stopped_run)
    code = main(micro_args("--steps", "4", "--save-every", "4", "--resume", out=stopped_run.parent.parent))
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "refusing to load" in err and "trainer_state/optimizer.pt" in err and "Weights only load failed" in err
    assert not (tmp_path / "marker").exists()


def test_pickled_weights_in_a_checkpoint_are_refused(stopped_run, micro_cfg, tmp_path):
    weights = load_file(stopped_run / "model.safetensors")
    (stopped_run / "model.safetensors").unlink()
    booby_trap(stopped_run / "pytorch_model.bin", tmp_path / "marker", weights)
    write_manifest(stopped_run)
    with pytest.raises(CheckpointError, match="has no model.safetensors; weights are only loaded from safetensors"):
        train(micro_cfg(out=str(stopped_run.parent.parent), steps=4, save_every=4, resume=True))
    assert not (tmp_path / "marker").exists()


def test_evaluation_refuses_a_pickle_payload_and_a_damaged_model(micro_cfg, tmp_path):
    final = train(micro_cfg(steps=2, save_every=0)).final_dir
    assert load_model(final, device="cpu").config.hidden_size == 32

    other = tmp_path / "someone-elses-model"  # a foreign HF folder with a pickled weights file
    shutil.copytree(final, other)
    (other / "manifest.json").unlink()
    weights = load_file(other / "model.safetensors")
    (other / "model.safetensors").unlink()
    booby_trap(other / "pytorch_model.bin", tmp_path / "marker", weights)
    with pytest.raises(CheckpointError, match="refusing to load .*someone-elses-model: its weights file holds"):
        load_model(other, device="cpu")
    assert not (tmp_path / "marker").exists()

    data = bytearray((final / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (final / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match its SHA-256"):
        load_model(final, device="cpu")


def test_configs_are_read_as_data(micro_args, tmp_path, capsys):
    marker = tmp_path / "marker"
    tagged = tmp_path / "run.yaml"
    tagged.write_text(f"lr: !!python/object/apply:os.mkdir ['{marker}']\n")
    yaml.unsafe_load(tagged.read_text())
    assert marker.is_dir(), "the payload is not live"
    marker.rmdir()
    assert main(micro_args("--config", str(tagged))) == 2
    assert "is not valid YAML: could not determine a constructor" in capsys.readouterr().err
    code_as_text = tmp_path / "run.json"
    code_as_text.write_text("{\"lr\": \"__import__('os').system('true')\"}")
    assert main(micro_args("--config", str(code_as_text))) == 2
    assert "lr must be a number" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "run").exists()
