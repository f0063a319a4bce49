"""The study's duration: estimated before it starts from a short probe of each arm's model, and the whole study's
time left while it runs, read from the study folder."""

import json
import time

import pytest
import torch

from infini_llama.host import cpu_summary
from infini_llama.profiling import busy_us, gpu_busy_share, kernel_events
from infini_llama.study import estimate, run_study, study_config
from infini_llama.study.arms import expand_arms
from infini_llama.study.estimate import Stage, StudyClock, Task, estimate_study, lanes, lanes_seconds, study_eta
from infini_llama.study.stages import arm_stages
from infini_llama.train import TrainConfig

MODEL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
             segment_len=16)  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def micro_study(**overrides):
    steps = dict(steps=30, eval_every=10, save_every=0, eval_windows=2, batch_size=4, compile=False)
    fields = dict(
        model=MODEL, pretrain=dict(seq_len=128, **steps), finetune=dict(seq_len=128, **{**steps, "batch_size": 2}),
        eval_multiples=(1, 2), eval_depths=(0.0, 1.0), eval_samples=1, eval_batch_size=2, selection_samples=4,
        perplexity_windows=1, perplexity_bucket=32,
    )  # fmt: skip
    return study_config("tiny", **{**fields, **overrides})


def test_every_stage_is_estimated_from_a_short_probe(tmp_path):
    cfg = micro_study(finetune_lr_grid=(1e-3, 2e-3), passkey=dict(loss="all"))
    tasks = [(cfg, arm, tmp_path) for arm in expand_arms(cfg)]
    began = time.perf_counter()
    estimates, record = estimate_study(tasks, jobs=2, device="cpu", threads=1)
    assert time.perf_counter() - began < 10
    for (_, arm, _), task in zip(tasks, estimates, strict=True):
        names = [name for name, _ in arm_stages(cfg, arm, tmp_path / arm.name, "cpu", progress=False)]
        assert [stage.name for stage in task.stages] == names
        assert all(stage.seconds >= 0 for stage in task.stages)
        pretrain, finetune = task.stages[0], task.stages[1]
        assert pretrain.steps == 30 and pretrain.seconds > 30 * pretrain.step_seconds > 0  # plus validation
        # Step time from the probe's shape (the same for both stages: the loss on every token), in proportion to
        # the sequences of a step.
        assert finetune.step_seconds == pytest.approx(pretrain.step_seconds / 2)
        # Four validations (steps 0, 10, 20, 30), each of passes over 2 windows at a third of a step's time per
        # sequence: pretraining scores its windows and their copies; fine-tuning its prompts (under their labels and
        # each answer token's at once) and (packed) the answers at a segment boundary and the needles cut by one.
        packed = cfg.passkey.get("pack_min_len") != 0
        for stage, sequences, passes in ((pretrain, 4, 2), (finetune, 2, 1 + 2 * packed)):
            validations = 4 * passes * 2 * stage.step_seconds / sequences / 3
            assert stage.seconds == pytest.approx(30 * stage.step_seconds + validations)
        assert sum(s.seconds for s in task.stages[3:]) > 0  # the evaluations
    # Two arms on two workers: the slower one, then the report.
    assert record["estimated_seconds"] == pytest.approx(max(t.seconds for t in estimates) + estimate.REPORT_SECONDS,
                                                        abs=0.1)  # fmt: skip
    assert record["jobs"] == 2 and set(record["tasks"]) == {"infini", "full"}
    assert record["host"]["cores"] >= 1 and "avx512" in record["host"]
    json.dumps(record)  # written as estimate.json


def test_an_arm_that_copies_an_earlier_arms_pretraining_is_not_estimated_to_train_it(tmp_path):
    cfg = micro_study(sweeps={"finetune.lr": [1e-3, 2e-3]})
    tasks = [(cfg, arm, tmp_path) for arm in expand_arms(cfg)]
    estimates, _ = estimate_study(tasks, jobs=1, device="cpu", threads=1)
    pretraining = {task.label: task.stages[0].seconds for task in estimates}
    assert pretraining["infini-finetune.lr=0.001"] > 0 and pretraining["full-finetune.lr=0.001"] > 0
    assert pretraining["infini-finetune.lr=0.002"] == 0 and pretraining["full-finetune.lr=0.002"] == 0


