"""What a study runs: one config for the whole pipeline, and presets of it.

A study trains and evaluates *arms* (see `study.arms`): the Infini-attention arm and the full-attention baseline
(and, with `control_arm`, the segment-local control), sharing data, tokens, seeds and every recipe value, once per
seed of `seeds`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from infini_llama.eval.passkey import GRID_SPLITS
from infini_llama.eval.prompts import HAYSTACKS
from infini_llama.eval.rope_scaling import rope_scaling
from infini_llama.layers.rope import ROPE_SCALINGS
from infini_llama.models.presets import PRESETS
from infini_llama.study.sweeps import check_sweeps

EVAL_PRECISIONS = ("fp32", "tf32", "bf16", "auto")


@dataclass
class StudyConfig:
    """One study. `base` is the model preset (model and training recipe) the arms start from (None: `preset`, the
    study preset's own name when it is also a model preset). `pretrain` and `finetune` are TrainConfig fields layered
    on that preset's recipe;
    `model` overrides InfiniLlamaConfig fields for every arm; `passkey` holds PasskeyBatchSource options (key_digits,
    depths, haystacks, loss, ...). Evaluation lengths are multiples of the training length, the pretraining
    `seq_len` (the longest context either arm ever trained on); as in the 300M study, passkey fine-tuning may run at
    a shorter length, so the grid starts below the training length.

    `seeds`: the whole study runs once per seed (one seed: in the study folder itself; several: in sub-folders,
    reported per seed and across seeds). `finetune_lr_grid`: each arm fine-tunes once per LR with the same budget,
    and the LR whose model is most often right on `selection_samples` held-apart fine-tuning prompts at the
    fine-tuning length (never beyond the training length) is the one evaluated; empty: `finetune.lr` only.
    `eval_haystacks`: every passkey grid runs on each ("repeat": the classic filler, "book": held-out text).
    `eval_rope_scaling`: the baseline is also evaluated with RoPE scaled this way (its original length is the
    training length), or, for a list of scalings, once per scaling (e.g. dynamic NTK and YaRN); None: not.
    `eval_split`: "test" (the reported grids) or "validation" (grids of the same design on other samples), to choose
    a recipe without looking at the test grids. `control_arm`: also train and evaluate the local control (the
    Infini arm's segment-local attention, no memory, no gate) with the Infini arm's segments and recipe.
    `sweeps`: {key: values}, one arm per combination of values; `ablations`: [{key: value, ...}], one more arm per
    ablation, each changing its values alone (keys as for sweeps; arms it does not change are not repeated).
    `layer_off_multiple`: Infini arms are also evaluated with the memory switched off in one layer at a time, at
    this multiple of the training length (one of `eval_multiples`) on the first haystack, to measure what each
    layer's memory adds against its gate; None: not. `eval_precision`: "fp32" evaluates in float32; "tf32" in float32
    with TF32 matmuls on a GPU (float32 on a CPU); "bf16" under the bf16 autocast the models were trained in (the
    memory's state and its matmuls in float32, with TF32 on a GPU), faster on a GPU, whose float32 matmuls run far
    below its bf16 rate; "auto": bf16 on a GPU, fp32 elsewhere. `eval_batch_size`: prompts scored together;
    `eval_batch_tokens` (None: not) replaces it with a token budget, as many prompts as it holds at each length (at
    least one), so a GPU scoring short prompts gets more of them at once; neither changes what is scored.
    """

    preset: str = "tiny"
    base: str | None = None
    seeds: tuple[int, ...] = (0,)
    model: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    passkey: dict[str, Any] = field(default_factory=dict)
    finetune_lr_grid: tuple[float, ...] = ()
    selection_samples: int = 64
    eval_multiples: tuple[float, ...] = (0.5, 1, 2, 4, 8)
    eval_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    eval_samples: int = 16
    eval_batch_size: int = 16
    eval_batch_tokens: int | None = None
    eval_haystacks: tuple[str, ...] = ("repeat", "book")
    eval_split: str = "test"
    # Dynamic NTK with factor 1 stretches RoPE's longest wavelength by exactly (length / training length).
    eval_rope_scaling: dict[str, Any] | list[dict[str, Any]] | None = field(
        default_factory=lambda: {"rope_type": "dynamic", "factor": 1.0}
    )
    perplexity_windows: int = 4
    perplexity_bucket: int = 64
    sweeps: dict[str, list[Any]] = field(default_factory=dict)
    ablations: list[dict[str, Any]] = field(default_factory=list)
    control_arm: bool = False
    layer_off_multiple: float | None = 2.0
    eval_precision: str = "fp32"

    def __post_init__(self):
        self.seeds = _as_tuple(self.seeds, int)
        self.eval_multiples = _as_tuple(self.eval_multiples, float)
        self.eval_depths = _as_tuple(self.eval_depths, float)
        self.eval_haystacks = _as_tuple(self.eval_haystacks, str)
        self.finetune_lr_grid = _as_tuple(self.finetune_lr_grid, float) if self.finetune_lr_grid else ()
        if not isinstance(self.ablations, (list, tuple)) or not all(isinstance(a, dict) for a in self.ablations):
            raise ValueError(f"ablations must be a list of {{key: value}} dicts, got {self.ablations!r}")
        self.ablations = [dict(a) for a in self.ablations]
        if self.model_preset not in PRESETS:
            raise ValueError(f"unknown model preset {self.model_preset!r}; choose one of {sorted(PRESETS)}")
        if not self.seeds or min(self.seeds) < 0 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be one or more distinct integers >= 0, got {self.seeds}")
        if not self.eval_haystacks or not set(self.eval_haystacks) <= set(HAYSTACKS):
            raise ValueError(f"eval_haystacks must be one or more of {HAYSTACKS}, got {self.eval_haystacks}")
        if not all(lr > 0 for lr in self.finetune_lr_grid) or len(set(self.finetune_lr_grid)) != len(
            self.finetune_lr_grid
        ):
            raise ValueError(f"finetune_lr_grid must hold distinct LRs > 0 (or be empty), got {self.finetune_lr_grid}")
        if self.finetune_lr_grid and "finetune.lr" in self.sweeps:
            raise ValueError("finetune_lr_grid chooses the fine-tuning LR: do not also sweep finetune.lr")
        if self.eval_split not in GRID_SPLITS:
            raise ValueError(f"eval_split must be one of {tuple(GRID_SPLITS)}, got {self.eval_split!r}")
        if not isinstance(self.control_arm, bool):
            raise ValueError(f"control_arm must be true or false, got {self.control_arm!r}")
        if self.layer_off_multiple is not None and float(self.layer_off_multiple) not in self.eval_multiples:
            raise ValueError(
                f"layer_off_multiple must be one of eval_multiples {self.eval_multiples} (or none), got "
                f"{self.layer_off_multiple!r}"
            )
        if self.eval_precision not in EVAL_PRECISIONS:
            raise ValueError(f"eval_precision must be one of {EVAL_PRECISIONS}, got {self.eval_precision!r}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.eval_batch_tokens is not None and self.eval_batch_tokens < 1:
            raise ValueError(f"eval_batch_tokens must be none or >= 1, got {self.eval_batch_tokens}")
        if self.selection_samples < 1:
            raise ValueError(f"selection_samples must be >= 1, got {self.selection_samples}")
        scaling = self.eval_rope_scaling
        if isinstance(scaling, tuple):
            self.eval_rope_scaling = scaling = list(scaling)
        rows = scaling if isinstance(scaling, list) else [] if scaling is None else [scaling]
        if (
            (isinstance(scaling, list) and not scaling)
            or not all(isinstance(row, dict) and row.get("rope_type") in ROPE_SCALINGS for row in rows)
            or len({json.dumps(row, sort_keys=True) for row in rows}) != len(rows)
        ):
            raise ValueError(
                f"eval_rope_scaling must be None, a dict with rope_type in {ROPE_SCALINGS} (and a factor), or a list "
                f"of distinct such dicts (one row each), got {scaling!r}"
            )
        for row in rows:  # each as the baseline will be evaluated with it (any training length will do here)
            options = dict(row)
            rope_scaling(options.pop("rope_type"), 1, **options)
        check_sweeps(self)

    @property
    def model_preset(self) -> str:
        """The model preset whose model and training recipe the arms start from."""
        return self.base or self.preset

    @property
    def rope_scalings(self) -> list[dict[str, Any]]:
        """The baseline's RoPE scalings at evaluation, one row each, in order (none: an empty list)."""
        scaling = self.eval_rope_scaling
        return [] if scaling is None else list(scaling) if isinstance(scaling, list) else [scaling]

    @property
    def seed(self) -> int:
        """The seed of a single-seed study (a multi-seed study runs one of those per seed)."""
        if len(self.seeds) != 1:
            raise ValueError(f"this study has {len(self.seeds)} seeds; each seed's study has one")
        return self.seeds[0]


def _as_tuple(value: Any, cast) -> tuple:
    return tuple(cast(v) for v in value) if isinstance(value, (list, tuple)) else (cast(value),)


# Needle depths of passkey fine-tuning: a fine grid, so needle-to-question distances vary and the task cannot
# be solved by copying from a few fixed offsets (with the five depths of the evaluation grid and fixed-length
# sequences, models reached ~0 fine-tuning loss and still failed the grid at their own training length).
FINE_DEPTHS = tuple(i / 40 for i in range(41))

STUDY_PRESETS: dict[str, dict[str, Any]] = {
    # 2 CPU cores: a 4-layer, width-64 model (4 heads of 16) with a 2,048-token vocabulary (the output layer is
    # most of a width-64 model's compute), pretrained briefly and passkey fine-tuned at 256 tokens in 16 segments of
    # 16, compiled (torch.compile's CPU code: 1.5x the eager tokens/s). The Infini arm learns retrieval in a
    # seed-dependent drop from a loss plateau near 0.7. The recipe was chosen on passkey validation grids of seeds
    # 0-4 (reports/tiny-recipe/): a fine-tuning LR of 4e-3 stalled more seeds than 2e-3; 4,000 steps of 8
    # sequences beat 2,000 of 16 (the same tokens); the gate LR decides much: 0.01 left every seed on the plateau,
    # 0.05 and 0.2 freed 3 of 5, 0.1 and 0.5 4 of 5. With 2 heads of 32 no gate LR freed all five; a curriculum
    # over needle distance (the first 1,000 steps) or 4 heads of 16 each freed all five, and both together gave the
    # highest accuracy at 2x-8x. No LR grid: one fine-tuning run per arm is most of the time budget. The gate is a
    # logistic sigmoid: with the hard sigmoid, 7 of 8 gates ended at exactly 0 or 1, where it has no gradient
    # (earlier: 2-layer models and segments of 32 learned slower). Pretraining runs 400 steps: with 200 the baseline
    # left its fine-tuning plateau late or never in some seeds (86% at its own length in one test seed), with 400
    # both arms reached >= 91% at 1x in all five validation seeds (reports/tiny-recipe-p400/).
    "tiny": dict(
        model=dict(segment_len=16, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=4, vocab_size=2048, gate_activation="sigmoid"),
        pretrain=dict(seq_len=256, batch_size=16, steps=400, lr=2e-3, min_lr=2e-4, warmup_steps=20,
                      eval_every=100, eval_windows=16, save_every=100, compile=True),
        finetune=dict(seq_len=256, batch_size=8, steps=4000, lr=2e-3, min_lr=2e-4, warmup_steps=50,
                      gate_lr=0.1, eval_every=500, save_every=500, compile=True),
        passkey=dict(key_digits=5, loss="answer", depths=FINE_DEPTHS, curriculum_steps=1000),
        eval_multiples=(0.5, 1, 2, 4, 8), eval_samples=16, perplexity_windows=4, perplexity_bucket=128,
    ),
    # One GPU: the 42M-parameter mini model pretrained and passkey fine-tuned at 1,024 tokens, 16 segments of 64
    # as in the tiny study. Steps of 16 sequences (the global batch: the same 16 as one pass of 16 in the arm's one
    # process), as many per pass as fit the GPU. The fine-tuning recipe was screened on validation grids of seeds
    # 0-2 (reports/mini-recipe/): a curriculum over needle distance (the first 400 steps), the Infini gates started
    # open (beta = 2: g = 0.9 with the hard sigmoid) and a gate LR of 0.1 took the Infini arm from 84-96% at its own
    # length to 94-100% in every seed. Both arms fine-tune at 5e-4, the LR both chose in seeds 1 and 2 from grids of
    # 1.25e-4 / 2.5e-4 / 5e-4 (the Infini arm scored 39-41% at 1.25e-4, 88-98% at 2.5e-4, 94-100% at 5e-4 and
    # 97% at 1e-3 on the selection prompts; the baseline 100% at every LR), so one fine-tuning per arm, not three.
    # The logistic sigmoid in place of the hard one (started at beta = 2 or 0) kept every gate off 0 and 1 but did
    # not close the Infini arm's gap on keys in which a digit has two successors (reports/mini-sigmoid/); 3,000
    # fine-tuning steps in place of 1,500 did on those grids (the Infini arm's minimum over seeds at 1x from 96% to
    # 99%), and the memory reading RoPE'd keys (memory_rope) fell apart beyond the training length
    # (reports/mini-steps/). On the test grids those 3,000 steps gave the Infini arm 92-100% at 1x; 6,000, chosen
    # on the same validation grids by the same rule (reports/mini-steps-6000/), give both arms 100% at 1x in seeds
    # 0-2 (reports/mini/).
    "mini": dict(
        model=dict(segment_len=64, gate_init=2.0),
        pretrain=dict(seq_len=1024, global_batch=16, batch_size=None, steps=1000, eval_every=250, save_every=500),
        finetune=dict(seq_len=1024, global_batch=16, batch_size=None, steps=6000, lr=5e-4, min_lr=5e-5,
                      warmup_steps=50, gate_lr=0.1, eval_every=500, save_every=500),
        passkey=dict(key_digits=5, loss="answer", depths=FINE_DEPTHS, curriculum_steps=400),
        eval_multiples=(0.5, 1, 2, 4, 8, 16), eval_samples=16, perplexity_windows=8, perplexity_bucket=512,
        # The baseline's length-extension rows: dynamic NTK (scaled to each length), YaRN stretched to the longest
        # length of the grid, and YaRN stretched by each prompt's length.
        eval_rope_scaling=[dict(rope_type="dynamic", factor=1.0), dict(rope_type="yarn", factor=16.0),
                           dict(rope_type="yarn", per_length=True)],
    ),
    # The 300M study: its pretraining recipe (30,000 steps of 4 x 8192) and its passkey fine-tuning
    # (500 steps of 64 x 4096, LR 7.5e-5, gate LR 1.5e-4, 4-digit keys, loss on every token), the LR chosen
    # per arm from half, once and twice the study's; both global batches split into as many sequences per pass
    # as fit the GPU.
    "paper-300m": dict(
        pretrain=dict(),
        finetune=dict(seq_len=4096, global_batch=64, batch_size=None, steps=500, lr=7.5e-5, min_lr=3e-6,
                      warmup_steps=50, gate_lr=1.5e-4, eval_every=100, save_every=100),
        finetune_lr_grid=(3.75e-5, 7.5e-5, 1.5e-4),
        passkey=dict(key_digits=4, loss="all"),
        eval_multiples=(0.125, 0.25, 0.5, 1, 2), eval_samples=64, eval_batch_size=4, perplexity_windows=8,
        perplexity_bucket=1024,
    ),
}  # fmt: skip
# The 300M study at its own shape, cut to fit two GPUs in about 20 minutes, one arm per GPU: its 302M model, segment
# 1,024, pretraining at 8,192 tokens, passkey fine-tuning at 4,096 (4-digit keys) for 100 of its 500 steps,
# evaluation from 1,024 to 16,384 tokens. Set from its first run (1,500 pretraining steps, the study's fine-tuning
# with the loss on every token, 22.7 minutes on two H200s): on the embedded corpus (3.6M tokens at this vocabulary)
# the 302M model memorised, its validation loss rising from 6.1 at step 500 to 7.7 at step 1,500 as its training loss
# fell to 1.2, and 100 steps with the loss on every token taught neither arm to retrieve (0% at every length). So
# pretraining stops at 300 steps of 4 x 8,192 (9.8M tokens, 1% of the study's 983M, under three passes over the
# corpus), and fine-tuning puts the loss on the answer, with an LR grid of once, twice and four times the study's
# 7.5e-5. With a network, --set pretrain.dataset=... gives the pretraining real data to use more steps on. Measured
# with these values: 18.4 minutes on two H200s, and still 0% for both arms, whose answer loss stayed on the plateau
# of guessing each digit for all 100 fine-tuning steps (reports/paper-short/); that run had fixed passes of 4
# pretraining and 8 fine-tuning sequences, where the micro-batch is now the largest that fits (the same steps).
STUDY_PRESETS["paper-short"] = {
    **STUDY_PRESETS["paper-300m"],
    "base": "paper-300m",
    "pretrain": dict(batch_size=None, global_batch=4, steps=300, lr=3e-4, min_lr=3e-5, warmup_steps=30, eval_every=100,
                     save_every=100),
    "finetune": {**STUDY_PRESETS["paper-300m"]["finetune"], "steps": 100, "warmup_steps": 10, "eval_every": 50,
                 "save_every": 50},
    "finetune_lr_grid": (7.5e-5, 1.5e-4, 3e-4),
    "passkey": dict(key_digits=4, loss="answer"),
    "eval_samples": 16,
    "perplexity_windows": 4,
}  # fmt: skip

# The 300M study on one H200, both arms of a seed one after the other in one lease (about 30 minutes held): its 302M
# model and segment 1,024, then passkey fine-tuning at 4,096 tokens for 2,000 steps of 8 (65.5M tokens per arm, half
# the study's 131M), one LR for both arms, no grid; evaluation from 1,024 to 16,384 tokens with the baseline's dynamic
# NTK and YaRN-by-length rows, and no one-layer memory-off grids. The recipe was screened on validation grids over six
# leases (reports/paper-h200-screen/):
# - pretraining 600 steps of 4 x 8,192, half of each window's second half a copy of its first (repeat_fraction): the
#   302M model memorises the 3.6M-token corpus, and the copied text teaches it to look back (lease P);
# - fine-tuning at LR 1e-4 (3e-4 stayed on the answer-loss plateau), held after 100 warm-up steps and decayed to 1e-5
#   over the last 500 steps (the decay ended the held LR's digit swaps, lease E), the loss on the answer, the
#   curriculum over needle distance for the first 600 steps, the gates started open (beta = 2) with a gate LR of 0.1
#   (0.01 scored 86% at 4,096 against 99-100% at 0.1, lease F);
# - prompts packed so that 30% of the answers open a segment and 70% of the needles are cut by a segment boundary
#   (boundary_share, needle_boundary_share): a cut needle whose second copy opens the question's segment was the
#   Infini arm's last miss, 0 of 16 per cell in lease E and 100% at 4,096 / 95% at 16,384 overall with these shares
#   in lease F.
# Both arms of one seed took about 21 minutes on one H100 (lease E's stage times, lease F's evaluation). No
# checkpoint before a stage's last step: a 302M checkpoint is a 3.6 GB write and its checksum, and on a leased GPU the
# weights never outlive the lease, so one would only spare a stage that crashed part-way a restart inside the same
# lease. Evaluation in float32 with TF32 matmuls, 16 prompts per batch up to 4,096 tokens and 4 at 16,384: on one
# H200, 1.35-2.7x float32's speed at a batch of 16, answers as float32's (benchmarks/results/eval_precision_h200.json).
STUDY_PRESETS["paper-h200"] = {
    **STUDY_PRESETS["paper-short"],
    "model": dict(gate_init=2.0),
    "pretrain": {**STUDY_PRESETS["paper-short"]["pretrain"], "steps": 600, "repeat_fraction": 0.5, "save_every": 0},
    "finetune": {**STUDY_PRESETS["paper-300m"]["finetune"], "global_batch": 8, "steps": 2000, "lr": 1e-4,
                 "min_lr": 1e-5, "warmup_steps": 100, "decay_steps": 500, "gate_lr": 0.1, "eval_every": 200,
                 "save_every": 0},
    "finetune_lr_grid": (),
    "passkey": dict(key_digits=4, loss="answer", depths=FINE_DEPTHS, curriculum_steps=600, boundary_share=0.3,
                    needle_boundary_share=0.7),
    "eval_rope_scaling": [dict(rope_type="dynamic", factor=1.0), dict(rope_type="yarn", per_length=True)],
    "layer_off_multiple": None,
    "eval_precision": "tf32",
    "eval_batch_tokens": 65536,
}  # fmt: skip


def study_config(preset: str, *, sweeps: dict[str, list[Any]] | None = None, **overrides: Any) -> StudyConfig:
    """The study preset `preset` with fields replaced by `overrides` (dict fields are merged)."""
    if preset not in STUDY_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(STUDY_PRESETS)}")
    fields = {k: (dict(v) if isinstance(v, dict) else v) for k, v in STUDY_PRESETS[preset].items()}
    defaults = {f.name: f.default_factory() for f in dataclasses.fields(StudyConfig) if callable(f.default_factory)}
    for key, value in overrides.items():
        base = fields.get(key, defaults.get(key)) or {}
        if isinstance(value, dict) and isinstance(base, list):
            raise ValueError(
                f"{key} of preset {preset!r} is a list of {len(base)}; set it whole (e.g. {key}=dynamic,yarn:16), "
                f"not key by key ({', '.join(f'{key}.{k}' for k in value)})"
            )
        fields[key] = {**base, **value} if isinstance(value, dict) else value
    return StudyConfig(preset=preset, sweeps=dict(sweeps or {}), **fields)
