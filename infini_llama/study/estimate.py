"""How long a study takes on this host: an estimate from a short probe before it starts, and the whole study's time
left while it runs.

The probe times a few training steps of each arm's model at its training shapes and a passkey batch at the training
length and at the longest evaluation length (on a CPU, part of each: `CPU_PROBE_TOKENS`), with the CPU threads each
arm will have, on random tokens (no data, no tokenizer). Each stage's estimate is then its planned work at those
rates: optimizer steps (plus validation passes and, for compiled stages, the compilation and the compiled speed-up,
both modelled: compiling in the probe would take longer than the probe), and passkey batches at every length of
every grid. The arms are laid onto `jobs` lanes in the order the study starts them.

While the study runs, `StudyClock` recomputes the time left from the study folder: finished stages from their
markers, a training stage from its metrics.jsonl (steps done and the measured tokens/s), and the stages after it
scaled by how far the measured rates are from the probe's, so the ETA corrects itself on a busy host.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from infini_llama.eval.inference import batch_for
from infini_llama.host import cpu_summary, describe_cpu
from infini_llama.models import InfiniLlamaForCausalLM, config_from_preset
from infini_llama.profiling import gpu_busy_share
from infini_llama.study.arms import Arm, pretraining_copies
from infini_llama.study.config import StudyConfig
from infini_llama.study.results import sequences_per_step
from infini_llama.study.stages import (
    arm_stages,
    candidate_lrs,
    eval_lengths,
    evaluation_numerics,
    finetune_dir,
    finetune_recipe,
    layer_off_length,
    passkey_tasks,
    selection_length,
    stage_group,
    train_recipe,
    training_length,
)
from infini_llama.train import TrainConfig
from infini_llama.train.compile import resolve_compile
from infini_llama.train.loop import summed_loss
from infini_llama.train.metrics import METRICS_FILE
from infini_llama.train.microbatch import resolve_micro_batch
from infini_llama.train.setup import resolve_precision

ESTIMATE_FILE = "estimate.json"
PROBE_STEPS = 2  # timed training steps per shape, after one warm-up step
# On a CPU a step's time grows in proportion to its tokens, so the probe times at most this many tokens per training
# step and per passkey batch there, and counts the rest per sequence (prompt). The tiny preset's shapes fit within
# them; the mini preset's (steps of 16 x 1,024 tokens, 16 prompts of 16,384) kept a 2-core host probing for over 15
# minutes, one thread per arm. A GPU times its full shapes: the batch is what fills it.
CPU_PROBE_TOKENS = {"train": 4096, "passkey": 32768}
# Compiled training, modelled per device type and attention (None: any other attention). On CPU (tiny preset, one
# thread, torch 2.13) the Infini arm's per-segment memory ops gain from fusion, 1.5x the eager tokens/s, and full
# attention's large matmuls gain nothing; compiling takes about 60 s for the Infini arm with a cold Inductor cache
# and 5 s with a warm one, a few seconds for full attention. On one H200 (the 302M model, torch 2.11) the Infini
# arm trained at 264K tokens/s compiled against 0.51 s per eager probe step of 65K tokens (2.0x), full attention at
# 203K against 0.33 s (1.0x); each training stage spent 53-58 s outside its steps for either arm (compilation, 4-5
# validations and checkpoints; reports/paper-h200-screen/), the `mini` arms' fine-tuning 17 s (reports/mini/).
COMPILED_SPEEDUP = {"cpu": {"infini": 1.5}, "cuda": {"infini": 2.0}}
COMPILE_SECONDS = {"cpu": {"infini": 30.0, None: 5.0}, "cuda": {None: 40.0}}
REPORT_SECONDS = 15.0  # a seed's report: tables and figures
ETA_EVERY_S = 30.0  # how often the whole study's time left is printed
ANSWER_TOKENS = 6  # decoded per passkey sample: the key's digits and the token after them


@dataclass
class Stage:
    """One stage's estimate; a training stage also knows its steps and run folder, to follow it while it runs."""

    name: str
    seconds: float
    steps: int | None = None
    step_seconds: float | None = None
    tokens_per_step: int | None = None
    run_dir: Path | None = None