def test_fine_tuning_on_the_answers_is_probed_on_its_own_path(tmp_path, monkeypatch):
    # With loss="answer" the trainer runs the output layer at the answers only: a step of its own speed.
    probed = []

    def fake_step_seconds(model, tcfg, device, generator, answers_only=False, busy=False):
        probed.append((tcfg.batch_size, answers_only))
        return (0.25, None) if answers_only else (1.0, None)

    monkeypatch.setattr(estimate, "_training_step_seconds", fake_step_seconds)
    cfg = micro_study(passkey=dict(loss="answer"))
    tasks = [(cfg, arm, tmp_path) for arm in expand_arms(cfg)]
    estimates, record = estimate_study(tasks, jobs=2, device="cpu", threads=1)
    assert sorted(set(probed)) == [(2, True), (4, False)]
    for task in estimates:
        pretrain, finetune = task.stages[0], task.stages[1]
        assert (pretrain.step_seconds, finetune.step_seconds) == (1.0, 0.25)
    assert record["gpu_busy"] is None and record["lanes"] == 2


def test_a_token_budget_probes_and_counts_each_length_at_its_own_batch(tmp_path, monkeypatch):
    # Lengths 128 and 256 with a budget of 256 tokens: batches of two prompts, then one; a probe batch costs 1 ms
    # per token, so every prompt costs its length in ms whatever its batch.
    probed = []

    def fake_batch_seconds(runner, batch, length, device, generator):
        probed.append((batch, length))
        return batch * length * 1e-3

    monkeypatch.setattr(estimate, "_passkey_batch_seconds", fake_batch_seconds)
    cfg = micro_study(eval_samples=3, eval_batch_tokens=256, selection_samples=5, perplexity_windows=1)
    arm = expand_arms(cfg)[0]
    estimates, record = estimate_study([(cfg, arm, tmp_path)], jobs=1, device="cpu", threads=1)
    assert set(probed) == {(2, 128), (1, 256)}
    assert record["rates"][arm.name]["passkey_prompt_seconds"] == {128: pytest.approx(0.128), 256: pytest.approx(0.256)}
    stages = {stage.name: stage.seconds for stage in estimates[0].stages}
    # Two depths per length; a cell of three prompts runs as two batches of two at 128 tokens (the second part-empty,
    # counted whole), three of one at 256.
    assert stages["passkey-repeat"] == pytest.approx(2 * (4 * 0.128 + 3 * 0.256))
    assert stages["select"] == pytest.approx(6 * 0.128)  # five prompts at the training length, in batches of two
    assert stages["perplexity"] == pytest.approx(1.5 * 0.256)  # one window at the longest length
    with pytest.raises(ValueError, match="eval_batch_tokens must be none or >= 1"):
        micro_study(eval_batch_tokens=0)


def test_on_a_cpu_the_probe_times_part_of_a_large_batch_and_counts_the_rest_per_sequence(tmp_path, monkeypatch):
    # Steps of 4 sequences of 128 tokens and passkey batches of 2 prompts: with room for 256 tokens of training and
    # 128 of passkey the probe runs 2 sequences per step and 1 prompt per batch. A step costs 1 ms per token in the
    # fake model, so the step's seconds are the full batch's either way.
    shapes, prompts = [], []
    step_seconds_per_token = 1e-3

    def fake_loss(model, ids, labels):
        shapes.append(tuple(ids.shape))
        time.sleep(ids.numel() * step_seconds_per_token)
        return model.lm_head.weight.sum() * 0

    def fake_batch_seconds(runner, batch, length, device, generator):
        prompts.append((batch, length))
        return batch * length * 1e-3

    monkeypatch.setattr(estimate, "summed_loss", fake_loss)
    monkeypatch.setattr(estimate, "_passkey_batch_seconds", fake_batch_seconds)
    monkeypatch.setattr(estimate, "CPU_PROBE_TOKENS", {"train": 256, "passkey": 128})
    cfg = micro_study(finetune=dict(seq_len=128, steps=30, eval_every=10, save_every=0, eval_windows=2, batch_size=4,
                                    compile=False))  # fmt: skip
    arm = expand_arms(cfg)[0]
    estimates, record = estimate_study([(cfg, arm, tmp_path)], jobs=1, device="cpu", threads=1)
    assert set(shapes) == {(2, 128)}
    assert set(prompts) == {(1, 128), (1, 256)}
    pretrain = estimates[0].stages[0]
    assert pretrain.step_seconds == pytest.approx(4 * 128 * step_seconds_per_token, rel=0.5)
    assert record["rates"][arm.name]["passkey_prompt_seconds"] == {128: pytest.approx(0.128), 256: pytest.approx(0.256)}
    # Within the room, or on a GPU, the whole batch.
    assert estimate._probed(4, 32, "train", torch.device("cpu")) == 4
    assert estimate._probed(4, 16384, "passkey", torch.device("cpu")) == 1
    assert estimate._probed(4, 16384, "passkey", torch.device("cuda")) == 4


