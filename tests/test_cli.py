"""The command line's front door: every mistake is one line on stderr with a non-zero exit status, nothing written
or deleted; a damaged checkpoint is refused by every command that loads weights; `--help` imports nothing heavy."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infini_llama.cli import main
from infini_llama.train.manifest import write_manifest


def run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def one_line(err: str, command: str) -> str:
    assert err.startswith(f"infini-llama {command}: "), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A micro model with its tokenizer, as the trainer writes `final/`: a manifest of checksums included."""
    from infini_llama import InfiniLlamaConfig, InfiniLlamaForCausalLM
    from infini_llama.data import load_tokenizer

    folder = tmp_path_factory.mktemp("model") / "final"
    tok = load_tokenizer(None, vocab_size=512, cache_dir=str(tmp_path_factory.mktemp("cache")))
    config = InfiniLlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, segment_len=16,
    )  # fmt: skip
    torch.manual_seed(0)
    InfiniLlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    write_manifest(folder)
    return folder


@pytest.fixture
def damaged(model_dir, tmp_path) -> Path:
    """A copy of `model_dir` with one byte of its weights flipped."""
    import shutil

    copy = tmp_path / "run" / "final"
    shutil.copytree(model_dir, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    return copy


@pytest.fixture
def no_study_starts(monkeypatch):
    """A study that passes its checks must not start in these tests: run_study fails loudly instead."""
    from infini_llama.study import runner

    def started(*args, **kwargs):
        raise AssertionError("the study started: a bad value passed the checks")

    monkeypatch.setattr(runner, "run_study", started)


@pytest.fixture
def prompt(tmp_path) -> Path:
    path = tmp_path / "prompt.txt"
    path.write_text("The cat sat on the mat. " * 4)
    return path


# --- study --out DIR --overwrite deletes only a study's folder -------------------------------------------------


def test_study_overwrite_refuses_a_folder_that_holds_no_study(tmp_path, capsys):
    folder = tmp_path / "work"
    (folder / "src").mkdir(parents=True)
    (folder / "notes.md").write_text("mine")
    (folder / "src" / "main.py").write_text("print(1)")
    before = snapshot(folder)
    code, err = run(["study", "--out", str(folder), "--overwrite", "--no-progress"], capsys)
    assert code == 2
    assert "holds no study" in one_line(err, "study") and "notes.md" in err and "src/" in err
    assert snapshot(folder) == before


def test_study_overwrite_clears_a_study_folder(tmp_path):
    from infini_llama.study import study_config
    from infini_llama.study.runner import STUDY_FILE, _claim_folder

    (tmp_path / STUDY_FILE).write_text(json.dumps({"preset": "mini"}))
    (tmp_path / "infini").mkdir()
    (tmp_path / "infini" / "pretrain.done").write_text("{}")
    _claim_folder(tmp_path, study_config("tiny"), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STUDY_FILE]
    assert json.loads((tmp_path / STUDY_FILE).read_text())["preset"] == "tiny"


def test_train_and_study_share_one_guard(tmp_path):
    from infini_llama.train.rundir import clear_folder, clear_run_dir

    (tmp_path / "keep.txt").write_text("x")
    for clear in (clear_run_dir, lambda p: clear_folder(p, "study.json", "a study")):
        with pytest.raises(ValueError, match=r"refusing to delete .* holds no .*keep\.txt"):
            clear(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "x"


# --- every --set / --config value is checked before anything is written -------------------------------------


@pytest.mark.parametrize(
    "setting,message",
    [
        ("pretrain.lr=abc", "pretrain.lr must be a number, got 'abc'"),
        ("nonexistent.key=1", "unknown setting 'nonexistent.key'"),
        ("pretrain.lrr=1", "did you mean 'pretrain.lr'"),
        ("eval_sampels=4", "did you mean 'eval_samples'"),
        ("eval_samples=many", "eval_samples must be an integer, got 'many'"),
        ("model.segment_len=0", "segment_len"),
        ("model.gate_init=high", "model.gate_init must be a number, got 'high'"),
        ("passkey.curriculum_step=5", "did you mean 'passkey.curriculum_steps'"),
        ("pretrain.steps=0", "steps must be an integer >= 1"),
    ],
    ids=["bad-value", "unknown-section", "typo-train-field", "typo-study-field", "bad-int", "bad-model", "bad-float",
         "typo-passkey", "out-of-range"],
)  # fmt: skip
def test_study_settings_are_checked_before_anything_is_written(setting, message, tmp_path, capsys, no_study_starts):
    out = tmp_path / "study"
    code, err = run(["study", "--out", str(out), "--set", setting, "--no-progress"], capsys)
    assert code == 2 and message in one_line(err, "study"), err
    assert not out.exists()


@pytest.mark.parametrize(
    "option,message",
    [(["--sweep", "pretrain.lr=1e-3,abc"], "pretrain.lr must be a number, got 'abc'"),
     (["--ablate", "gate_init=high"], "gate_init must be a number, got 'high'"),
     (["--sweep", "seed=0,x"], "seed must be an integer, got 'x'")],
    ids=["sweep", "ablate", "seed"],
)  # fmt: skip
def test_study_sweep_and_ablation_values_are_checked(option, message, tmp_path, capsys, no_study_starts):
    code, err = run(["study", "--out", str(tmp_path / "s"), *option], capsys)
    assert code == 2 and message in one_line(err, "study")
    assert not (tmp_path / "s").exists()


def test_study_config_file_is_checked_too(tmp_path, capsys, no_study_starts):
    config = tmp_path / "study.yaml"
    config.write_text("pretrain:\n  lr: fast\n")
    code, err = run(["study", "--out", str(tmp_path / "s"), "--config", str(config)], capsys)
    assert code == 2 and "pretrain.lr must be a number, got 'fast'" in one_line(err, "study")
    assert not (tmp_path / "s").exists()


def test_study_takes_model_fields_as_train_spells_them():
    from infini_llama.study.settings import study_settings

    assert (
        study_settings(["segment_len=32"]) == study_settings(["model.segment_len=32"]) == {"model": {"segment_len": 32}}
    )


# --- a damaged checkpoint is refused by every command that loads weights ------------------------------------


@pytest.mark.parametrize("command", ["generate", "eval passkey", "eval gates", "finetune passkey", "train"])
def test_every_command_that_loads_weights_checks_the_manifest(command, damaged, prompt, tmp_path, capsys):
    out = tmp_path / "out"
    argv = {
        "generate": ["generate", "--checkpoint", str(damaged), "--prompt-file", str(prompt)],
        "eval passkey": ["eval", "passkey", "--checkpoint", str(damaged), "--out", str(out)],
        "eval gates": ["eval", "gates", "--checkpoint", str(damaged), "--out", str(out)],
        "finetune passkey": ["finetune", "passkey", "--checkpoint", str(damaged), "--out", str(out), "--device", "cpu"],
        "train": ["train", "--init-from", str(damaged), "--out", str(out), "--device", "cpu", "--steps", "1"],
    }[command]
    code, err = run(argv, capsys)
    assert code == 1
    assert "model.safetensors does not match its SHA-256" in one_line(err, command), err
    assert not out.exists()


# --- generate: one line for every mistake -------------------------------------------------------------------


def test_generate_missing_folder(tmp_path, prompt, capsys):
    code, err = run(["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt-file", str(prompt)], capsys)
    assert code == 2 and "does not exist" in one_line(err, "generate")


def test_generate_empty_folder(tmp_path, prompt, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run(["generate", "--checkpoint", str(tmp_path / "empty"), "--prompt-file", str(prompt)], capsys)
    assert code == 2 and "is empty" in one_line(err, "generate")


def test_generate_run_folder_suggests_final(model_dir, prompt, capsys):
    code, err = run(["generate", "--checkpoint", str(model_dir.parent), "--prompt-file", str(prompt)], capsys)
    assert code == 2 and "did you mean" in one_line(err, "generate") and str(model_dir) in err


def test_generate_corrupt_config(model_dir, prompt, tmp_path, capsys):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(model_dir, folder)
    (folder / "manifest.json").unlink()  # a folder from elsewhere: no manifest to name the damage
    (folder / "config.json").write_text('{"model_type": "infini_llama", ')
    code, err = run(["generate", "--checkpoint", str(folder), "--prompt-file", str(prompt)], capsys)
    assert code == 2 and "config.json is damaged" in one_line(err, "generate")


def test_generate_missing_prompt_is_found_before_the_model_loads(model_dir, tmp_path, capsys, monkeypatch):
    import infini_llama.generate as generate

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the prompt file was checked")

    monkeypatch.setattr(generate, "load_checkpoint", must_not_load)
    code, err = run(["generate", "--checkpoint", str(model_dir), "--prompt-file", str(tmp_path / "no.txt")], capsys)
    assert code == 2 and "prompt file" in one_line(err, "generate") and "does not exist" in err


def test_generate_empty_prompt(model_dir, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text(" \n")
    code, err = run(["generate", "--checkpoint", str(model_dir), "--prompt-file", str(tmp_path / "empty.txt")], capsys)
    assert code == 2 and "is empty" in one_line(err, "generate")


def test_generate_zero_new_tokens(model_dir, prompt, capsys):
    argv = ["generate", "--checkpoint", str(model_dir), "--prompt-file", str(prompt), "--max-new-tokens", "0"]
    code, err = run(argv, capsys)
    assert code == 2 and "--max-new-tokens must be >= 1" in one_line(err, "generate")


def test_generated_text_is_printed_safely():
    from infini_llama.generate import printable

    assert printable("a\x1b[2Jb\rc\x00\n\td é") == "a\\x1b[2Jb\\rc\\x00\n\td é"


def test_debug_shows_the_traceback(tmp_path, prompt, monkeypatch):
    monkeypatch.setenv("INFINI_LLAMA_DEBUG", "0")  # main sets it to 1; monkeypatch removes it after the test
    with pytest.raises(FileNotFoundError):
        main(["generate", "--debug", "--checkpoint", str(tmp_path / "nope"), "--prompt-file", str(prompt)])


# --- eval: a corrupt config.json is named, not blamed on the tokenizer --------------------------------------


def test_eval_passkey_corrupt_config_is_named(model_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(model_dir, folder)
    (folder / "manifest.json").unlink()
    (folder / "config.json").write_text("not json")
    code, err = run(["eval", "passkey", "--checkpoint", str(folder), "--out", str(tmp_path / "ev")], capsys)
    assert code == 2 and "config.json is damaged" in one_line(err, "eval passkey") and "tokenizer" not in err
    assert not (tmp_path / "ev").exists()


# --- a fast, consistent command line ------------------------------------------------------------------------


def test_the_command_line_imports_neither_torch_nor_transformers():
    code = "import sys, infini_llama.cli as c; c.build_parser([]); print(sorted({'torch', 'transformers'} & {*sys.modules}))"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_importing_the_package_still_registers_the_model_type():
    code = "import infini_llama, transformers; print(transformers.AutoConfig.for_model('infini_llama').model_type)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "infini_llama"


def test_a_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["eval", "passkey", "--checkpoint", "c", "--out", "o", "--lengths", "2x"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert (
        err.startswith("infini-llama eval passkey: error: argument --lengths")
        and "see infini-llama eval passkey --help" in err
    )


def test_version(capsys):
    from infini_llama import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"infini-llama {__version__}"


HELPS = [[], ["train"], ["eval"], ["eval", "passkey"], ["eval", "multineedle"], ["eval", "perplexity"],
         ["eval", "gates"], ["finetune"], ["finetune", "passkey"], ["report"], ["generate"], ["study"]]  # fmt: skip


@pytest.mark.parametrize("command", HELPS, ids=lambda c: "-".join(c) or "top")
def test_every_help_has_examples_and_a_description(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "infini-llama " in text.split("examples:")[1]
    assert len(text.split("usage:")[1].split("\n\n")[1].strip()) > 20, "a description under the usage line"


def test_the_names_the_parsers_offer_are_the_packages():
    from infini_llama.cli import names
    from infini_llama.eval.checkpoint import DTYPES
    from infini_llama.eval.multineedle import MULTI_TASKS
    from infini_llama.eval.passkey import DEFAULT_KEY_DIGITS, GRID_SPLITS, LENGTH_UNITS
    from infini_llama.eval.prompts import HAYSTACKS
    from infini_llama.generate import DTYPES as GENERATE_DTYPES
    from infini_llama.layers.rope import ROPE_SCALINGS
    from infini_llama.models import ATTENTIONS, PRESETS
    from infini_llama.study.config import STUDY_PRESETS
    from infini_llama.train.config import PRECISIONS, RECIPES
    from infini_llama.train.passkey import FINETUNE_HAYSTACKS, LOSSES, STUDY_DEPTHS

    assert names.TRAIN_PRESETS == tuple(sorted(RECIPES)) and names.STUDY_PRESETS == tuple(sorted(STUDY_PRESETS))
    assert (names.ATTENTIONS, names.PRECISIONS, names.HAYSTACKS) == (ATTENTIONS, PRECISIONS, HAYSTACKS)
    assert names.DTYPES == tuple(sorted(DTYPES)) and names.GENERATE_DTYPES == tuple(sorted(GENERATE_DTYPES))
    assert (names.FINETUNE_HAYSTACKS, names.FINETUNE_LOSSES, names.STUDY_DEPTHS) == (
        FINETUNE_HAYSTACKS,
        LOSSES,
        STUDY_DEPTHS,
    )
    assert (names.GRID_SPLITS, names.LENGTH_UNITS) == (tuple(GRID_SPLITS), LENGTH_UNITS)
    assert (names.ROPE_SCALINGS, names.MULTI_TASKS, names.DEFAULT_KEY_DIGITS) == (
        ROPE_SCALINGS,
        MULTI_TASKS,
        DEFAULT_KEY_DIGITS,
    )

    def built(fields: dict) -> str:
        return (
            f"{fields['num_hidden_layers']} layers, width {fields['hidden_size']:,}, vocabulary "
            f"{fields['vocab_size']:,}, segment {fields['segment_len']:,}"
        )

    assert names.TRAIN_PRESET_MODELS == {name: built(PRESETS[name]) for name in names.TRAIN_PRESET_MODELS}
    for name, text in names.STUDY_PRESET_MODELS.items():
        preset = STUDY_PRESETS[name]
        assert text == built({**PRESETS[preset.get("base") or name], **preset.get("model", {})}), name


def test_train_says_which_model_a_preset_builds():
    from infini_llama.train.cli import describe_model
    from infini_llama.train.config import recipe

    text = describe_model(recipe("tiny"))
    assert text.startswith("preset tiny of `train`: 4 layers, width 128 (4 heads), vocabulary 4,096")


def test_finetune_defaults_fit_the_device():
    from infini_llama.cli.finetune import device_recipe
    from infini_llama.train.passkey import STUDY_RECIPE

    cpu = device_recipe("cpu")
    assert cpu["seq_len"] * cpu["global_batch"] <= 4096, "a CPU step is a few thousand tokens"
    assert device_recipe("cuda") == STUDY_RECIPE


def test_the_study_ends_with_a_summary_table():
    from infini_llama.study.summary import summary_table

    cell = lambda m, rate: {"multiple": m, "length": int(256 * m), "exact": {"mean": rate}}  # noqa: E731
    results = {
        "seeds": [0, 1],
        "rows": [
            {"label": "infini", "haystacks": {"repeat": [cell(1, 1.0), cell(2, 0.75)]}},
            {"label": "full", "haystacks": {"repeat": [cell(1, 0.99), cell(2, 0.1)]}},
        ],
    }
    lines = summary_table(results).splitlines()
    assert lines[0] == "[study] exact passkey accuracy (%), classic filler, mean over 2 seeds; 1× = 256 tokens"
    assert lines[2].split() == ["infini", "100", "75"] and lines[3].split() == ["full", "99", "10"]
    assert summary_table({}) == "[study] (no passkey summary: see REPORT.md)"


def test_a_plain_install_runs_the_study_to_its_report():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("matplotlib") for dep in project["dependencies"]), "the report's figures need it"


def test_train_model_values_are_typed(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run(["train", "--set", "gate_init=high", "--out", str(out)], capsys)
    assert code == 2 and "gate_init must be a number, got 'high'" in one_line(err, "train")
    assert not out.exists()
