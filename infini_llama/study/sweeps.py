"""Sweep and ablation keys of a study, checked, and how the command line spells their values.

Sweep keys name what they change: a model field (`segment_len`, `memory_update`, ...), `seed`, a training value
of one stage, `pretrain.<field>` or `finetune.<field>`, or an option of the passkey fine-tuning data,
`passkey.<option>` (see `study.arms`, which turns them into arms).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from infini_llama.models.presets import CONFIG_FIELDS
from infini_llama.train.config import TrainConfig

STAGES = ("pretrain", "finetune")
TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - {"model", "out", "preset", "seed"}
# Options of the passkey fine-tuning data that arms may differ in; the key digits, needle depths and haystacks are
# not among them: the evaluation grids, which every arm shares, are built from them.
PASSKEY_SWEEPS = frozenset({"boundary_share", "curriculum_steps", "loss", "needle_boundary_share", "pack_min_len"})
SWEEP_KEYS = (
    (CONFIG_FIELDS - {"attention"})
    | {"seed"}
    | {f"{stage}.{name}" for stage in STAGES for name in TRAIN_FIELDS}
    | {f"passkey.{name}" for name in PASSKEY_SWEEPS}
)


def check_sweeps(cfg: Any) -> None:
    """Raise ValueError for a sweep or ablation key that is unknown or does not say its stage, a sweep without
    values, an empty ablation, or an ablation of a swept key. `cfg` is a StudyConfig (whose module imports this
    one, so it is not named here)."""
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
        close = difflib.get_close_matches(key, sorted(SWEEP_KEYS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown sweep key {key!r}{hint}; sweepable: {', '.join(sorted(SWEEP_KEYS))}")


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