@pytest.mark.parametrize(("busy", "lanes_counted"), [(0.95, 1), (0.3, 2), (None, 2)])
def test_arms_sharing_a_gpu_are_counted_at_full_speed_as_far_as_its_busy_share_leaves_room(
    tmp_path, monkeypatch, busy, lanes_counted
):
    # Two arms on one GPU: a step that keeps the GPU busy (the 302M model) leaves no room for a second arm at full
    # speed, one that leaves it idle most of the time (the small models) does; unmeasured, two are counted.
    monkeypatch.setattr(estimate, "_training_step_seconds", lambda *args: (1.0, busy if args[-1] else None))
    cfg = micro_study()
    tasks = [(cfg, arm, tmp_path) for arm in expand_arms(cfg)]
    estimates, record = estimate_study(tasks, jobs=2, device="cpu", threads=1, gpus=1)
    assert record["lanes"] == lanes_counted and record["gpu_busy"] == busy
    assert all(r["gpu_busy"] == busy for r in record["rates"].values())
    counted = ", counted as 1 at full speed (a training step keeps the GPU 95% busy, the arms' mean)"
    assert (counted in estimate.estimate_lines(estimates, record)[0]) == (lanes_counted == 1)
    seconds = sorted(task.seconds for task in estimates)
    expected = seconds[-1] if lanes_counted == 2 else sum(seconds)
    assert record["estimated_seconds"] == pytest.approx(expected + estimate.REPORT_SECONDS, abs=0.1)


@pytest.mark.parametrize(
    ("shares", "lanes_counted"), [({"infini": 0.9, "full": 0.3}, 2), ({"infini": 0.9, "full": 0.8}, 1)]
)
def test_arms_sharing_a_gpu_are_counted_by_their_mean_busy_share(tmp_path, monkeypatch, shares, lanes_counted):
    # Arms side by side fill each other's idle time: a busy arm beside an idle one still leaves room for two (the
    # busiest arm's share alone would count one), where two busy ones do not.
    monkeypatch.setattr(
        estimate,
        "_training_step_seconds",
        lambda model, *args: (1.0, shares[model.config.attention] if args[-1] else None),
    )
    cfg = micro_study()
    tasks = [(cfg, arm, tmp_path) for arm in expand_arms(cfg)]
    assert {arm.name for _, arm, _ in tasks} == set(shares)
    _, record = estimate_study(tasks, jobs=2, device="cpu", threads=1, gpus=1)
    assert record["gpu_busy"] == pytest.approx(sum(shares.values()) / 2, abs=1e-3)
    assert record["lanes"] == lanes_counted
    assert {name: r["gpu_busy"] for name, r in record["rates"].items()} == shares


def test_arms_fill_the_first_free_worker_in_order():
    assert lanes_seconds([3, 1, 2], jobs=2) == 3  # 3 | 1 + 2
    assert lanes_seconds([3, 1, 2], jobs=1) == 6
    assert lanes_seconds([2], jobs=2, busy=[5, 1]) == 5  # the waiting arm starts when the second worker is free
    assert lanes_seconds([], jobs=4) == 0
    # Arms sharing a GPU interleave: the estimate counts two per GPU at full speed, every job on CPU.
    assert (lanes(5, gpus=0), lanes(5, gpus=1), lanes(5, gpus=2), lanes(3, gpus=4), lanes(1, gpus=1)) == (5, 2, 4, 3, 1)
    # ... fewer where a step keeps the GPU busy: the nearest whole number to 1 / busy share, from 1 to 2 per GPU.
    assert [lanes(4, gpus=1, busy=b) for b in (0.95, 0.7, 0.6, 0.2)] == [1, 1, 2, 2]
    assert (lanes(4, gpus=2, busy=0.95), lanes(5, gpus=0, busy=0.95)) == (2, 5)


