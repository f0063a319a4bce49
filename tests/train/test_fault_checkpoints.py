"""Damaged checkpoints and failing disks: a damaged checkpoint is named and skipped, a failed write leaves the
previous checkpoint as it was, and resuming afterwards repeats the uninterrupted run's losses."""

import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from train_helpers import SignalAt, window_source

from infini_llama.cli import main
from infini_llama.train import train
from infini_llama.train.checkpoint import checkpoint_path, latest_checkpoint, list_checkpoints
from infini_llama.train.manifest import manifest_problems


def flip_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


def truncate_half(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


DAMAGE = {  # how the newest checkpoint is damaged -> what the warning must say
    "flipped-byte": (lambda c: flip_byte(c / "model.safetensors"), r"model\.safetensors does not match its SHA-256"),
    "truncated": (
        lambda c: truncate_half(c / "trainer_state" / "optimizer.pt"),
        r"trainer_state/optimizer\.pt has \d+ bytes, the manifest says \d+",
    ),
    "missing-file": (lambda c: (c / "trainer_state" / "rng.pt").unlink(), r"trainer_state/rng\.pt is missing"),
    "unreadable-manifest": (lambda c: (c / "manifest.json").write_text("{not json"), r"manifest\.json is unreadable"),
}


def stopped_run(micro_cfg, out: Path, at: int = 5):
    """The micro run (checkpoints every 3 steps) stopped by SIGTERM after step at + 1, as a preempted job is."""
    cfg = micro_cfg(out=str(out), save_every=3)
    result = train(cfg, batches=SignalAt(window_source(cfg), at=at, signum=signal.SIGTERM))
    assert result.stopped_by == "SIGTERM" and result.step == at + 1
    return cfg


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_named_and_resume_falls_back_to_the_previous_one(micro_cfg, tmp_path, damage):
    straight = train(micro_cfg(out=str(tmp_path / "straight"), save_every=3))
    cfg = stopped_run(micro_cfg, tmp_path / "run")
    newest = checkpoint_path(cfg.out, 6)
    assert [p.name for p in list_checkpoints(cfg.out)] == ["step_0000003", "step_0000006"]
    harm, message = DAMAGE[damage]
    harm(newest)

    with pytest.warns(UserWarning, match=rf"skipping damaged checkpoint .*step_0000006: {message}"):
        resumed = train(micro_cfg(out=cfg.out, save_every=3, resume=True))
    assert resumed.checkpoint.name == "step_0000008" and sorted(resumed.losses) == [4, 5, 6, 7, 8]
    assert resumed.losses == {s: straight.losses[s] for s in range(4, 9)}  # bitwise, from step 3's state
    assert manifest_problems(newest) == []  # rewritten when the run reached step 6 again


def test_with_every_checkpoint_damaged_resume_starts_over(micro_cfg, tmp_path):
    straight = train(micro_cfg(out=str(tmp_path / "straight"), save_every=3))
    cfg = stopped_run(micro_cfg, tmp_path / "run")
    for step in (3, 6):
        flip_byte(checkpoint_path(cfg.out, step) / "model.safetensors")
    with pytest.warns(UserWarning, match="skipping damaged checkpoint") as warned:
        resumed = train(micro_cfg(out=cfg.out, save_every=3, resume=True))
    assert sorted(str(w.message).split(":")[0].rsplit("/", 1)[1] for w in warned) == ["step_0000003", "step_0000006"]
    assert resumed.losses == straight.losses


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(micro_cfg, micro_args, tmp_path, monkeypatch, capsys):
    """The second checkpoint's optimizer state is half written when the disk fills up."""
    real_save = torch.save
    calls = []

    def disk_fills_up(obj, file, *args, **kwargs):
        calls.append(Path(file).name)
        if calls.count("optimizer.pt") == 2:
            Path(file).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, file, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", disk_fills_up)
    code = main(micro_args("--save-every", "3", out=run))
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in err and "step_0000006" in err and "after step 6" in err
    assert "its last checkpoint" in err and "step_0000003" in err and "--resume" in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000003"]  # nothing half-written left
    assert manifest_problems(run / "checkpoints" / "step_0000003") == []  # byte for byte as written
    assert not (run / "final").exists()

    monkeypatch.setattr(torch, "save", real_save)  # space freed
    resumed = train(micro_cfg(out=str(run), save_every=3, resume=True))
    straight = train(micro_cfg(out=str(tmp_path / "straight"), save_every=3))
    assert resumed.losses == {s: straight.losses[s] for s in range(4, 9)}


def test_a_failing_metrics_write_stops_the_run_with_the_checkpoints_intact(micro_cfg, tmp_path, monkeypatch):
    from infini_llama.train import metrics
    from infini_llama.train.faults import RunError

    real_log = metrics.MetricsLogger.log

    def log(self, record):
        if record.get("step") == 5:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "run" / "metrics.jsonl"))
        real_log(self, record)

    monkeypatch.setattr(metrics.MetricsLogger, "log", log)
    with pytest.raises(RunError, match=r"metrics\.jsonl: Read-only file system; the run stopped after step 5"):
        train(micro_cfg(out=str(tmp_path / "run"), save_every=4))
    assert latest_checkpoint(tmp_path / "run") == checkpoint_path(tmp_path / "run", 4)  # and it verifies


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(micro_args, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(micro_args(out=blocker / "run")) == 2
    assert "cannot be created" in capsys.readouterr().err
    # Tests run as root here, for whom nothing is read-only: ask os.access as an ordinary user would be answered.
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    assert main(micro_args(out=tmp_path / "run")) == 2
    assert "is not writable" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_manifest_lists_every_file_of_a_checkpoint(micro_cfg):
    result = train(micro_cfg(steps=4, save_every=4))
    folder = result.checkpoint
    listed = json.loads((folder / "manifest.json").read_text())["files"]
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(listed) == on_disk and {"model.safetensors", "trainer_state/optimizer.pt"} <= on_disk
    assert manifest_problems(result.final_dir) == []  # final/ carries one too


def test_a_run_killed_while_writing_its_first_run_json_starts_again(micro_cfg, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".tmp-run.json-4242").write_text('{"train": {"ste')
    result = train(micro_cfg(out=str(run), steps=2, save_every=0))
    assert result.step == 2 and not list(run.glob(".tmp-*"))
