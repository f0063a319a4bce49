"""What a study runs: presets of the whole pipeline, and sweeps expanded into arms.

A study trains and evaluates *arms*. The two base arms are Infini-attention and the full-attention baseline;
they share data, tokens, seeds and every recipe value. A sweep over a training value (`lr`, `seed`, ...) is
given to both arms; a sweep over a value only Infini-attention has (`segment_len`, `memory_update`,
`gate_activation`, `gate_lr`, ...) multiplies the Infini arm and leaves one baseline.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from infini_llama.models.presets import CONFIG_FIELDS, PRESETS
from infini_llama.train import TrainConfig

# Values that change nothing for the full-attention baseline.
INFINI_ONLY = frozenset(
    {"segment_len", "memory_update", "gate_activation", "gate_init", "memory_rope", "bptt", "gate_lr"}
)
TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - {"model", "out", "preset"}
SWEEP_KEYS = (CONFIG_FIELDS - {"attention"}) | TRAIN_FIELDS


@dataclass
class StudyConfig:
    """One study. `pretrain` and `finetune` are TrainConfig fields layered on the model preset's recipe;
    `model` overrides InfiniLlamaConfig fields for every arm. Evaluation lengths are multiples of the training
    length, the pretraining `seq_len` (the longest context either arm ever trained on); as in the 300M study,
    passkey fine-tuning runs at a shorter length, so the grid starts below the training length."""

    preset: str = "tiny"
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    passkey: dict[str, Any] = field(default_factory=dict)  # PasskeyBatchSource options: key_digits, loss, ...
    eval_multiples: tuple[float, ...] = (0.5, 1, 2, 4, 8)
    eval_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    eval_samples: int = 16
    eval_batch_size: int = 16
    perplexity_windows: int = 4
    perplexity_bucket: int = 64
    sweeps: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self):
        self.eval_multiples = _as_tuple(self.eval_multiples, float)
        self.eval_depths = _as_tuple(self.eval_depths, float)
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        unknown = set(self.sweeps) - SWEEP_KEYS
        if unknown:
            raise ValueError(f"unknown sweep key(s) {sorted(unknown)}; sweepable: {sorted(SWEEP_KEYS)}")
        for key, values in self.sweeps.items():
            if not values:
                raise ValueError(f"sweep {key!r} has no values")


def _as_tuple(value: Any, cast) -> tuple:
    return tuple(cast(v) for v in value) if isinstance(value, (list, tuple)) else (cast(value),)


# Needle depths of passkey fine-tuning: a fine grid, so needle-to-question distances vary and the task cannot
# be solved by copying from a few fixed offsets (with the five depths of the evaluation grid and fixed-length
# sequences, models reached ~0 fine-tuning loss and still failed the grid at their own training length).
FINE_DEPTHS = tuple(i / 40 for i in range(41))

STUDY_PRESETS: dict[str, dict[str, Any]] = {
    # 2 CPU cores, ≤ 20 minutes with the two arms in parallel: a 4-layer, width-64 model with a 2,048-token
    # vocabulary (the output layer is most of a width-64 model's compute), pretrained briefly and passkey
    # fine-tuned at 256 tokens in 16 segments of 16. Measured on passkey training alone (2,000 steps of
    # 16 × 256, two seeds each): 2-layer models mostly stayed on a loss plateau, both 4-layer ones left it.
    # Segments of 32 (8 per sequence) learned slower than 16, and a gate LR of 0.05 faster than 0.01.
    "tiny": dict(
        model=dict(segment_len=16, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                   num_attention_heads=2, num_key_value_heads=2, vocab_size=2048),
        pretrain=dict(seq_len=256, batch_size=16, steps=200, lr=2e-3, min_lr=2e-4, warmup_steps=20,
                      eval_every=100, eval_windows=16, save_every=100),
        finetune=dict(seq_len=256, batch_size=16, steps=2000, lr=2e-3, min_lr=2e-4, warmup_steps=50,
                      gate_lr=0.05, eval_every=500, save_every=500),
        passkey=dict(key_digits=5, loss="answer", depths=FINE_DEPTHS),
        eval_multiples=(0.5, 1, 2, 4, 8), eval_samples=16, perplexity_windows=4, perplexity_bucket=128,
    ),
    # One H100, 12 minutes with both arms at once (--jobs 2): the 42M-parameter mini model pretrained and
    # passkey fine-tuned at 1,024 tokens, 16 segments of 64 as in the tiny study.
    "mini": dict(
        model=dict(segment_len=64),
        pretrain=dict(seq_len=1024, batch_size=16, steps=1000, eval_every=250, save_every=500),
        finetune=dict(seq_len=1024, batch_size=16, steps=1500, lr=5e-4, min_lr=5e-5, warmup_steps=50,
                      gate_lr=0.05, eval_every=500, save_every=500),
        passkey=dict(key_digits=5, loss="answer", depths=FINE_DEPTHS),
        eval_multiples=(0.5, 1, 2, 4, 8, 16), eval_samples=16, perplexity_windows=8, perplexity_bucket=512,
    ),
    # The 300M study: its pretraining recipe (30,000 steps of 4 x 8192) and its passkey fine-tuning
    # (500 steps of 64 x 4096, LR 7.5e-5, gate LR 1.5e-4, 4-digit keys, loss on every token).
    "paper-300m": dict(
        pretrain=dict(),
        finetune=dict(seq_len=4096, global_batch=64, batch_size=8, steps=500, lr=7.5e-5, min_lr=3e-6,
                      warmup_steps=50, gate_lr=1.5e-4, eval_every=100, save_every=100),
        passkey=dict(key_digits=4, loss="all"),
        eval_multiples=(0.125, 0.25, 0.5, 1, 2), eval_samples=64, eval_batch_size=4, perplexity_windows=8,
        perplexity_bucket=1024,
    ),
}  # fmt: skip


def study_config(preset: str, *, sweeps: dict[str, list[Any]] | None = None, **overrides: Any) -> StudyConfig:
    """The study preset `preset` with fields replaced by `overrides` (dict fields are merged)."""
    if preset not in STUDY_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(STUDY_PRESETS)}")
    fields = {k: (dict(v) if isinstance(v, dict) else v) for k, v in STUDY_PRESETS[preset].items()}
    for key, value in overrides.items():
        fields[key] = {**fields.get(key, {}), **value} if isinstance(value, dict) else value
    return StudyConfig(preset=preset, sweeps=dict(sweeps or {}), **fields)


@dataclass(frozen=True)
class Arm:
    """One trained model of the study: a name, its model overrides and its training overrides."""

    name: str
    attention: str
    model: dict[str, Any]
    train: dict[str, Any]


def expand_arms(cfg: StudyConfig) -> list[Arm]:
    """Infini and baseline arms for every combination of sweep values (baseline-irrelevant keys skipped)."""
    arms = []
    for attention in ("infini", "full"):
        keys = [k for k in cfg.sweeps if attention == "infini" or k not in INFINI_ONLY]
        for values in itertools.product(*(cfg.sweeps[k] for k in keys)):
            chosen = dict(zip(keys, values, strict=True))
            suffix = "".join(f"-{k}={_show(v)}" for k, v in chosen.items())
            model = {k: v for k, v in chosen.items() if k in CONFIG_FIELDS}
            train = {k: v for k, v in chosen.items() if k not in CONFIG_FIELDS}
            arms.append(Arm(f"{attention}{suffix}", attention, model, train))
    return arms


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


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """ "key=v1,v2" -> ("key", [v1, v2])."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise ValueError(f"--sweep takes KEY=V1,V2,..., got {text!r}")
    parsed = parse_value(values)
    return key.strip(), parsed if isinstance(parsed, list) else [parsed]