def test_the_gpus_busy_share_is_the_union_of_its_kernels_over_the_wall_time():
    assert busy_us([]) == 0
    assert busy_us([(0, 10), (5, 12), (20, 25), (21, 22)]) == 12 + 5  # overlapping streams counted once
    assert busy_us([(30, 40), (0, 100)]) == 100  # one kernel inside another, given out of order
    trace = {"traceEvents": [
        {"cat": "kernel", "ts": 0, "dur": 10}, {"cat": "gpu_memcpy", "ts": 10, "dur": 5},
        {"cat": "cpu_op", "ts": 0, "dur": 100}, {"cat": "kernel", "ts": 50},  # a host op; an event with no length
    ]}  # fmt: skip
    assert [e["ts"] for e in kernel_events(trace)] == [0, 10]
    if not torch.cuda.is_available():
        assert gpu_busy_share(lambda: None, 0.01) is None  # off CUDA: not measured


def _task(root, names=("pretrain", "finetune", "passkey")) -> Task:
    stages = [Stage("pretrain", 100.0, steps=100, step_seconds=1.0, tokens_per_step=1000, run_dir=root / "pretrain"),
              Stage("finetune", 50.0), Stage("passkey", 10.0)]  # fmt: skip
    return Task(root.name, root, [s for s in stages if s.name in names])


def test_the_clock_reads_the_time_left_from_the_study_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(estimate, "REPORT_SECONDS", 0.0)
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "pretrain").mkdir(parents=True)
    b.mkdir()
    clock = StudyClock([_task(a), _task(b)], jobs=1, report_seconds=0.0)
    assert clock.seconds_left() == pytest.approx(320, rel=0.01)  # nothing ran yet: one worker, both arms

    # The first logged window holds compilation: no speed from it alone.
    windows = [(10, 20.0), (20, 500.0), (30, 100.0), (40, 500.0), (50, 520.0)]
    metrics = a / "pretrain" / "metrics.jsonl"
    metrics.write_text(json.dumps({"kind": "train", "step": 10, "loss": 1.0, "tokens_per_s": 20.0}) + "\n")
    assert clock.seconds_left() == pytest.approx(320, rel=0.01)
    # Half the pretraining done, at half the probe's speed (the median window; one slowed by a validation does not
    # count): 50 steps of 2 s, and the later stages twice as long.
    metrics.write_text("".join(json.dumps({"kind": "train", "step": s, "loss": 1.0, "tokens_per_s": t}) + "\n"
                               for s, t in windows))  # fmt: skip
    left_a = 50 * 2.0 + 2 * (50 + 10)
    assert clock.seconds_left() == pytest.approx(left_a + 2 * 160, rel=0.01)  # b waits, scaled the same

    # a finished; its stages took twice the estimate, so b is expected to as well.
    for name, seconds in (("pretrain", 200), ("finetune", 100), ("passkey", 20)):
        (a / f"{name}.done").write_text(json.dumps({"seconds": seconds}))
    assert clock.seconds_left() == pytest.approx(320, rel=0.01)  # b runs now, no rate of its own: a's
    for name in ("pretrain", "finetune", "passkey"):
        (b / f"{name}.done").write_text(json.dumps({"seconds": 1}))
    assert clock.seconds_left() == 0
    assert "whole study: " in clock.line() and "ETA" in clock.line()


def test_the_whole_study_eta_is_printed_while_the_block_runs(tmp_path, capsys):
    with study_eta([_task(tmp_path)], jobs=1, every_s=0.05) as clock:
        time.sleep(0.3)
    assert clock is not None
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[study] whole study:")]
    assert lines and "left (ETA" in lines[0]
    with study_eta([], jobs=1) as clock:  # no estimate (--no-estimate): nothing
        assert clock is None


