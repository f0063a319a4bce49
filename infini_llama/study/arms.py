"""The arms of a study: Infini-attention and the full-attention baseline (and, with `control_arm`, the segment-local
control), for every combination of sweep values, and once more for each ablation (a set of values changed
together, each ablation on its own: `gate_init=2`, `pretrain.gate_lr=none+finetune.gate_lr=none`).

Sweep keys name what they change: a model field (`segment_len`, `memory_update`, ...), `seed` (everything that is
seeded: pretraining, fine-tuning data and its key exclusion, the evaluation grid), or a training value of one
stage, `pretrain.<field>` or `finetune.<field>` (`pretrain.lr`, `finetune.gate_lr`, ...): a bare `lr` would say
neither, and a value given to one stage must not silently change the other; or an option of the passkey
fine-tuning data (`passkey.curriculum_steps`, `passkey.loss`). A sweep over a value the baseline does
not have (`segment_len`, `memory_update`, `gate_activation`, `pretrain.gate_lr`, ...) multiplies the Infini arm
and leaves one baseline; any other sweep is given to both arms. The local control (Infini-attention's local
attention with no memory and no gate) follows the baseline, but shares the Infini arm's segments: a `segment_len`
sweep multiplies it too, every other Infini-only sweep leaves one control.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infini_llama.models.presets import CONFIG_FIELDS
from infini_llama.study.config import StudyConfig
from infini_llama.study.sweeps import STAGES

# Values that change nothing for the full-attention baseline (training values: the field after the stage).
INFINI_ONLY = frozenset(
    {"segment_len", "memory_update", "gate_activation", "gate_init", "gate_trainable", "memory_rope", "bptt", "gate_lr"}
)
# Infini-only values the local control shares with the Infini arm.
LOCAL_SHARES = frozenset({"segment_len"})


@dataclass(frozen=True)
class Arm:
    """One trained model of a study: a name, its attention, the seed of everything it does, its model overrides
    and the training overrides of each stage (on top of the study's)."""

    name: str
    attention: str
    seed: int
    model: dict[str, Any]
    pretrain: dict[str, Any]
    finetune: dict[str, Any]
    passkey: dict[str, Any] = field(default_factory=dict)  # passkey fine-tuning data options

    def shared_key(self, keep: frozenset[str] = frozenset()) -> tuple:
        """What this arm shares with its counterpart of another attention: every choice but the Infini-only ones
        (except those in `keep`)."""

        def shared(values: dict[str, Any]) -> tuple:
            return tuple(sorted((k, v) for k, v in values.items() if k not in INFINI_ONLY - keep))

        return self.seed, shared(self.model), shared(self.pretrain), shared(self.finetune), shared(self.passkey)


def _sweep_field(key: str) -> str:
    return key.partition(".")[2] or key


def _applies(key: str, attention: str) -> bool:
    """Whether sweep `key` changes an arm of `attention`."""
    field = _sweep_field(key)
    return attention == "infini" or field not in INFINI_ONLY or (attention == "local" and field in LOCAL_SHARES)


def expand_arms(cfg: StudyConfig) -> list[Arm]:
    """Infini, baseline and (with `cfg.control_arm`) local arms for every combination of sweep values (keys that do
    not change an arm skipped for it), then one more such set per ablation (one set of changed values each) for the
    attentions it changes, for the seed of a single-seed study."""
    arms = []
    for attention in ("infini", "full", "local") if cfg.control_arm else ("infini", "full"):
        keys = [k for k in cfg.sweeps if _applies(k, attention)]
        variants = [{}] + [a for a in cfg.ablations if any(_applies(k, attention) for k in a)]
        for variant, values in itertools.product(variants, itertools.product(*(cfg.sweeps[k] for k in keys))):
            changed = {k: v for k, v in variant.items() if _applies(k, attention)}
            chosen = {**dict(zip(keys, values, strict=True)), **changed}
            suffix = "".join(f"-{k}={_show(v)}" for k, v in chosen.items())
            if any(arm.name == f"{attention}{suffix}" for arm in arms):
                continue  # an ablation whose changes to this attention are another arm's (memory_rope+lr: lr's)
            stage = {s: {k.partition(".")[2]: v for k, v in chosen.items() if k.startswith(s + ".")} for s in STAGES}
            model = {k: v for k, v in chosen.items() if k in CONFIG_FIELDS}
            passkey = {k.partition(".")[2]: v for k, v in chosen.items() if k.startswith("passkey.")}
            seed = chosen.get("seed", cfg.seed)
            arms.append(Arm(f"{attention}{suffix}", attention, seed, model, stage["pretrain"], stage["finetune"],
                            passkey))  # fmt: skip
    return arms


def counterparts(arms: list[Arm]) -> list[tuple[Arm, Arm]]:
    """(Infini arm, other arm) pairs: each Infini arm with its baseline (differing only in attention and Infini-only
    values), then, in a study with the control arm, with its local control (the same segments as well). A
    counterpart not among `arms` (a report of some arms, `--report-only --arms`) gives no pair."""
    baselines = {arm.shared_key(): arm for arm in arms if arm.attention == "full"}
    controls = {arm.shared_key(LOCAL_SHARES): arm for arm in arms if arm.attention == "local"}
    pairs = []
    for arm in arms:
        if arm.attention == "infini":
            for other in (baselines.get(arm.shared_key()), controls.get(arm.shared_key(LOCAL_SHARES))):
                if other is not None:
                    pairs.append((arm, other))
    return pairs


def pretraining_source(arms: list[Arm], arm: Arm) -> Arm | None:
    """The first arm of `arms` before `arm` whose pretraining is the same as `arm`'s (same attention, seed, model
    and pretraining values: arms that differ only in fine-tuning values, e.g. a `finetune.gate_lr` sweep), whose
    pretrained model `arm` then starts from; None if there is none."""
    for other in arms:
        if other.name == arm.name:
            return None
        if (other.attention, other.seed, other.model, other.pretrain) == (arm.attention, arm.seed, arm.model,
                                                                            arm.pretrain):  # fmt: skip
            return other
    return None


def pretraining_copies(tasks: list[tuple[StudyConfig, Arm, Path]]) -> dict[int, int]:
    """{task: the task whose pretraining it copies} over a study's `(config, arm, seed folder)` tasks: each arm whose
    `pretraining_source` is among the tasks run (the same seed folder). An arm whose source is not run (left out
    with `--arms`) trains its own."""
    index = {(out, arm.name): t for t, (_, arm, out) in enumerate(tasks)}
    copies = {}
    for t, (cfg, arm, out) in enumerate(tasks):
        source = pretraining_source(expand_arms(cfg), arm)
        if source is not None and (out, source.name) in index:
            copies[t] = index[(out, source.name)]
    return copies


def _show(value: Any) -> str:
    return "none" if value is None else str(value)
