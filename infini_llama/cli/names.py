"""The names the command line offers as choices, spelled here so that building the parsers imports nothing heavy.

Each is defined where it is used (noted beside it); `tests/test_cli.py` checks that the two agree.
"""

from __future__ import annotations

TRAIN_PRESETS = ("mini", "paper-300m", "tiny")  # train.config.RECIPES (the model presets of models.presets)
STUDY_PRESETS = ("mini", "paper-300m", "paper-h200", "paper-short", "tiny")  # study.config.STUDY_PRESETS
ATTENTIONS = ("infini", "full", "local")  # models.config.ATTENTIONS
PRECISIONS = ("auto", "bf16", "fp32")  # train.config.PRECISIONS
DTYPES = ("bfloat16", "float16", "float32", "float64")  # eval.checkpoint.DTYPES
GENERATE_DTYPES = ("bfloat16", "float16", "float32")  # generate.DTYPES
HAYSTACKS = ("repeat", "styles", "corpus", "distractors", "book")  # eval.prompts.HAYSTACKS
FINETUNE_HAYSTACKS = ("repeat", "styles", "corpus", "distractors")  # train.passkey.FINETUNE_HAYSTACKS
FINETUNE_LOSSES = ("all", "answer")  # train.passkey.LOSSES
GRID_SPLITS = ("test", "validation")  # eval.passkey.GRID_SPLITS
LENGTH_UNITS = ("tokens", "chars")  # eval.passkey.LENGTH_UNITS
ROPE_SCALINGS = ("dynamic", "yarn")  # layers.rope.ROPE_SCALINGS
MULTI_TASKS = ("multikey", "multivalue", "multiquery")  # eval.multineedle.MULTI_TASKS
DEFAULT_KEY_DIGITS = 5  # eval.passkey.DEFAULT_KEY_DIGITS
STUDY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)  # train.passkey.STUDY_DEPTHS

# What each name builds, for --help (tests/test_cli.py checks these against models.presets and study.config).
TRAIN_PRESET_MODELS = {
    "tiny": "4 layers, width 128, vocabulary 4,096, segment 64",
    "mini": "8 layers, width 512, vocabulary 8,192, segment 256",
    "paper-300m": "12 layers, width 1,024, vocabulary 49,152, segment 1,024",
}
STUDY_PRESET_MODELS = {
    "tiny": "4 layers, width 64, vocabulary 2,048, segment 16",
    "mini": "8 layers, width 512, vocabulary 8,192, segment 64",
    "paper-300m": "12 layers, width 1,024, vocabulary 49,152, segment 1,024",
    "paper-short": "12 layers, width 1,024, vocabulary 49,152, segment 1,024",
    "paper-h200": "12 layers, width 1,024, vocabulary 49,152, segment 1,024",
}


def preset_lines(models: dict[str, str]) -> str:
    return "\n".join(f"  {name:<12} {text}" for name, text in models.items())
