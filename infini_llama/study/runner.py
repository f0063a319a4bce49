"""Run a study: every arm of every seed through its stages (`study.stages`), arms in parallel processes, then the
reports.

Layout of the study folder (a single-seed study; a multi-seed study holds one such folder per seed, seed-<s>/,
beside its own study.json, REPORT.md and results.json of the numbers across seeds):

    study.json                  the resolved StudyConfig; a folder holding another study is refused
    <arm>/                      the arm's runs, evaluations and stage markers (see `study.stages`)
    report/                     the evaluation report (report.md, report.json, PNG figures)
    REPORT.md, results.json     the study's report and its numbers

Every stage is itself resumable (training from its last checkpoint, evaluation grids from their last finished
cell), so a study killed anywhere continues where it stopped when run again with the same arguments.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import io
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from infini_llama.eval import build_report
from infini_llama.host import busy_warning
from infini_llama.study.arms import Arm, expand_arms, pretraining_copies
from infini_llama.study.config import StudyConfig
from infini_llama.study.estimate import announce_estimate, study_eta
from infini_llama.study.report import write_across_report, write_seed_report
from infini_llama.study.results import across_seeds, dumps, seed_results
from infini_llama.study.stages import FINETUNE_PREFIX, arm_stages
from infini_llama.study.summary import summary_table
from infini_llama.train import hf_progress_bars_off
from infini_llama.train.rundir import clear_folder, folder_listing

STUDY_FILE = "study.json"


class StudyError(ValueError):
    """A study that cannot run as asked; the message says what to do."""


def seed_studies(cfg: StudyConfig, out: Path) -> list[tuple[StudyConfig, Path]]:
    """(single-seed config, folder) of every seed: the study folder itself for one seed, seed-<s>/ for several."""
    if len(cfg.seeds) == 1:
        return [(cfg, out)]
    return [(dataclasses.replace(cfg, seeds=(seed,)), out / f"seed-{seed}") for seed in cfg.seeds]


def run_study(cfg: StudyConfig, out: str | Path, *, overwrite: bool = False, device: str = "auto",
              progress: bool = True, jobs: int | None = None, command: str | None = None,
              estimate: bool = True, arms: Sequence[str] | None = None,
              report_only: bool = False, estimate_only: bool = False) -> Path | None:  # fmt: skip
    """Run (or continue) the study `cfg` in the folder `out`; returns the path of REPORT.md.

    Every (seed, arm) is a task; `jobs` tasks run at once, each in its own process with an equal share of the CPU
    threads (default: on CPU as many as there are tasks and cores, since the small CPU models gain little from a
    second thread; on GPUs one per GPU, so arms do not compete for one GPU's memory). An LR grid's fine-tunings are
    separate jobs (`stage_phases`), so up to one per LR of each arm can run at once. With several GPUs each worker
    process keeps one GPU (worker i the i-th, modulo their number), so `jobs` a multiple of the GPUs spreads the
    arms evenly. Progress bars are shown only when one task runs at a time. `command`, the command line that ran
    the study, is written into the reports. With `estimate`, a short probe first prints how long the study will take
    on this host (written to estimate.json), and the whole study's time left is printed as it runs.

    `arms` (names as the study gives them: "infini", "full", ...) runs those arms only, of every seed (with several
    seeds, "seed-1/infini" or "seed-1/*" names one seed's): a study can be split over machines or GPU leases, each
    running some arms into a folder of its own; their arm folders copied into one study folder (stage markers,
    evaluations and metrics; no model weights are needed once every stage is done) are reported with `report_only`,
    which trains and evaluates nothing and refuses a study with an arm unfinished; with `arms` too it reports those
    arms alone (a screen's arms finished so far), the reports naming the arms left out.
    `estimate_only` prints (and writes) the estimate of the chosen arms' stages left and stops there, training
    nothing: whether a run fits a GPU lease, before the lease is spent on it. The reports are written when every arm
    of every seed has finished; otherwise None is returned."""
    out = Path(out)
    if estimate_only and (report_only or not estimate):
        raise StudyError("--estimate-only prints the estimate and trains nothing: drop "
                         + ("--report-only" if report_only else "--no-estimate"))  # fmt: skip
    studies = seed_studies(cfg, out)
    every_task = [(seed_cfg, arm, seed_out) for seed_cfg, seed_out in studies for arm in expand_arms(seed_cfg)]
    tasks = _chosen_tasks(every_task, arms)
    if report_only and (overwrite or not (out / STUDY_FILE).is_file()):
        raise StudyError(
            f"--report-only reports the arms of the study in {str(out)!r}"
            + (", which --overwrite would delete" if overwrite else "")
            + ("" if (out / STUDY_FILE).is_file() else f", which holds no study (no {STUDY_FILE})")
        )
    _claim_folder(out, cfg, overwrite)
    if len(studies) > 1:  # each seed's folder is a study of its own (resumable, refused if it holds another)
        for seed_cfg, seed_out in studies:
            _claim_folder(seed_out, seed_cfg, overwrite=False)
    if report_only:
        unfinished = _unfinished(tasks, device)
        if unfinished:
            raise StudyError(
                f"cannot report {str(out)!r}: {'; '.join(unfinished)}. Run those arms (--arms), copy their folders "
                "into this study's folder, and report again"
                + ("" if arms is None else "; or leave them out of --arms for a report of the others")
            )
        chosen = None if arms is None else {arm.name for _, arm, _ in tasks}
        per_seed = [{arm.name for _, arm, seed_out in tasks if seed_out == folder} for _, folder in studies]
        if chosen is not None and any(names != chosen for names in per_seed):
            raise StudyError(
                "--report-only --arms reports the same arms of every seed; to report one seed's arms, report its "
                f"folder as a study of that seed: --seeds <s> --out {out / 'seed-<s>'}"
            )
        return _write_reports(cfg, out, studies, command, time.time(), chosen)
    jobs = default_jobs(len(tasks), device) if jobs is None else jobs
    if jobs < 1:
        raise StudyError(f"jobs must be at least 1, got {jobs}")
    # At most as many as can run at once: one per arm, or per LR of a grid's fine-tunings.
    jobs = min(jobs, sum(max(map(len, stage_phases(*task, device))) for task in tasks))
    gpus = visible_gpus() if device in ("auto", "cuda") and uses_gpu(device) else []  # not for "cuda:1"
    gpu_count = len(gpus) or int(uses_gpu(device))
    if not gpu_count and (busy := busy_warning(torch.get_num_threads())):
        print(f"[study] warning: {busy}", flush=True)
    estimates = announce_estimate(tasks, out, jobs, device, gpu_count) if estimate else []
    if estimate_only:
        if not estimates and not _unfinished(tasks, device):  # (a probe that failed has said so)
            print("[study] nothing to estimate: every stage of these arms is done", flush=True)
        return None
    started = time.time()
    with study_eta(estimates, jobs):  # the whole study's time left, every half minute
        if jobs == 1:
            for seed_cfg, arm, seed_out in tasks:
                _run_arm(seed_cfg, arm, seed_out, device, progress)
        else:
            threads = max(1, torch.get_num_threads() // jobs)
            where = f" over {len(gpus)} GPUs" if len(gpus) > 1 else ""
            print(f"[study] {len(tasks)} arms, {jobs} at a time{where}, {threads} CPU thread(s) each", flush=True)
            context = multiprocessing.get_context("spawn")
            counter = context.Value("i", 0)
            pool = ProcessPoolExecutor(
                jobs, mp_context=context, initializer=_init_worker, initargs=(counter, gpus, os.getpid())
            )
            with pool:
                _run_parallel(pool, tasks, jobs, device, threads)
    unfinished = _unfinished(every_task, device)
    if unfinished:
        print(f"[study] arms run here are done; the report waits for: {'; '.join(unfinished)}. Run them (--arms), "
              f"copy their folders into {out}, and report with --report-only", flush=True)  # fmt: skip
        return None
    return _write_reports(cfg, out, studies, command, started)


def stage_phases(cfg: StudyConfig, arm: Arm, out: Path, device: str) -> list[list[list[str]]]:
    """The stages of `arm` as phases run one after another, each phase a list of units whose stages run in order
    and whose units are independent: pretraining is the first phase (another arm may start from it); the
    fine-tunings at the LRs of a grid are one phase of one unit per LR, so a parallel study runs them at once; the
    stages after them are a phase of one unit."""
    names = [name for name, _ in arm_stages(cfg, arm, out / arm.name, device, False)]
    tunes = [i for i, name in enumerate(names) if name.startswith(FINETUNE_PREFIX)]
    if len(tunes) < 2:
        return [[names[:1]], [names[1:]]]
    first, last = tunes[0], tunes[-1] + 1
    phases = [[names[:1]], [names[1:first]], [[name] for name in names[first:last]], [names[last:]]]
    return [phase for phase in phases if phase != [[]]]


def _run_parallel(pool: ProcessPoolExecutor, tasks: list, jobs: int, device: str, threads: int) -> None:
    """Every task's phases (`stage_phases`) through `pool`, at most `jobs` units at a time. A free worker takes a
    ready unit of the earliest task, so the arms go through their stages in the order of `tasks` as before, and
    an LR grid's fine-tunings fill the workers no earlier arm needs. An arm whose pretraining is an earlier arm's
    of the same seed folder (`pretraining_copies`) starts once that arm's pretraining is done, and copies it."""
    phases = [stage_phases(cfg, arm, out, device) for cfg, arm, out in tasks]
    current, left = [0] * len(tasks), [len(p[0]) for p in phases]
    waits = pretraining_copies(tasks)  # task -> the task whose pretraining it copies
    ready = [(t, unit) for t, p in enumerate(phases) for unit in p[0] if t not in waits]
    running: dict = {}
    while ready or running:
        while ready and len(running) < jobs:
            t, unit = ready.pop(0)
            cfg, arm, out = tasks[t]
            running[pool.submit(_run_arm, cfg, arm, out, device, False, threads, unit)] = t
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            t = running.pop(future)
            try:
                future.result()
            except BaseException as exc:
                # Say so now, not after every other arm: units not yet started are dropped, running ones finish.
                print(f"[study] an arm failed ({type(exc).__name__}); waiting for the running arms", flush=True)
                wait(running)
                raise
            left[t] -= 1
            if not left[t] and current[t] == 0:  # pretrained: the arms that copy it can start
                ready.extend((w, unit) for w, source in waits.items() if source == t for unit in phases[w][0])
            if not left[t] and current[t] + 1 < len(phases[t]):
                current[t] += 1
                left[t] = len(phases[t][current[t]])
                ready.extend((t, unit) for unit in phases[t][current[t]])
            ready.sort(key=lambda item: item[0])  # stable: the units of one task keep their order


def _task_names(task) -> tuple[str, ...]:
    """The names `--arms` knows a task by: its arm's, and in a study of several seeds also `seed-<s>/<arm>`."""
    seed_cfg, arm, seed_out = task
    return (arm.name, f"{seed_out.name}/{arm.name}") if seed_out.name == f"seed-{seed_cfg.seed}" else (arm.name,)


def _chosen_tasks(tasks: list, names: Sequence[str] | None) -> list:
    """The tasks of the arms named, each name an arm's or a shell-style pattern (`infini*`: every Infini arm of a
    sweep), of every seed, or with several seeds one seed's (`seed-1/infini`, `seed-1/*`); all of them for None. A
    name that matches no arm is refused with the study's names."""
    if names is None:
        return tasks

    def chosen(task, name: str) -> bool:
        return any(fnmatch.fnmatchcase(known, name) for known in _task_names(task))

    unknown = [name for name in names if not any(chosen(task, name) for task in tasks)]
    if unknown or not names:
        known = ", ".join(dict.fromkeys(arm.name for _, arm, _ in tasks))
        seeds = " (of every seed; seed-<s>/<arm> for one seed's)" if len(_task_names(tasks[0])) > 1 else ""
        raise StudyError(f"--arms: unknown arm(s) {unknown or list(names)}; this study's arms are {known}{seeds}")
    return [task for task in tasks if any(chosen(task, name) for name in names)]


def _unfinished(tasks: list, device: str) -> list[str]:
    """'<seed folder>/<arm>: <stages>' for every arm with stages not yet done (no `<stage>.done` marker)."""
    missing = []
    for seed_cfg, arm, seed_out in tasks:
        stages = [name for name, _ in arm_stages(seed_cfg, arm, seed_out / arm.name, device, False)]
        left = [name for name in stages if not (seed_out / arm.name / f"{name}.done").exists()]
        if left:
            where = f"{seed_out.name}/{arm.name}" if seed_out.name == f"seed-{seed_cfg.seed}" else arm.name
            missing.append(f"{where} has {len(left)} of {len(stages)} stages left ({', '.join(left[:3])}"
                           f"{', ...' if len(left) > 3 else ''})")  # fmt: skip
    return missing


def _write_reports(cfg: StudyConfig, out: Path, studies: list, command: str | None, started: float,
                   chosen: set[str] | None = None) -> Path:  # fmt: skip
    """Every seed's report, the report across seeds (several seeds) and the summary table, of the arms in `chosen`
    (all of them for None); returns REPORT.md."""
    per_seed = {seed_cfg.seed: _seed_report(seed_cfg, seed_out, command, chosen) for seed_cfg, seed_out in studies}
    path = out / "REPORT.md"
    if len(studies) > 1:
        summary = across_seeds(cfg, per_seed)
        summary["left_out"] = per_seed[cfg.seeds[0]]["left_out"]
        (out / "results.json").write_text(dumps(summary))
        write_across_report(cfg, out, summary, command)
    print(summary_table(summary if len(studies) > 1 else per_seed[cfg.seeds[0]]), flush=True)
    print(f"[study] done in {time.time() - started:.0f} s this run; report: {path}")
    return path


def _seed_report(cfg: StudyConfig, out: Path, command: str | None, chosen: set[str] | None = None) -> dict:
    """Write report/, results.json and REPORT.md of the single-seed study in `out` (of the arms in `chosen`; all of
    them for None); return its numbers."""
    arms = [arm for arm in expand_arms(cfg) if chosen is None or arm.name in chosen]
    eval_dirs = [d for arm in arms for d in sorted((out / arm.name / "eval").iterdir()) if d.is_dir()]
    build_report(eval_dirs, out / "report")
    results = seed_results(cfg, arms, out)
    results["left_out"] = [arm.name for arm in expand_arms(cfg) if chosen is not None and arm.name not in chosen]
    (out / "results.json").write_text(dumps(results))
    write_seed_report(cfg, out, results, command)
    return results


def uses_gpu(device: str) -> bool:
    """Whether the study's `device` setting runs on CUDA."""
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them (indices if it is unset)."""
    names = os.environ.get("CUDA_VISIBLE_DEVICES")
    if names is not None:
        return [name.strip() for name in names.split(",") if name.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def default_jobs(arms: int, device: str) -> int:
    """Arms to run at once: one per CPU core on CPU, one per GPU on GPUs (at most one per arm)."""
    if uses_gpu(device):
        return max(1, min(arms, len(visible_gpus()) if device in ("auto", "cuda") else 1))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(arms, cores))


def _init_worker(counter, gpus: list[str], parent: int) -> None:
    """Pool initializer: this worker's GPU (`_pin_gpu`), and its end with the study's process (`_stop_with_parent`)."""
    _pin_gpu(counter, gpus)
    _stop_with_parent(parent)


def _stop_with_parent(parent: int, every_s: float = 1.0, grace_s: float = 120.0) -> threading.Thread:
    """Stop this worker when the process `parent` is gone (killed, or ended by SIGTERM, which only it receives):
    SIGTERM to itself, so that a training stage finishes its step and writes a checkpoint (the study resumes from
    it), then, should it still run after `grace_s`, an exit. Without it a worker would train its stage to the end
    for nobody."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def _pin_gpu(counter, gpus: list[str]) -> None:
    """Pool initializer: give this worker process the next of `gpus` (round robin) as its only visible GPU, before
    anything in it touches CUDA. Nothing to do with fewer than two GPUs."""
    if len(gpus) < 2:
        return
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]


def _run_arm(
    cfg: StudyConfig,
    arm: Arm,
    out: Path,
    device: str,
    progress: bool,
    threads: int | None = None,
    stages: Sequence[str] | None = None,
) -> None:
    """Every unfinished stage of `arm` (of `stages` only, if given), in order; a `<stage>.done` marker records each
    finished one."""
    if threads is not None:  # a worker process of a parallel study: tell the arms' output lines apart
        torch.set_num_threads(threads)
        name = f"{out.name}/{arm.name}" if out.name == f"seed-{cfg.seed}" else arm.name
        prefix_stdout(f"[{name}] ")
    for stage, run in arm_stages(cfg, arm, out / arm.name, device, progress):
        if stages is not None and stage not in stages:
            continue
        marker = out / arm.name / f"{stage}.done"
        if marker.exists():
            print(f"[study] {arm.name}: {stage} already done", flush=True)
            continue
        print(f"[study] {arm.name}: {stage} ...", flush=True)
        t0 = time.time()
        with hf_progress_bars_off():  # the stages' own bars and status lines say where they are
            info = run() or {}
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"seconds": time.time() - t0, **info}, indent=2) + "\n")
        print(f"[study] {arm.name}: {stage} done in {time.time() - t0:.0f} s", flush=True)


