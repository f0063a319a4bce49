"""TrainConfig: the recipes, and overrides from flags, --set and config files."""

import json

import pytest

from infini_llama.train import RECIPES, TrainConfig, recipe, resolve_config
from infini_llama.train.overrides import parse_assignments


def test_paper_recipe_is_the_study():
    cfg = recipe("paper-300m")
    assert (cfg.seq_len, cfg.batch_size, cfg.global_batch, cfg.steps) == (8192, None, 4, 30_000)  # None: automatic
    assert (cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.gate_lr) == (6e-5, 6e-6, 500, 0.01)
    assert (cfg.adam_betas, cfg.adam_eps, cfg.weight_decay, cfg.grad_clip) == ((0.9, 0.95), 1e-8, 0.1, 1.0)
    assert cfg.precision == "bf16"
    # 4 × 8192 tokens per step on any number of GPUs
    cfg.batch_size = 1
    assert cfg.accumulation(world_size=1) == 4 and cfg.accumulation(world_size=4) == 1
    with pytest.raises(ValueError, match="multiple of batch_size"):
        cfg.accumulation(world_size=3)


@pytest.mark.parametrize("preset", sorted(RECIPES))
def test_every_recipe_is_valid(preset):
    recipe(preset).validate()


def test_set_parses_typed_values_and_model_fields():
    cfg = resolve_config(
        {"preset": "tiny", "lr": 3e-4},
        sets=["seq_len=128", "gate_lr=2e-2", "segment_len=32", "model.memory_update=linear",
              "adam_betas=0.9,0.98", "data=[a.txt, b.txt]", "gate_lr=none", "bptt=4", "gate_init=-1"],
    )  # fmt: skip
    assert cfg.lr == 3e-4 and cfg.seq_len == 128 and cfg.gate_lr is None
    assert cfg.model == {"segment_len": 32, "memory_update": "linear", "bptt": 4, "gate_init": -1.0}
    assert isinstance(cfg.model["gate_init"], float)
    assert cfg.adam_betas == (0.9, 0.98) and cfg.data == ["a.txt", "b.txt"]


def test_precedence_recipe_file_flags_set(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: mini\nlr: 5.0e-4\nsteps: 7\nmodel:\n  segment_len: 128\nwarmup_steps: 3\n")
    cfg = resolve_config({"lr": 1e-4}, config_file=path, sets=["steps=9"])
    assert cfg.preset == "mini" and cfg.seq_len == RECIPES["mini"]["seq_len"]  # recipe of the file's preset
    assert (cfg.lr, cfg.steps, cfg.warmup_steps) == (1e-4, 9, 3)
    assert cfg.model == {"segment_len": 128}


def test_config_file_json_and_run_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"seq_len": 64, "attention": "full"}))
    cfg = resolve_config(config_file=path)
    assert cfg.seq_len == 64 and cfg.attention == "full"
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"train": {"preset": "tiny", "steps": 11}, "model": {}, "env": {}}))
    assert resolve_config(config_file=run_json).steps == 11


def test_grad_accum_flag_drops_the_recipe_global_batch():
    cfg = resolve_config({"preset": "paper-300m", "grad_accum": 2})
    assert cfg.global_batch is None and cfg.accumulation(world_size=4) == 2


@pytest.mark.parametrize(
    "sets,message",
    [
        (["learning_rate=1"], "unknown setting 'learning_rate'"),
        (["lr=fast"], "lr must be a number"),
        (["steps=2.5"], "steps must be an integer"),
        (["compile=maybe"], "compile must be true or false"),
        (["steps=0"], "steps must be an integer >= 1"),
        (["min_lr=1"], r"min_lr must be in \[0, lr"),
        (["precision=fp16"], "precision must be one of"),
        (["lr"], "--set expects key=value"),
        (["model.colour=red"], "unknown setting 'model.colour'"),
    ],
    ids=["unknown", "not-a-number", "not-an-int", "not-a-bool", "zero-steps", "floor-above-peak", "fp16",
         "no-equals", "unknown-model-field"],
)  # fmt: skip
def test_bad_settings_name_the_field(sets, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(sets=sets)


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_config(config_file=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1,\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        resolve_config(config_file=bad)


def test_resume_and_overwrite_exclude_each_other():
    with pytest.raises(ValueError, match="pass only one"):
        TrainConfig(resume=True, overwrite=True).validate()


def test_parse_assignments_keeps_equals_in_values():
    assert parse_assignments(["tokenizer=a=b"]) == {"tokenizer": "a=b"}