@dataclass
class Task:
    """One (seed, arm) of the study, as the runner runs it: its folder and its stages in order."""

    label: str
    root: Path
    stages: list[Stage] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(stage.seconds for stage in self.stages)


@dataclass
class ArmRates:
    """What the probe measured for one arm's model: seconds per optimizer step of each training stage, the seconds
    per passkey prompt at two lengths, each scored in a batch of the size the study gives that length (interpolated
    linearly between and beyond them), and on a GPU how busy a training step keeps it."""

    step_seconds: dict[str, float]
    eval_points: tuple[tuple[int, float], tuple[int, float]]
    layers: int
    gpu_busy: float | None = None  # the GPU's busy share of a training step, the busiest stage's (None: not measured)

    def eval_prompt(self, length: int) -> float:
        (n0, s0), (n1, s1) = self.eval_points
        if n1 == n0:
            return s0 * length / n0
        return max(s0 + (s1 - s0) * (length - n0) / (n1 - n0), s0 * min(1.0, length / n0))


def probe_device(device: str) -> torch.device:
    """The device the study's arms run on (the first GPU stands for every GPU)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _training_step_seconds(
    model,
    tcfg: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    answers_only: bool = False,
    busy: bool = False,
) -> tuple[float, float | None]:
    """Seconds of one optimizer step of `tcfg`'s shape (its micro-batches included), eager, at the run's precision,
    and with `busy` on a GPU the share of a micro-batch's time the GPU is busy (`gpu_busy_share`; else None).
    `answers_only`: the loss on a passkey answer's tokens at the end of each row only, as fine-tuning with
    loss="answer" has it (the trainer then runs the output layer at those tokens only: see `summed_loss`)."""
    bf16 = resolve_precision(tcfg.precision, device) == "bf16"
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr)
    sequences = _probed(tcfg.batch_size, tcfg.seq_len, "train", device)
    ids = torch.randint(model.config.vocab_size, (sequences, tcfg.seq_len), generator=generator).to(device)
    labels = ids.clone()
    if answers_only:
        labels[:, :-ANSWER_TOKENS] = -100

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = summed_loss(model, ids, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = []
    for _ in range(1 + PROBE_STEPS):
        _sync(device)
        began = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - began)
    micro = min(times[1:])  # the least disturbed by other work on a shared host
    share = gpu_busy_share(step, micro) if busy and device.type == "cuda" else None
    micro *= tcfg.batch_size / sequences
    seconds = micro * tcfg.accumulation(1)
    if resolve_compile(tcfg.compile, device):
        seconds /= _compiled(COMPILED_SPEEDUP, device, model.config.attention, 1.0)
    return seconds, share


def _probed(batch: int, length: int, kind: str, device: torch.device) -> int:
    """Sequences of `length` tokens the probe times for a batch of `batch` (`kind`: "train" or "passkey"): all of
    them on a GPU, at most `CPU_PROBE_TOKENS[kind]` tokens' worth (at least one) on a CPU."""
    if device.type != "cpu":
        return batch
    return min(batch, max(1, CPU_PROBE_TOKENS[kind] // length))


def _compiled(table: dict, device: torch.device, attention: str, default: float) -> float:
    """The value of `table` (COMPILED_SPEEDUP, COMPILE_SECONDS) for `attention` on `device`'s type (CPU's for other
    device types)."""
    values = table.get(torch.device(device).type, table["cpu"])
    return values.get(attention, values.get(None, default))


def eval_batch(cfg: StudyConfig, length: int, prompts: int) -> int:
    """Prompts per batch the study scores at `length` tokens, out of `prompts` scored together (a grid's cell)."""
    return min(batch_for(length, cfg.eval_batch_size, cfg.eval_batch_tokens), prompts)


@torch.no_grad()
def _passkey_batch_seconds(runner, batch: int, length: int, device: torch.device, generator) -> float:
    """Seconds to score one passkey batch as `evaluate_passkey` does: prefill, teacher forcing, greedy decoding."""
    ids = torch.randint(runner.model.config.vocab_size, (batch, length), generator=generator).to(device)
    _sync(device)
    began = time.perf_counter()
    last, state = runner.prefill(ids)
    runner.teacher_forced(last, runner.fork(state), ids[:, :ANSWER_TOKENS])
    runner.greedy(last, state, ANSWER_TOKENS)
    _sync(device)
    return time.perf_counter() - began


def probe_arm(cfg: StudyConfig, arm: Arm, device: torch.device, busy: bool = False) -> ArmRates:
    """Measure `arm`'s model on `device` with the threads this process has now; a few seconds for the tiny preset.
    `busy`: also how busy its training steps keep a GPU (for arms that will share one)."""
    from infini_llama.eval.inference import ChunkedLM

    generator = torch.Generator().manual_seed(0)
    fields = {**cfg.model, **arm.model, "attention": arm.attention}
    model_config = config_from_preset(cfg.model_preset, **fields)
    # An automatic micro-batch as the trainer resolves it (on CUDA a memory probe, before this probe's model).
    steps = {stage: resolve_micro_batch(tcfg, model_config, device, 1, resolve_precision(tcfg.precision, device))[0]
             for stage, tcfg in (("pretrain", train_recipe(cfg, arm, "pretrain")),
                                 ("finetune", train_recipe(cfg, arm, "finetune")))}  # fmt: skip
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = InfiniLlamaForCausalLM(model_config).to(device).train()
        layers = model.config.num_hidden_layers
        # One shape per sequence length, the smaller batch: at these sizes a step's time is close to proportional
        # to its sequences (within about 10% from 8 to 16), and the probe stays short.
        sequences = {stage: tcfg.batch_size * tcfg.accumulation(1) for stage, tcfg in steps.items()}
        answers_only = {"pretrain": False, "finetune": {**cfg.passkey, **arm.passkey}.get("loss") == "answer"}
        shapes = {stage: (tcfg.seq_len, resolve_compile(tcfg.compile, device), tcfg.precision, answers_only[stage])
                  for stage, tcfg in steps.items()}  # fmt: skip
        measured: dict[tuple, tuple[float, int, float | None]] = {}
        for stage in sorted(steps, key=sequences.get):
            if shapes[stage] not in measured:
                seconds, share = _training_step_seconds(model, steps[stage], device, generator, answers_only[stage],
                                                        busy)  # fmt: skip
                measured[shapes[stage]] = (seconds, sequences[stage], share)
        step_seconds = {}
        for stage in steps:
            seconds, probed, _ = measured[shapes[stage]]
            step_seconds[stage] = seconds * sequences[stage] / probed
        shares = [b for _, _, b in measured.values() if b is not None]
        model.eval()
        runner = ChunkedLM(model)
        lengths = eval_lengths(cfg, arm)
        with evaluation_numerics(cfg.eval_precision, device):
            batch = lambda n: _probed(eval_batch(cfg, n, cfg.eval_samples), n, "passkey", device)  # noqa: E731
            _passkey_batch_seconds(runner, batch(min(lengths)), min(lengths), device, generator)  # warm-up
            short, long = training_length(cfg, arm), max(lengths)
            points = tuple((n, _passkey_batch_seconds(runner, batch(n), n, device, generator) / batch(n))
                           for n in dict.fromkeys((short, long)))  # fmt: skip
    del model, runner
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return ArmRates(step_seconds, (points[0], points[-1]), layers, max(shares) if shares else None)


def _training_stage(name: str, tcfg: TrainConfig, step_seconds: float, attention: str, device, run_dir: Path,
                    passes: int = 1) -> Stage:  # fmt: skip
    """`passes`: forward passes over the validation windows per validation (pretraining's text: 2, with the
    copied text; passkey fine-tuning: 1 for the prompts under every labelling, with packing one more on answers at a
    segment boundary and one on needles cut by one)."""
    validations = 1 + (tcfg.steps // tcfg.eval_every if tcfg.eval_every else 0)
    # A validation pass: forward only (about a third of a step's time per sequence) over eval_windows sequences.
    sequences = sequences_per_step(tcfg)
    validation = passes * tcfg.eval_windows * step_seconds / sequences / 3
    compiling = _compiled(COMPILE_SECONDS, device, attention, 0.0) if resolve_compile(tcfg.compile, device) else 0
    seconds = tcfg.steps * step_seconds + validations * validation + compiling
    tokens = sequences * tcfg.seq_len
    return Stage(name, seconds, tcfg.steps, step_seconds, tokens, run_dir)


def arm_estimate(cfg: StudyConfig, arm: Arm, root: Path, rates: ArmRates, device: torch.device,
                 copies_pretraining: bool = False) -> Task:  # fmt: skip
    """Every stage of `arm` (in `arm_stages` order) with its estimated seconds; none for its pretraining if it copies
    another arm's (`arms.pretraining_copies`)."""

    def scored(prompts: int, length: int) -> float:
        """Seconds to score `prompts` prompts of `length` tokens together, a batch left part-empty costing a whole."""
        batch = eval_batch(cfg, length, prompts)
        return math.ceil(prompts / batch) * batch * rates.eval_prompt(length)

    one_grid = lambda n: len(cfg.eval_depths) * scored(cfg.eval_samples, n)  # noqa: E731  # a batch holds one cell
    grid = sum(one_grid(n) for n in eval_lengths(cfg, arm))
    costs: dict[str, Stage] = {}
    pretrain = train_recipe(cfg, arm, "pretrain")
    if not copies_pretraining:
        costs["pretrain"] = _training_stage("pretrain", pretrain, rates.step_seconds["pretrain"], arm.attention,
                                            device, root / "pretrain", passes=2)  # fmt: skip
    else:  # a copy of an earlier arm's pretraining
        costs["pretrain"] = Stage("pretrain", 0.0)
    # The validation and the answers' tokens one by one, in one pass (`summed_losses`); with packing, the answers at
    # a segment boundary and the needles cut by one.
    data = {**cfg.passkey, **arm.passkey}
    passes = 1 + 2 * (data.get("pack_min_len") != 0)
    for lr in candidate_lrs(cfg, arm):
        name = finetune_dir(root, lr).name
        costs[name] = _training_stage(name, finetune_recipe(cfg, arm, lr), rates.step_seconds["finetune"],
                                      arm.attention, device, finetune_dir(root, lr), passes=passes)  # fmt: skip
    selection = scored(cfg.selection_samples, selection_length(cfg, arm))
    costs["select"] = Stage("select", len(candidate_lrs(cfg, arm)) * selection)
    for haystack in cfg.eval_haystacks:
        for task in passkey_tasks(cfg, arm):
            costs[f"{task}-{haystack}"] = Stage(f"{task}-{haystack}", grid)
    # Perplexity reads whole windows at the longest length and projects every position onto the vocabulary.
    longest = max(eval_lengths(cfg, arm))
    costs["perplexity"] = Stage("perplexity", 1.5 * scored(cfg.perplexity_windows, longest))
    costs["gates"] = Stage("gates", 0.0)
    if cfg.layer_off_multiple is not None:
        costs["layers-off"] = Stage("layers-off", rates.layers * one_grid(layer_off_length(cfg, arm)))
    names = [name for name, _ in arm_stages(cfg, arm, root, str(device), progress=False)]
    return Task(arm.name, root, [costs.get(name, Stage(name, 0.0)) for name in names])


# Arms that share one GPU interleave their kernels rather than run side by side. On one H200, `mini` arms two at a
# time finished 1.35x sooner than one after another, four at a time 2.0x, nine arms five at a time 1.55x
# (reports/mini-recipe/, reports/mini-1500/). Counting every job at the speed of one arm alone, the estimate had
# said 468, 823 and 1,073 s would take 413, 542 and 504 s; counting two per GPU, 428, 854 and 921 s. Counting two
# per GPU, it said 1,548 s for nine arms at once, which took 1,350 (reports/mini/). The 302M model keeps the GPU
# busy on its own: two of its fine-tunings side by side ran at 124K tokens/s each, one alone at 264K, and counting
# two per GPU the estimate said 537 s for a run that took 961 (reports/paper-h200-screen/). So the estimate before
# the start counts as many arms per GPU at the speed of one alone as their probed steps leave room for: the nearest
# whole number to 1 / their mean GPU busy share (arms side by side fill each other's idle time, so it is their sum
# that has to fit the GPU), at most ARMS_PER_GPU. Counting the busiest arm's share alone, one H100 ran three `mini`
# arms (61%, 74% and 64% busy: counted as one at full speed, 1,539 s) in 834 s; their mean counts two, 948 s
# (reports/mini-6000/). Once stages have run, the study's ETA scales its arms by their measured times instead,
# which hold the sharing.
ARMS_PER_GPU = 2


def lanes(jobs: int, gpus: int, busy: float | None = None) -> int:
    """How many of `jobs` arms at once the estimate counts at full speed: all of them on CPU (`gpus` 0); per GPU
    the nearest whole number to 1 / `busy` (the mean over the arms of the GPU's busy share of a training step),
    from 1 to ARMS_PER_GPU, or ARMS_PER_GPU where `busy` was not measured."""
    if gpus <= 0:
        return jobs
    per_gpu = ARMS_PER_GPU if not busy else max(1, min(ARMS_PER_GPU, round(1 / busy)))
    return max(1, min(jobs, gpus * per_gpu))


def lanes_seconds(task_seconds: list[float], jobs: int, busy: list[float] | None = None) -> float:
    """When the last of `jobs` workers finishes: tasks start in order, each on the first worker free; `busy` holds
    the time the workers still need for the tasks they run now."""
    lanes = sorted((busy or []) + [0.0] * max(0, jobs - len(busy or [])))[:jobs] or [0.0]
    for seconds in task_seconds:
        lanes[lanes.index(min(lanes))] += seconds
    return max(lanes)


def duration(seconds: float) -> str:
    """ "1 h 02 min", "12 min 05 s", "40 s"."""
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def estimate_study(tasks: list[tuple[StudyConfig, Arm, Path]], jobs: int, device: str,
                   threads: int, gpus: int = 0) -> tuple[list[Task], dict]:  # fmt: skip
    """Probe every distinct arm model (`threads` CPU threads each, as the workers will have) and estimate every
    task, `jobs` at once over `gpus` GPUs (0: on CPU); returns the tasks' estimates and a record of the estimate
    (host, probe rates, seconds)."""
    on = probe_device(device)
    began = time.perf_counter()
    rates: dict[str, ArmRates] = {}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for seed_cfg, arm, _ in tasks:
            if arm.name not in rates:
                # How busy a step keeps the GPU matters only to arms that share one (and profiling is kept out of
                # a process that then trains on the GPU itself).
                rates[arm.name] = probe_arm(seed_cfg, arm, on, busy=0 < gpus < jobs)
    finally:
        torch.set_num_threads(before)
    estimates, copies = [], pretraining_copies(tasks)
    for t, (seed_cfg, arm, out) in enumerate(tasks):
        task = arm_estimate(seed_cfg, arm, out / arm.name, rates[arm.name], on, copies_pretraining=t in copies)
        task.label = f"{out.name}/{arm.name}" if out.name == f"seed-{seed_cfg.seed}" else arm.name
        estimates.append(task)
    seeds = len({out for _, _, out in tasks})
    shares = [rates[arm.name].gpu_busy for _, arm, _ in tasks if rates[arm.name].gpu_busy is not None]
    busy = sum(shares) / len(shares) if shares else None
    total = lanes_seconds([t.seconds for t in estimates], lanes(jobs, gpus, busy)) + seeds * REPORT_SECONDS
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": describe_cpu() if on.type == "cpu" else {**describe_cpu(), "gpu": torch.cuda.get_device_name(on)},
        "device": str(on), "jobs": jobs, "gpus": gpus, "lanes": lanes(jobs, gpus, busy), "threads_per_arm": threads,
        "gpu_busy": None if busy is None else round(busy, 3),
        "probe_seconds": round(time.perf_counter() - began, 2),
        "estimated_seconds": round(total, 1),
        "rates": {name: {"step_seconds": r.step_seconds, "passkey_prompt_seconds": dict(r.eval_points),
                         "gpu_busy": r.gpu_busy}
                  for name, r in rates.items()},
        "tasks": {t.label: {s.name: round(s.seconds, 1) for s in t.stages} for t in estimates},
    }  # fmt: skip
    return estimates, record


def estimate_lines(estimates: list[Task], record: dict) -> list[str]:
    """What the study prints before it starts."""
    on = record["host"].get("gpu") or cpu_summary(record["host"])
    sharing = ""
    if record.get("gpu_busy") is not None and record["jobs"] > record["lanes"]:
        sharing = (f", counted as {record['lanes']} at full speed (a training step keeps the GPU "
                   f"{record['gpu_busy']:.0%} busy, the arms' mean)")  # fmt: skip
    lines = [
        f"[study] estimated time on this host ({on}): about {duration(record['estimated_seconds'])} for "
        f"{len(estimates)} arms, {record['jobs']} at a time{sharing} (probe: {record['probe_seconds']:.1f} s; "
        "--no-estimate skips it)"
    ]
    arms = {task.label.rpartition("/")[2]: task for task in reversed(estimates)}  # every seed's arm costs the same
    each = " (each seed)" if len(arms) < len(estimates) else ""
    for name, task in reversed(arms.items()):
        groups: dict[str, float] = {}
        for stage in task.stages:
            groups[stage_group(stage.name)] = groups.get(stage_group(stage.name), 0.0) + stage.seconds
        parts = ", ".join(f"{group} {duration(seconds)}" for group, seconds in groups.items())
        lines.append(f"[study]   {name}{each}: {parts}")
    return lines


def _clamp(ratio: float) -> float:
    """A measured / estimated time ratio, kept within reason (a stage that took 0 s, a host paused for hours)."""
    return min(max(ratio, 0.2), 5.0)


RATE_WINDOWS = 5  # logged windows whose median speed stands for a training stage under way
TAIL_BYTES = 16384  # of a run's metrics.jsonl read for it


def _training_progress(run_dir: Path) -> tuple[int, float] | None:
    """(last logged step, tokens/s) of a training run under way, from the end of its metrics.jsonl; None before it
    has logged a window past its first. The speed is the median of the last RATE_WINDOWS logged windows, without
    the run's first (it holds compilation): one window slowed by a validation or a checkpoint (or sped up) moves
    the whole study's estimate, since every stage still to run is scaled by it."""
    path = run_dir / METRICS_FILE
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - TAIL_BYTES))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "train" and record.get("tokens_per_s"):
            records.append(record)
    if size <= TAIL_BYTES:  # the file was read from its start: its first window is the run's first
        records = records[1:]
    if not records:
        return None
    return records[-1]["step"], statistics.median(r["tokens_per_s"] for r in records[-RATE_WINDOWS:])


