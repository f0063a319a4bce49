"""The arms of a study: Infini-attention and the full-attention baseline (and, with `control_arm`, the segment-local
control), for every combination of sweep values, and once more for each ablation (a set of values changed
together, each ablation on its own: `gate_init=2`, `pretrain.gate_lr=none+finetune.gate_lr=none`).

Sweep keys name what they change: a model field (`segment_len`, `memory_update`, ...), `seed` (everything that is
seeded: pretraining, fine-tuning data and its key exclusion, the evaluation grid), or a training value of one
stage, `pretrain.<field>` or `finetune.<field>` (`pretrain.lr`, `finetune.gate_lr`, ...): a bare `lr` would say
neither, and a value given to one stage must not silently change the other. A sweep over a value the baseline does
not have (`segment_len`, `memory_update`, `gate_activation`, `pretrain.gate_lr`, ...) multiplies the Infini arm
and leaves one baseline; any other sweep is given to both arms. The local control (Infini-attention's local
attention with no memory and no gate) follows the baseline, but shares the Infini arm's segments: a `segment_len`
sweep multiplies it too, every other Infini-only sweep leaves one control.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from infini_llama.models.presets import CONFIG_FIELDS
from infini_llama.train import TrainConfig

if TYPE_CHECKING:
    from infini_llama.study.config import StudyConfig

STAGES = ("pretrain", "finetune")
# Values that change nothing for the full-attention baseline (training values: the field after the stage).
INFINI_ONLY = frozenset(
    {"segment_len", "memory_update", "gate_activation", "gate_init", "gate_trainable", "memory_rope", "bptt", "gate_lr"}
)
# Infini-only values the local control shares with the Infini arm.
LOCAL_SHARES = frozenset({"segment_len"})
TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - {"model", "out", "preset", "seed"}
SWEEP_KEYS = (
    (CONFIG_FIELDS - {"attention"}) | {"seed"} | {f"{stage}.{name}" for stage in STAGES for name in TRAIN_FIELDS}
)


def check_sweeps(cfg: StudyConfig) -> None:
    """Raise ValueError for a sweep or ablation key that is unknown or does not say its stage, a sweep without
    values, an empty ablation, or an ablation of a swept key."""
    for ablation in cfg.ablations:
        if not ablation:
            raise ValueError("an ablation changes at least one value")
        for key in ablation:
            _check_key(key)
            if key in cfg.sweeps:
                raise ValueError(f"{key!r} is swept: ablate it or sweep it, not both")
            if key == "seed":
                raise ValueError("seed is not an ablation: run several seeds (--seeds)")
    for key, values in cfg.sweeps.items():
        _check_key(key)
        if not values:
            raise ValueError(f"sweep {key!r} has no values")
    if "seed" in cfg.sweeps and len(cfg.seeds) > 1:
        raise ValueError("sweep seed or run several seeds (--seeds), not both")


def _check_key(key: str) -> None:
    if key in TRAIN_FIELDS:
        raise ValueError(
            f"sweep key {key!r} is a training value: say which stage it is for, pretrain.{key} or "
            f"finetune.{key} (two keys for both)"
        )
    if key not in SWEEP_KEYS:
        raise ValueError(f"unknown sweep key {key!r}; sweepable: {sorted(SWEEP_KEYS)}")


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

    def shared_key(self, keep: frozenset[str] = frozenset()) -> tuple:
        """What this arm shares with its counterpart of another attention: every choice but the Infini-only ones
        (except those in `keep`)."""

        def shared(values: dict[str, Any]) -> tuple:
            return tuple(sorted((k, v) for k, v in values.items() if k not in INFINI_ONLY - keep))

        return self.seed, shared(self.model), shared(self.pretrain), shared(self.finetune)


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
            stage = {s: {k.partition(".")[2]: v for k, v in chosen.items() if k.startswith(s + ".")} for s in STAGES}
            model = {k: v for k, v in chosen.items() if k in CONFIG_FIELDS}
            seed = chosen.get("seed", cfg.seed)
            arms.append(Arm(f"{attention}{suffix}", attention, seed, model, stage["pretrain"], stage["finetune"]))
    return arms


def counterparts(arms: list[Arm]) -> list[tuple[Arm, Arm]]:
    """(Infini arm, other arm) pairs: each Infini arm with its baseline (differing only in attention and Infini-only
    values), then, in a study with the control arm, with its local control (the same segments as well)."""
    baselines = {arm.shared_key(): arm for arm in arms if arm.attention == "full"}
    controls = {arm.shared_key(LOCAL_SHARES): arm for arm in arms if arm.attention == "local"}
    pairs = []
    for arm in arms:
        if arm.attention == "infini":
            pairs.append((arm, baselines[arm.shared_key()]))
            if controls:
                pairs.append((arm, controls[arm.shared_key(LOCAL_SHARES)]))
    return pairs


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


def parse_value(text: str) -> Any:
    """A sweep or --set value from the command line: int, float, bool, none, or the string itself."""
    if "," in text:
        return [parse_value(part) for part in text.split(",")]
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_ablation(text: str) -> dict[str, Any]:
    """ "k1=v1+k2=v2" -> {"k1": v1, "k2": v2}: the values one ablation changes together."""
    ablation = {}
    for part in text.split("+"):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip() or "," in value:
            raise ValueError(f"--ablate takes KEY=VALUE (several joined by +), got {text!r}")
        ablation[key.strip()] = parse_value(value)
    return ablation


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """ "key=v1,v2" -> ("key", [v1, v2])."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise ValueError(f"--sweep takes KEY=V1,V2,..., got {text!r}")
    parsed = parse_value(values)
    return key.strip(), parsed if isinstance(parsed, list) else [parsed]
