"""Two processes on gloo (torchrun): DDP gives the losses of one process with the same global batch, and an
FSDP2 run resumed from a DDP checkpoint continues with the same losses."""

import shutil

import pytest

from infini_llama.train import read_metrics, train

TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "infini_llama"]


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl", "train")}


def test_two_processes_match_one_and_checkpoints_cross_modes(micro_cfg, micro_args, run_python, tmp_path):
    steps = ["--steps", "6", "--save-every", "3", "--eval-every", "3"]
    single = train(micro_cfg(out=str(tmp_path / "single"), steps=6, save_every=3, eval_every=3, batch_size=4))

    ddp_dir = tmp_path / "ddp"
    done = run_python([*TORCHRUN, *micro_args(*steps, "--batch-size", "2", "--dist", "ddp", out=ddp_dir)])
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = losses(ddp_dir)
    assert sorted(ddp) == list(range(1, 7))
    for step, loss in single.losses.items():  # same windows per step, split over two processes
        assert ddp[step] == pytest.approx(loss, rel=1e-5), step
    ddp_val = read_metrics(ddp_dir / "metrics.jsonl", "val")[-1]["loss"]
    assert ddp_val == pytest.approx(single.val_loss, rel=1e-5)

    # Continue the DDP run from its step-3 checkpoint under FSDP2: optimizer state keyed by parameter
    # name loads into the sharded model, and steps 4-6 repeat.
    fsdp_dir = tmp_path / "fsdp"
    shutil.copytree(ddp_dir, fsdp_dir)
    shutil.rmtree(fsdp_dir / "checkpoints" / "step_0000006")
    shutil.rmtree(fsdp_dir / "final")
    (fsdp_dir / "metrics.jsonl").unlink()  # so every loss read below comes from the FSDP2 run
    args = micro_args(*steps, "--batch-size", "2", "--dist", "fsdp", "--resume", out=fsdp_dir)
    done = run_python([*TORCHRUN, *args])
    assert done.returncode == 0, done.stderr[-3000:]
    fsdp = losses(fsdp_dir)
    assert sorted(fsdp) == [4, 5, 6]
    for step in (4, 5, 6):
        assert fsdp[step] == pytest.approx(ddp[step], rel=1e-6), step
    assert (fsdp_dir / "final" / "model.safetensors").is_file()
    assert (fsdp_dir / "checkpoints" / "step_0000006" / "trainer_state" / "optimizer.pt").is_file()