class StudyClock:
    """The whole study's time left, from the study folder and the estimates (`tasks` in the order they run).

    A stage's estimate is scaled by how its task runs against the probe: the measured speed of the training stage
    under way, else the finished stages' time against their estimates, else (a task not started) that of the others.
    """

    def __init__(self, tasks: list[Task], jobs: int, report_seconds: float) -> None:
        self.tasks, self.jobs, self.report_seconds = tasks, jobs, report_seconds
        self.started = time.time()

    @staticmethod
    def _finished(task: Task) -> tuple[float, float]:
        """(seconds taken, seconds estimated) of the task's finished stages."""
        actual = planned = 0.0
        for stage in task.stages:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                actual += json.loads((task.root / f"{stage.name}.done").read_text())["seconds"]
                planned += stage.seconds
        return actual, planned

    def _task_left(self, task: Task, running: bool, fallback: float) -> tuple[float, float | None]:
        """(seconds left, this task's measured / estimated time, None if nothing of it was measured yet)."""
        actual, planned = self._finished(task)
        ratio = _clamp(actual / planned) if actual > 0 and planned > 0 else None
        left, current = 0.0, running
        for stage in task.stages:
            if (task.root / f"{stage.name}.done").is_file():
                continue
            if current:  # the stage under way
                current = False
                progress = _training_progress(stage.run_dir) if stage.run_dir is not None else None
                if progress is not None and stage.steps and stage.step_seconds:
                    step, tokens_per_s = progress
                    measured = stage.tokens_per_step / tokens_per_s
                    ratio = _clamp(measured / stage.step_seconds)
                    done = min(step, stage.steps)
                    fixed = stage.seconds - stage.steps * stage.step_seconds  # validation and compiling
                    left += (stage.steps - done) * measured + fixed * ratio * (1 - done / stage.steps)
                    continue
                since = max([self.started] + [m.stat().st_mtime for m in task.root.glob("*.done")])
                expected = stage.seconds * (ratio or fallback)
                left += max(expected - (time.time() - since), 0.05 * expected)
                continue
            left += stage.seconds * (ratio or fallback)
        return left, ratio

    def seconds_left(self) -> float:
        finished = [self._finished(task) for task in self.tasks]
        actual, planned = sum(a for a, _ in finished), sum(p for _, p in finished)
        overall = _clamp(actual / planned) if actual > 0 and planned > 0 else 1.0
        unfinished = [t for t in self.tasks if not all((t.root / f"{s.name}.done").is_file() for s in t.stages)]
        running, waiting = unfinished[: self.jobs], unfinished[self.jobs :]
        busy, ratios = [], []
        for task in running:
            left, ratio = self._task_left(task, running=True, fallback=overall)
            busy.append(left)
            if ratio is not None:
                ratios.append(ratio)
        scale = sum(ratios) / len(ratios) if ratios else overall
        pending = [self._task_left(task, running=False, fallback=scale)[0] for task in waiting]
        reports = len({t.root.parent for t in self.tasks})
        return lanes_seconds(pending, self.jobs, busy) + reports * self.report_seconds

    def line(self) -> str:
        left = self.seconds_left()
        elapsed = time.time() - self.started
        finish = datetime.now(timezone.utc) + timedelta(seconds=left)
        done = 100 * elapsed / max(elapsed + left, 1e-9)
        return f"[study] whole study: {done:.0f}% done, about {duration(left)} left (ETA {finish:%H:%M} UTC)"


