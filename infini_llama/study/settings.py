"""A study's `--set KEY=VALUE` and `--config FILE` values, checked and typed before anything is written or started.

Keys: a StudyConfig field (`eval_samples`, `finetune_lr_grid`, ...), a training value of one stage
(`pretrain.<field>`, `finetune.<field>`: TrainConfig fields), a model field (`model.<field>`, or the field's bare
name as `train --set` spells it: `segment_len`), a passkey fine-tuning option (`passkey.<option>`) or a key of the
evaluation's RoPE scaling (`eval_rope_scaling.rope_type`, `eval_rope_scaling.factor`; several rows at once:
`eval_rope_scaling=dynamic,yarn:16`, TYPE[:FACTOR] each). An unknown key is named with
the close matches and the valid keys; a value of the wrong type with the key, the type expected and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from infini_llama.study.config import StudyConfig
from infini_llama.study.sweeps import STAGES
from infini_llama.train.overrides import MODEL_FIELDS, TRAIN_FIELDS, _coerce, _coerce_model, load_config_file

# Set through their own options (--preset, --seeds, --sweep, --ablate), not --set.
OWN_OPTIONS = {"preset": "--preset", "seeds": "--seeds", "sweeps": "--sweep", "ablations": "--ablate"}
STUDY_FIELDS: dict[str, Any] = {
    name: hint for name, hint in typing.get_type_hints(StudyConfig).items() if name not in OWN_OPTIONS
}
# The defaults of fields that are empty unless set: `none` sets them empty again (a preset's LR grid switched off).
EMPTY_DEFAULTS = {f.name: f.default for f in dataclasses.fields(StudyConfig) if f.default == ()}
SECTIONS = (*STAGES, "model", "passkey", "eval_rope_scaling")
# Sections set only key by key; eval_rope_scaling may also be set whole (`eval_rope_scaling=none`: no RoPE row).
KEYED_ONLY = (*STAGES, "model", "passkey")
# PasskeyBatchSource options a study may set (the rest it sets itself from the arm and the recipe).
PASSKEY_OPTIONS: dict[str, str] = {
    "key_digits": "int",
    "depths": "numbers",
    "haystacks": "names",
    "loss": "str",
    "pack_min_len": "int | None",
    "validation_batches": "int",
    "curriculum_steps": "int",
    "boundary_share": "float",
    "needle_boundary_share": "float",
}
ROPE_KEYS = {"rope_type": str, "factor": float}


def valid_keys() -> list[str]:
    """Every key --set takes, sections written as `section.<field>`."""
    return sorted(set(STUDY_FIELDS) - set(KEYED_ONLY)) + [f"{section}.<field>" for section in SECTIONS]


def _unknown(key: str, candidates: Sequence[str], valid: str) -> ValueError:
    """An unknown `key`, with the close matches among `candidates` and what is valid."""
    close = difflib.get_close_matches(key, candidates, n=3)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return ValueError(f"unknown setting {key!r}{hint}; {valid}")


SECTION_FIELDS: dict[str, list[str]] = {
    **{stage: sorted(set(TRAIN_FIELDS) - {"model", "out", "preset"}) for stage in STAGES},
    "model": sorted(MODEL_FIELDS),
    "passkey": sorted(PASSKEY_OPTIONS),
    "eval_rope_scaling": sorted(ROPE_KEYS),
}


def check_setting(key: str, value: Any) -> tuple[str, str | None, Any]:
    """(field, sub-key or None, typed value) of one setting, or a ValueError naming what is wrong."""
    section, dot, name = key.partition(".")
    if not dot:
        if key in OWN_OPTIONS:
            raise ValueError(f"{key} is set with {OWN_OPTIONS[key]}, not --set")
        if key in MODEL_FIELDS:  # `train --set segment_len=32` spelling
            return "model", key, _coerce_model(key, value)
        if key not in STUDY_FIELDS or key in KEYED_ONLY:
            every = sorted(set(STUDY_FIELDS) - set(KEYED_ONLY)) + sorted(MODEL_FIELDS)
            every += [f"{s}.{n}" for s, names in SECTION_FIELDS.items() for n in names]
            raise _unknown(key, every, f"valid: {', '.join(valid_keys())}")
        return key, None, coerce_study_field(key, value)
    if section not in SECTION_FIELDS:
        every = [f"{s}.{n}" for s, names in SECTION_FIELDS.items() for n in names]
        raise _unknown(key, every, f"valid: {', '.join(valid_keys())}")
    if name not in SECTION_FIELDS[section]:
        choices = SECTION_FIELDS[section]
        close = [f"{section}.{c}" for c in difflib.get_close_matches(name, choices, n=3)]
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise ValueError(f"unknown setting {key!r}{hint}; {section}.<field> takes: {', '.join(choices)}")
    if section in STAGES:
        return section, name, _coerce(key, value, TRAIN_FIELDS[name])
    if section == "model":
        return section, name, _coerce_model(name, value, key)
    if section == "passkey":
        return section, name, _coerce_passkey(key, value, PASSKEY_OPTIONS[name])
    return section, name, _coerce(key, value, ROPE_KEYS[name])


def typed_sweep_value(key: str, value: Any) -> Any:
    """A `--sweep` / `--ablate` value as the type its key takes (keys are checked by `study.sweeps`: a model field,
    `seed`, `pretrain.` / `finetune.` and a training field, or `passkey.` and a data option), or a ValueError naming
    the key, type and value."""
    if key == "seed":
        return _coerce(key, value, int)
    if "." in key and key.partition(".")[0] not in (*STAGES, "passkey"):
        return value  # not a sweep key: study.sweeps names it
    if "." not in key and key not in MODEL_FIELDS:
        return value
    return check_setting(key, value)[2]


def coerce_study_field(name: str, value: Any) -> Any:
    """`value` as the type of StudyConfig field `name`, or a ValueError with the key, the type and the value."""
    hint = STUDY_FIELDS[name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
        if value is None or value == "" or (isinstance(value, str) and value.lower() in ("none", "null")):
            if EMPTY_DEFAULTS.get(name) == ():  # a field that may be empty (`finetune_lr_grid=none`: no grid)
                return ()
            raise ValueError(f"{name} cannot be empty")
        items = value if isinstance(value, (list, tuple)) else [value]
        try:
            return tuple(_coerce(name, item, args[0]) for item in items)
        except ValueError:
            kind = {int: "integers", float: "numbers", str: "names"}.get(args[0], str(args[0]))
            raise ValueError(f"{name} must be {kind} separated by commas, got {value!r}") from None
    if any(typing.get_origin(a) is dict for a in (hint, *args)):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        if isinstance(value, Mapping):
            return dict(value)
        if name == "eval_rope_scaling":
            return _rope_rows(value)
        raise ValueError(f"{name} must be a mapping (set its keys as {name}.<key>=...), got {value!r}")
    if hint is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return _coerce(name, value, hint)


def _rope_rows(value: Any) -> list[dict[str, Any]]:
    """Several RoPE-scaled rows: a list of {rope_type, factor} mappings (a config file), or `TYPE[:FACTOR]` items
    separated by commas (`--set eval_rope_scaling=dynamic,yarn:16`; `yarn:length`: YaRN stretched by each prompt's
    length over the training length)."""
    rows = []
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, Mapping):
            rows.append(dict(item))
            continue
        rope_type, colon, factor = str(item).partition(":")
        row: dict[str, Any] = {"rope_type": rope_type.strip()}
        if colon and factor.strip().lower() == "length":  # YaRN stretched by each prompt's length
            row["per_length"] = True
        elif colon:
            row["factor"] = _coerce("eval_rope_scaling", factor.strip(), float)
        rows.append(row)
    return rows


def _coerce_passkey(key: str, value: Any, kind: str) -> Any:
    if kind == "numbers":
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(key, item, float) for item in items]
    if kind == "names":
        items = value if isinstance(value, (list, tuple)) else [value]
        return [str(item) for item in items]
    if kind == "int | None":
        return _coerce(key, value, int | None)
    return _coerce(key, value, {"int": int, "float": float, "str": str}[kind])


def study_settings(sets: Sequence[str] = (), config_file: str | None = None) -> dict[str, Any]:
    """The overrides of `study_config(preset, **overrides)` from a config file (a mapping of the same keys, sections
    nested or dotted) and then `--set` items, every one checked and typed."""
    from infini_llama.study.sweeps import parse_value

    items: list[tuple[str, Any]] = []
    if config_file:
        for key, value in load_config_file(config_file).items():
            if isinstance(value, Mapping) and key in SECTIONS:
                items += [(f"{key}.{name}", sub) for name, sub in value.items()]
            else:
                items.append((str(key), value))
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, got {item!r} (e.g. --set pretrain.steps=100)")
        items.append((key.strip(), parse_value(text)))
    overrides: dict[str, Any] = {}
    for key, value in items:
        field, name, typed = check_setting(key, value)
        if name is None:
            overrides[field] = typed
        else:
            overrides.setdefault(field, {})[name] = typed
    return overrides


def check_study(cfg: StudyConfig) -> None:
    """Build what every arm of `cfg` will build (its model config and the TrainConfig of each stage) and validate
    it, so that a value that cannot work is refused before the study folder is touched."""
    from infini_llama.models import config_from_preset
    from infini_llama.study.arms import expand_arms
    from infini_llama.study.stages import train_recipe

    # A study of several seeds runs one single-seed study per seed; its arms are built per seed.
    arms = [arm for seed in cfg.seeds for arm in expand_arms(dataclasses.replace(cfg, seeds=(seed,)))]
    for arm in arms:
        model = {**cfg.model, **arm.model, "attention": arm.attention}  # as study.stages builds it
        for stage in STAGES:
            try:
                tcfg = train_recipe(cfg, arm, stage, model=model)
                tcfg.validate()
                config_from_preset(tcfg.preset, **tcfg.model)
                if stage == "finetune" and tcfg.repeat_fraction:
                    raise ValueError("repeat_fraction repeats windows of text: set it for pretraining only")
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{stage} of arm {arm.name}: {exc}") from None