def prefix_stdout(prefix: str) -> None:
    """Start every line printed from now on with `prefix`, replacing the prefix of an earlier arm that ran in this
    worker process (a pool reuses its workers)."""
    base = sys.stdout.stream if isinstance(sys.stdout, _LinePrefix) else sys.stdout
    sys.stdout = _LinePrefix(base, prefix)


class _LinePrefix(io.TextIOBase):
    """A text stream that writes `prefix` at the start of every line into `stream`."""

    def __init__(self, stream, prefix: str):
        self.stream, self.prefix, self.at_line_start = stream, prefix, True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self.at_line_start and not piece.startswith("[study]"):
                self.stream.write(self.prefix)
            self.stream.write(piece)
            self.at_line_start = piece.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _study_folders(cfg: StudyConfig) -> set[str]:
    """The folders a study keeps its arms in: one per seed (`seed-<s>`) for several seeds, else one per arm."""
    if len(cfg.seeds) > 1:
        return {f"seed-{seed}" for seed in cfg.seeds}
    return {arm.name for arm in expand_arms(cfg)}


def _adds_seeds(saved: list[int], wanted: list[int]) -> bool:
    """Whether `wanted` only adds seeds to a study of several: its seed folders stay as they are. (A study of one seed
    keeps its arms without seed folders, so it cannot grow into several.)"""
    return len(saved) > 1 and set(saved) < set(wanted)


