"""Building a TrainConfig from a recipe, a config file and command-line values.

Keys are TrainConfig fields (`lr`, `seq_len`, ...) or InfiniLlamaConfig fields (`segment_len`,
`attention`, ..., also spelled `model.segment_len`), which go into `TrainConfig.model`. Values given as text
(`--set lr=3e-4`) are read as YAML scalars and then converted to the field's type, so `3e-4`, `true`,
`none`, `[a.txt, b.txt]` and `0.9,0.95` all work.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from infini_llama.models import InfiniLlamaConfig
from infini_llama.train.config import RECIPES, TrainConfig, recipe

TRAIN_FIELDS: dict[str, Any] = typing.get_type_hints(TrainConfig)
MODEL_FIELDS: dict[str, str] = {
    name: str(param.annotation)
    for name, param in inspect.signature(InfiniLlamaConfig.__init__).parameters.items()
    if name not in ("self", "kwargs")
}


def parse_text(text: str) -> Any:
    """A command-line value: a YAML scalar or list; numbers YAML leaves as text (`3e-4`) become floats."""
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """`value` converted to the type `hint` of TrainConfig field `name`, or a ValueError saying what fits."""
    args = typing.get_args(hint)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in args:
            return None
        raise ValueError(f"{name} cannot be none")
    if type(None) in args:  # Optional[X]: convert to X
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if hint is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if hint is str:
        return str(value)
    if origin is list:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [str(item) for item in items]
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or len(items) != len(typing.get_args(hint)):
            count = len(typing.get_args(hint))
            raise ValueError(f"{name} must be {count} comma-separated numbers, got {value!r}")
        return tuple(_coerce(name, item, float) for item in items)
    if origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise ValueError(f"{name} must be a mapping, got {value!r}")
    raise TypeError(f"no conversion for field {name} of type {hint}")


def _coerce_model(name: str, value: Any, key: str | None = None) -> Any:
    """`value` as the type InfiniLlamaConfig's annotation gives model field `name` (`gate_init` a number,
    `segment_len` an integer, ...), or a ValueError naming `key` (default `name`), the type and the value. A field
    that takes a name or a number (`bptt`: "full", "none" or a number of segments) is left to the config's check."""
    parts = [part.strip() for part in MODEL_FIELDS[name].split("|")]
    kinds = {"int": int, "float": float, "bool": bool, "str": str}
    if "str" in parts and len(parts) > 1 or parts[0] not in kinds:
        return value
    hint = kinds[parts[0]]
    return _coerce(key or name, value, hint | None if "None" in parts else hint)


def apply_overrides(cfg: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    """A copy of `cfg` with `values` set: TrainConfig fields directly, model fields into `cfg.model`."""
    changes: dict[str, Any] = {}
    model = dict(cfg.model)
    for key, value in values.items():
        name = key.removeprefix("model.")
        if key == "model" and isinstance(value, Mapping):
            for sub, sub_value in value.items():
                model.update(_model_item(sub, sub_value))
        elif name in MODEL_FIELDS:
            model.update(_model_item(name, value))
        elif key in TRAIN_FIELDS:
            changes[key] = _coerce(key, value, TRAIN_FIELDS[key])
        else:
            raise ValueError(
                f"unknown setting {key!r}; training fields: {sorted(TRAIN_FIELDS)}; "
                f"model fields: {sorted(MODEL_FIELDS)}"
            )
    return dataclasses.replace(cfg, **changes, model=model)


def _model_item(name: str, value: Any) -> dict[str, Any]:
    if name not in MODEL_FIELDS:
        raise ValueError(f"unknown model field {name!r}; model fields: {sorted(MODEL_FIELDS)}")
    return {name: _coerce_model(name, value)}


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """`["lr=3e-4", "segment_len=32"]` -> {"lr": 3e-4, "segment_len": 32}."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r} (e.g. --set segment_len=32)")
        values[key.strip()] = parse_text(text)
    return values


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a .yaml/.yml/.json file: a mapping of fields (model fields flat or under `model:`).

    A run folder's `run.json` works too: its `train` section is the run's config.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"config file {str(path)!r} is not valid {path.suffix[1:].upper()}: {exc}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        kind = type(values).__name__
        raise ValueError(f"config file {str(path)!r} must hold a mapping of settings, got a {kind}")
    if "train" in values and "env" in values:  # a run.json
        values = values["train"]
    return values


def resolve_config(
    flags: Mapping[str, Any] | None = None, *, config_file: str | Path | None = None, sets: Sequence[str] = ()
) -> TrainConfig:
    """Recipe of the preset, then the config file, then `flags` (typed values), then `sets` ("key=value").

    The preset is the last one named by these layers ("tiny" if none). A layer that sets `grad_accum` without
    `global_batch` drops the recipe's global batch: the accumulation asked for is used as given.
    """
    layers = [
        load_config_file(config_file) if config_file else {},
        dict(flags or {}),
        parse_assignments(sets),
    ]
    for layer in layers:
        if "grad_accum" in layer and "global_batch" not in layer:
            layer["global_batch"] = None
    preset = "tiny"
    for layer in layers:
        preset = str(layer.get("preset", preset))
    if preset not in RECIPES:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(RECIPES)}")
    cfg = recipe(preset)
    for layer in layers:
        cfg = apply_overrides(cfg, layer)
    cfg.validate()
    return cfg