@contextlib.contextmanager
def study_eta(tasks: list[Task] | None, jobs: int, every_s: float | None = None) -> Iterator[StudyClock | None]:
    """While the block runs, print the whole study's time left every `every_s` seconds (default ETA_EVERY_S), above
    any progress bar; nothing without estimates."""
    if not tasks:
        yield None
        return
    every_s = ETA_EVERY_S if every_s is None else every_s
    clock = StudyClock(tasks, jobs, REPORT_SECONDS)
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(Exception):  # a line of progress is never worth failing the study for
                tqdm.write(clock.line())

    thread = threading.Thread(target=report, name="study-eta", daemon=True)
    thread.start()
    try:
        yield clock
    finally:
        stop.set()
        thread.join(timeout=5)


def announce_estimate(tasks: list[tuple[StudyConfig, Arm, Path]], out: Path, jobs: int, device: str,
                      gpus: int = 0) -> list[Task]:  # fmt: skip
    """Probe this host, print the study's estimated duration (the time left, for a study continued) and write it
    to `out`/estimate.json, `jobs` arms at once over `gpus` GPUs (0: on CPU); returns the tasks' estimates for
    `study_eta`, or [] when every stage is done already."""
    unfinished = [
        (seed_cfg, arm, seed_out) for seed_cfg, arm, seed_out in tasks
        if not all((seed_out / arm.name / f"{name}.done").is_file()
                   for name, _ in arm_stages(seed_cfg, arm, seed_out / arm.name, device, progress=False))
    ]  # fmt: skip
    if not unfinished:
        return []
    threads = max(1, torch.get_num_threads() // jobs) if jobs > 1 else torch.get_num_threads()
    models = len({arm.name for _, arm, _ in tasks})
    print(f"[study] timing {models} arm model(s) on {probe_device(device)} to estimate the study's duration "
          "(--no-estimate skips this) ...", flush=True)  # fmt: skip
    try:
        estimates, record = estimate_study(tasks, jobs, device, threads, gpus)
    except Exception as exc:  # e.g. out of memory without the run's activation checkpointing: the study runs on
        print(f"[study] no estimate of the study's duration: the probe failed ({type(exc).__name__}: {exc})")
        return []
    lines = estimate_lines(estimates, record)
    if any((task.root / f"{stage.name}.done").is_file() for task in estimates for stage in task.stages):
        left = StudyClock(estimates, jobs, REPORT_SECONDS).seconds_left()
        record["left_seconds"] = round(left, 1)
        lines.insert(1, f"[study] continued: about {duration(left)} left")
    print("\n".join(lines), flush=True)
    (out / ESTIMATE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return estimates