def _claim_folder(out: Path, cfg: StudyConfig, overwrite: bool) -> None:
    """Refuse a folder that holds something else or another study; record this study's config. A folder that holds
    only folders of this study's arms (copied in from another study's run, e.g. a screen's grid widened) is claimed.
    A study of several seeds can be given more (`--seeds 0,1` continued with `--seeds 0,1,2`), nothing else changed.
    `overwrite` deletes only a folder holding a study (its study.json), as `train --overwrite` deletes only a run
    (`clear_folder`)."""
    wanted = json.loads(json.dumps(dataclasses.asdict(cfg)))
    file = out / STUDY_FILE
    if file.is_file():
        # A field added to StudyConfig after the study started reads as its default (the study ran without it).
        defaults = {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(StudyConfig)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }
        saved = {**json.loads(json.dumps(defaults)), **json.loads(file.read_text())}
        changed = sorted(k for k in wanted.keys() | saved.keys() if wanted.get(k) != saved.get(k))
        if changed == ["seeds"] and not overwrite and _adds_seeds(saved["seeds"], wanted["seeds"]):
            added = ", ".join(str(seed) for seed in wanted["seeds"] if seed not in saved["seeds"])
            print(f"[study] adding seed(s) {added} to the study in {str(out)!r}", flush=True)
        elif changed and not overwrite:
            raise StudyError(
                f"{str(out)!r} holds a study with a different config (differs in: {', '.join(changed)}); run it "
                "with the same arguments to continue it, pass --overwrite to start over, or choose another --out"
            )
        if not changed:
            return
    elif out.exists() and not out.is_dir():
        raise StudyError(f"--out {str(out)!r} is a file; pass a folder for the study")
    elif out.exists() and any(entry.name not in _study_folders(cfg) or not entry.is_dir() for entry in out.iterdir()):
        raise StudyError(
            f"{str(out)!r} is not empty and holds no study (no {STUDY_FILE}; it holds {folder_listing(out)}); "
            + ("--overwrite deletes only a study's folder; " if overwrite else "")
            + "choose a new or empty folder"
        )
    if overwrite and file.is_file():
        try:
            clear_folder(out, STUDY_FILE, "a study")
        except ValueError as exc:
            raise StudyError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(wanted, indent=2) + "\n")