def test_a_study_prints_its_estimate_first_and_the_whole_study_eta_as_it_runs(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"Sentence number {i} tells of the sea and the whale." for i in range(1500)))
    steps = dict(steps=3, eval_every=0, save_every=0, eval_windows=2, batch_size=4, log_every=1, compile=False)
    cfg = micro_study(pretrain=dict(data=[str(corpus)], seq_len=128, **steps), finetune=dict(seq_len=128, **steps),
                      eval_haystacks=("repeat",), layer_off_multiple=None)  # fmt: skip
    monkeypatch.setattr(estimate, "ETA_EVERY_S", 0.5)
    # Estimate only: the same lines and estimate.json, and nothing trained; the same folder then runs the study.
    assert run_study(cfg, tmp_path / "study", device="cpu", progress=False, jobs=1, estimate_only=True) is None
    first = capsys.readouterr().out
    # What it is doing first (on a CPU the probe of a larger preset takes minutes), then the estimate.
    probing = "[study] timing 2 arm model(s) on cpu to estimate the study's duration (--no-estimate skips this) ...\n"
    assert first.startswith(probing + "[study] estimated time on this host (") and "whole study" not in first
    assert (tmp_path / "study" / "estimate.json").is_file()
    assert not list((tmp_path / "study").rglob("*.done")) and not (tmp_path / "study" / "REPORT.md").exists()
    run_study(cfg, tmp_path / "study", device="cpu", progress=False, jobs=1)
    out = capsys.readouterr().out
    assert out.startswith(probing + "[study] estimated time on this host (")
    assert "[study]   infini: pretraining" in out and "[study] whole study: " in out
    saved = json.loads((tmp_path / "study" / "estimate.json").read_text())
    assert saved["estimated_seconds"] > 0 and set(saved["tasks"]) == {"infini", "full"}
    # The host in the study's numbers and its report: model, family, vector extensions.
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    assert [env["device_name"] for env in results["environments"]] == [cpu_summary()]
    assert cpu_summary() in (tmp_path / "study" / "REPORT.md").read_text()

    # Continued when finished: nothing left to estimate, no probe. Without the estimate: neither.
    run_study(cfg, tmp_path / "study", device="cpu", progress=False, jobs=1)
    assert "estimated time" not in capsys.readouterr().out
    run_study(cfg, tmp_path / "study", device="cpu", progress=False, jobs=1, estimate_only=True)
    assert capsys.readouterr().out == "[study] nothing to estimate: every stage of these arms is done\n"
    run_study(cfg, tmp_path / "other", device="cpu", progress=False, jobs=1, estimate=False)
    out = capsys.readouterr().out
    assert "estimated time" not in out and "whole study" not in out
    assert not (tmp_path / "other" / "estimate.json").exists()


@pytest.mark.parametrize("flag", [[], ["--no-estimate"]], ids=["default", "no-estimate"])
def test_no_estimate_skips_the_probe(tmp_path, monkeypatch, flag):
    from infini_llama.cli import main
    from infini_llama.study import runner

    seen = {}
    monkeypatch.setattr(runner, "run_study", lambda cfg, out, **kwargs: seen.update(kwargs))
    assert main(["study", "--preset", "tiny", "--out", str(tmp_path / "s"), "--no-progress", *flag]) == 0
    assert seen["estimate"] is (not flag)


@pytest.mark.parametrize("flag", ["--no-estimate", "--report-only"])
def test_estimate_only_is_refused_with_a_flag_that_skips_the_estimate(tmp_path, capsys, flag):
    from infini_llama.cli import main

    out = tmp_path / "s"
    assert main(["study", "--preset", "tiny", "--out", str(out), "--no-progress", "--estimate-only", flag]) == 2
    assert f"--estimate-only prints the estimate and trains nothing: drop {flag}" in capsys.readouterr().err
    assert not out.exists()


def test_a_probe_that_fails_leaves_the_study_without_an_estimate(tmp_path, capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(estimate, "probe_arm", out_of_memory)
    cfg = micro_study()
    tasks = [(cfg, arm, tmp_path) for arm in expand_arms(cfg)]
    assert estimate.announce_estimate(tasks, tmp_path, jobs=2, device="cpu") == []
    printed = capsys.readouterr().out
    assert "no estimate of the study's duration: the probe failed (RuntimeError: out of memory)" in printed
    # With --estimate-only, the failure is the answer: not "nothing to estimate".
    run_study(cfg, tmp_path / "study", device="cpu", progress=False, jobs=1, estimate_only=True)
    printed = capsys.readouterr().out
    assert "the probe failed" in printed and "nothing to estimate" not in printed


@pytest.mark.parametrize(
    "device,attention,seconds",
    [("cpu", "infini", 30.0), ("cpu", "full", 5.0), ("cuda", "infini", 40.0), ("cuda", "full", 40.0)],
)
def test_a_compiled_stage_counts_the_compilation_of_its_device(tmp_path, device, attention, seconds):
    """Calibrated per device type: on one H200 every 302M training stage spent about 50 s outside its steps,
    where the CPU's calibration counts 5 s for full attention."""
    recipe = dict(study_config("tiny").pretrain, steps=10, eval_every=0)
    stage = {
        compiled: estimate._training_stage("pretrain", TrainConfig(**{**recipe, "compile": compiled}), 1.0, attention,
                                           torch.device(device), tmp_path).seconds
        for compiled in (True, False)
    }  # fmt: skip
    assert stage[True] - stage[False] == pytest.approx(seconds)
