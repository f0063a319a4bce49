"""Study configs without running them: sweeps into arms, what each stage of an arm gets, the recipe sentence."""

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from infini_llama.cli import build_parser
from infini_llama.study import expand_arms, study_config
from infini_llama.study import stages as study_stages
from infini_llama.study.arms import counterparts, pretraining_source
from infini_llama.study.report import describe_study
from infini_llama.study.settings import study_settings, typed_sweep_value
from infini_llama.study.sweeps import parse_ablation, parse_sweep


def sweeps(*texts: str) -> dict:
    return dict(parse_sweep(t) for t in texts)


def test_sweeps_expand_into_arms():
    cfg = study_config("tiny", sweeps=sweeps("gate_activation=sigmoid,hard_sigmoid", "pretrain.lr=1e-3"))
    arms = expand_arms(cfg)
    assert [a.name for a in arms] == [
        "infini-gate_activation=sigmoid-pretrain.lr=0.001",
        "infini-gate_activation=hard_sigmoid-pretrain.lr=0.001",
        "full-pretrain.lr=0.001",
    ]
    assert arms[0].model == {"gate_activation": "sigmoid"} and arms[0].pretrain == {"lr": 0.001}
    assert arms[0].finetune == {} and arms[0].seed == 0
    assert [(i.name, b.name) for i, b in counterparts(arms)] == [
        (arms[0].name, arms[2].name),
        (arms[1].name, arms[2].name),
    ]
    gate_lr = expand_arms(study_config("tiny", sweeps=sweeps("finetune.gate_lr=0.01,none")))
    assert [a.finetune for a in gate_lr] == [{"gate_lr": 0.01}, {"gate_lr": None}, {}]
    assert [a.attention for a in gate_lr] == ["infini", "infini", "full"], "one baseline: it has no gates"


def test_a_training_sweep_names_its_stage_and_changes_only_that_stage():
    with pytest.raises(ValueError, match="say which stage it is for, pretrain.lr or finetune.lr"):
        study_config("tiny", sweeps=sweeps("lr=1e-3,2e-3"))
    cfg = study_config("tiny", sweeps=sweeps("pretrain.lr=1e-3,4e-3"))
    for arm, lr in zip(expand_arms(cfg), (1e-3, 4e-3, 1e-3, 4e-3), strict=True):
        assert study_stages.train_recipe(cfg, arm, "pretrain").lr == lr
        assert study_stages.train_recipe(cfg, arm, "finetune").lr == 2e-3, "fine-tuning keeps the study's LR"
        assert study_stages.candidate_lrs(cfg, arm) == (2e-3,)
    cfg = study_config("tiny", sweeps=sweeps("finetune.lr=5e-4"))
    assert {study_stages.candidate_lrs(cfg, arm) for arm in expand_arms(cfg)} == {(5e-4,)}
    assert study_stages.train_recipe(cfg, expand_arms(cfg)[0], "pretrain").lr == 2e-3
    with pytest.raises(ValueError, match="do not also sweep finetune.lr"):
        study_config("tiny", finetune_lr_grid=(1e-3, 2e-3), sweeps=sweeps("finetune.lr=5e-4"))


def test_a_passkey_data_sweep_changes_both_arms_fine_tuning_data_and_shares_their_pretraining(monkeypatch):
    cfg = study_config("tiny", sweeps=sweeps("passkey.curriculum_steps=0,500"))
    arms = expand_arms(cfg)
    assert [(a.name, a.passkey) for a in arms] == [
        ("infini-passkey.curriculum_steps=0", {"curriculum_steps": 0}),
        ("infini-passkey.curriculum_steps=500", {"curriculum_steps": 500}),
        ("full-passkey.curriculum_steps=0", {"curriculum_steps": 0}),
        ("full-passkey.curriculum_steps=500", {"curriculum_steps": 500}),
    ]
    assert [(i.name, b.name) for i, b in counterparts(arms)] == [(arms[0].name, arms[2].name),
                                                                  (arms[1].name, arms[3].name)]  # fmt: skip
    assert pretraining_source(arms, arms[1]) == arms[0] and pretraining_source(arms, arms[3]) == arms[2]
    seen = {}
    monkeypatch.setattr(study_stages, "PasskeyBatchSource", lambda *args, **kw: seen.setdefault(len(seen), kw))
    for arm in arms[:2]:
        study_stages.passkey_source(cfg, arm, None, study_stages.train_recipe(cfg, arm, "finetune"))
    assert [kw["curriculum_steps"] for kw in seen.values()] == [0, 500]
    assert all(kw["loss"] == "answer" and kw["key_digits"] == 5 for kw in seen.values()), "the rest from the preset"
    with pytest.raises(ValueError, match="unknown sweep key 'passkey.key_digits'"):
        study_config("tiny", sweeps=sweeps("passkey.key_digits=4,5"))
    assert typed_sweep_value("passkey.curriculum_steps", 250.0) == 250
    with pytest.raises(ValueError, match="passkey.curriculum_steps"):
        typed_sweep_value("passkey.curriculum_steps", "many")


def test_both_arms_fine_tune_on_the_study_models_segments(monkeypatch):
    """`passkey.boundary_share` and `passkey.needle_boundary_share` are set like any passkey option, and both arms'
    data take the study model's segment length (tiny's 16, not its model preset's 64); an Infini arm swept to other
    segments takes its own."""
    from infini_llama.study.settings import study_settings

    shares = study_settings(["passkey.boundary_share=0.25", "passkey.needle_boundary_share=0.5"])
    cfg = study_config("tiny", sweeps=sweeps("segment_len=16,32"), **shares)
    seen = {}
    monkeypatch.setattr(study_stages, "PasskeyBatchSource", lambda *args, **kw: seen.setdefault(len(seen), kw))
    arms = expand_arms(cfg)
    for arm in arms:
        study_stages.passkey_source(cfg, arm, None, study_stages.train_recipe(cfg, arm, "finetune"))
    got = [(a.attention, kw["segment_len"], kw["boundary_share"], kw["needle_boundary_share"])
           for a, kw in zip(arms, seen.values(), strict=True)]  # fmt: skip
    assert got == [("infini", 16, 0.25, 0.5), ("infini", 32, 0.25, 0.5), ("full", 16, 0.25, 0.5)]
    with pytest.raises(ValueError, match="passkey.boundary_share"):
        study_settings(["passkey.boundary_share=some"])


def test_lr_grid_keeps_the_budget_and_the_schedule_shape():
    cfg = study_config("tiny", finetune_lr_grid=(1e-3, 4e-3))
    arm = expand_arms(cfg)[1]
    runs = [study_stages.finetune_recipe(cfg, arm, lr) for lr in study_stages.candidate_lrs(cfg, arm)]
    assert [r.lr for r in runs] == [1e-3, 4e-3] and [r.min_lr for r in runs] == pytest.approx([1e-4, 4e-4])
    assert len({(r.steps, r.batch_size, r.seq_len, r.warmup_steps, r.seed) for r in runs}) == 1


@pytest.mark.parametrize("finetune_len", [256, 128])
def test_a_seed_sweep_seeds_every_stage_of_its_arms(tmp_path, monkeypatch, finetune_len):
    """Pretraining, fine-tuning data, its key exclusion, the LR-selection prompts and every grid use the arm's
    seed (before, recipe() got seed twice and the data and grids used the study's seed)."""
    cfg = study_config("tiny", eval_haystacks=("repeat",), eval_split="validation", sweeps=sweeps("seed=3"),
                       finetune={"seq_len": finetune_len})  # fmt: skip
    arm = next(a for a in expand_arms(cfg) if a.attention == "full")
    assert arm.name == "full-seed=3" and arm.seed == 3
    seen = {}
    result = SimpleNamespace(stopped_by=None, val_loss=1.0, copy_loss=1.0, tokens_per_s=1.0, step=1, seconds={})
    monkeypatch.setattr(
        study_stages, "train", lambda tcfg, **kw: (seen.setdefault(Path(tcfg.out).name, tcfg), result)[1]
    )

    class Source:
        def __init__(self, tokenizer, *args, **kwargs):
            seen.setdefault("source", kwargs)

        def selection_prompts(self, length, count):
            seen["selection"] = length
            return []

    monkeypatch.setattr(study_stages, "PasskeyBatchSource", Source)
    monkeypatch.setattr(study_stages, "load_eval_tokenizer", lambda path: None)
    monkeypatch.setattr(study_stages, "load_model", lambda path, device=None: None)
    monkeypatch.setattr(study_stages, "ChunkedLM", lambda model: None)
    monkeypatch.setattr(study_stages, "evaluate_passkey", lambda *args, **kwargs: [{"exact": True, "digit_acc": 1.0}])
    monkeypatch.setattr(
        study_stages, "run_passkey_grid", lambda model, tok, grid, out, **kw: seen.setdefault(out.name, grid)
    )
    root = tmp_path / arm.name
    for name, run in study_stages.arm_stages(cfg, arm, root, "cpu", False):
        if name.startswith("passkey") or name in ("pretrain", "select") or name.startswith("finetune"):
            info = run()
            if info is not None:
                root.mkdir(parents=True, exist_ok=True)
                (root / f"{name}.done").write_text(json.dumps(info))
    assert seen["pretrain"].seed == 3 and seen["finetune-lr=0.002"].seed == 3
    assert seen["source"]["seed"] == 3 and seen["source"]["exclude_eval_seed"] == 3
    # The LR is chosen at the length it was fine-tuned at (the 302M study: 4,096 of a training length of 8,192).
    assert seen["selection"] == finetune_len
    assert seen["passkey-repeat"].seed == 3 and seen["passkey-rope-repeat"].seed == 3
    assert seen["passkey-repeat"].split == "validation", "a recipe is chosen on the validation grids"
    assert seen["passkey-rope-repeat"].rope_scaling["original_max_position_embeddings"] == 256
    with pytest.raises(ValueError, match="not both"):
        study_config("tiny", seeds=(0, 1), sweeps=sweeps("seed=3"))


def test_an_arms_evaluations_load_its_model_once(tmp_path, monkeypatch):
    """The LR selection and every evaluation stage after it share one loaded model per checkpoint."""
    cfg = study_config("tiny", eval_haystacks=("repeat", "book"), finetune_lr_grid=(1e-3, 4e-3))
    arm = next(a for a in expand_arms(cfg) if a.attention == "infini")
    loads, used = [], set()
    monkeypatch.setattr(study_stages, "load_model", lambda path, device=None: loads.append(path) or object())
    monkeypatch.setattr(study_stages, "load_eval_tokenizer", lambda path: None)
    monkeypatch.setattr(study_stages, "passkey_source", lambda *args: SimpleNamespace(selection_prompts=lambda *a: []))
    monkeypatch.setattr(study_stages, "ChunkedLM", lambda model: model)
    rows = iter([[{"exact": False, "digit_acc": 0.5}], [{"exact": True, "digit_acc": 1.0}]])
    monkeypatch.setattr(study_stages, "evaluate_passkey", lambda *args, **kwargs: next(rows))
    for name in ("run_passkey_grid", "perplexity_by_position", "run_gates"):
        monkeypatch.setattr(study_stages, name, lambda model, *args, **kwargs: used.add(id(model)))
    monkeypatch.setattr(study_stages, "held_out_book", lambda: SimpleNamespace(text="", name="book"))
    root = tmp_path / arm.name
    for lr in study_stages.candidate_lrs(cfg, arm):
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{study_stages.finetune_dir(root, lr).name}.done").write_text("{}")
    for name, run in study_stages.arm_stages(cfg, arm, root, "cpu", False):
        if name == "select" or name.startswith("passkey") or name in ("perplexity", "gates"):
            info = run()
            if name == "select":
                (root / "select.done").write_text(json.dumps(info))
    chosen = study_stages.finetune_dir(root, 4e-3) / "final"
    assert loads == [study_stages.finetune_dir(root, 1e-3) / "final", chosen], "each LR's once; the chosen kept"
    assert len(used) == 1


def test_the_recipe_sentence_counts_the_global_batch():
    text = describe_study(study_config("paper-300m"))
    assert "30000 steps of 4 × 8192 tokens" in text, "pretraining: global batch 4, one sequence per pass"
    assert "500 steps of 64 × 4096 tokens" in text, "fine-tuning: global batch 64 in passes of 8"
    assert "each arm at LRs 3.75e-05, 7.5e-05, 0.00015" in text
    assert "classic filler (`repeat`), held-out text (`book`)" in text and "melville__moby_dick" in text


def test_study_command_line(tmp_path):
    parse = build_parser(["study"]).parse_args
    args = parse(["study", "--out", "o", "--seeds", "0,1,2,3,4", "--set", "finetune_lr_grid=1e-3,2e-3"])
    assert args.seeds == [0, 1, 2, 3, 4] and args.seed is None
    with pytest.raises(SystemExit):
        parse(["study", "--out", "o", "--seeds", "0,1", "--seed", "2"])
    assert study_settings(["pretrain.steps=10", "eval_multiples=1,2", "eval_rope_scaling.rope_type=yarn"]) == {
        "pretrain": {"steps": 10},
        "eval_multiples": (1.0, 2.0),
        "eval_rope_scaling": {"rope_type": "yarn"},
    }
    cfg = study_config("tiny", eval_rope_scaling={"rope_type": "yarn", "factor": 8})
    assert cfg.eval_rope_scaling == {"rope_type": "yarn", "factor": 8}
    assert study_config("tiny", eval_rope_scaling=None).eval_rope_scaling is None


def test_several_rope_scaled_rows_each_get_a_grid_and_a_label():
    overrides = study_settings(["eval_rope_scaling=dynamic,yarn:16"])
    assert overrides == {"eval_rope_scaling": [{"rope_type": "dynamic"}, {"rope_type": "yarn", "factor": 16.0}]}
    cfg = study_config("tiny", **overrides)
    full, infini = (arm for arm in expand_arms(cfg) if arm.name == "full"), expand_arms(cfg)[0]
    full = next(full)
    rows = study_stages.rope_rows(cfg, full)
    assert list(rows) == ["passkey-rope", "passkey-rope2"] == study_stages.passkey_tasks(cfg, full)[1:]
    assert rows["passkey-rope"] == {"rope_type": "dynamic", "factor": 1.0, "original_max_position_embeddings": 256}
    assert rows["passkey-rope2"]["factor"] == 16.0 and rows["passkey-rope2"]["rope_type"] == "yarn"
    labels = [study_stages.passkey_label(full, task, cfg) for task in rows]
    assert labels == ["full (RoPE dynamic NTK)", "full (RoPE YaRN ×16)"]
    assert study_stages.rope_rows(cfg, infini) == {} and infini.attention == "infini"
    # One scaling, as a dict (the default) or alone on the command line, is the one row "passkey-rope".
    assert list(study_stages.rope_rows(study_config("tiny", **study_settings(["eval_rope_scaling=yarn:4"])), full))
    assert list(study_stages.rope_rows(study_config("tiny"), full)) == ["passkey-rope"]
    assert study_stages.rope_rows(study_config("tiny", eval_rope_scaling=None), full) == {}
    with pytest.raises(ValueError, match="eval_rope_scaling must be"):
        study_config("tiny", eval_rope_scaling=[{"rope_type": "yarn"}, {"rope_type": "yarn"}])
    with pytest.raises(ValueError, match="eval_rope_scaling must be"):
        study_config("tiny", eval_rope_scaling=[])
    with pytest.raises(ValueError, match="a number"):
        study_settings(["eval_rope_scaling=yarn:big"])
    with pytest.raises(ValueError, match="set it whole"):
        study_config("mini", **study_settings(["eval_rope_scaling.factor=8"]))
    # YaRN stretched by each prompt's length: one row for every length.
    by_length = study_config("tiny", **study_settings(["eval_rope_scaling=dynamic,yarn:length"]))
    rows = study_stages.rope_rows(by_length, full)
    assert rows["passkey-rope2"]["per_length"] is True
    assert study_stages.passkey_label(full, "passkey-rope2", by_length) == "full (RoPE YaRN ×length)"
    with pytest.raises(ValueError, match="only for yarn"):
        study_config("tiny", eval_rope_scaling=[{"rope_type": "dynamic", "per_length": True}])
    args = build_parser(["eval"]).parse_args(["eval", "passkey", "--checkpoint", "c", "--out", "o",
                                              "--rope-scaling", "yarn", "--rope-factor", "length"])  # fmt: skip
    assert args.rope_factor == "length"


def test_a_presets_lr_grid_can_be_switched_off_to_sweep_the_lr():
    overrides = study_settings(["finetune_lr_grid=none"])
    assert overrides == {"finetune_lr_grid": ()} == study_settings(["finetune_lr_grid="])
    cfg = study_config("mini", **overrides, sweeps=sweeps("finetune.lr=1e-4,3e-4"))
    assert [study_stages.candidate_lrs(cfg, arm) for arm in expand_arms(cfg)] == [(1e-4,), (3e-4,)] * 2
    with pytest.raises(ValueError, match="eval_multiples cannot be empty"):
        study_settings(["eval_multiples=none"])


def test_bad_study_arguments():
    with pytest.raises(ValueError, match="unknown preset"):
        study_config("huge")
    with pytest.raises(ValueError, match="unknown sweep key"):
        study_config("tiny", sweeps={"segment_length": [1]})
    with pytest.raises(ValueError, match="KEY=V1,V2"):
        parse_sweep("segment_len")
    with pytest.raises(ValueError, match="seeds must be"):
        study_config("tiny", seeds=(1, 1))
    with pytest.raises(ValueError, match="eval_haystacks must be"):
        study_config("tiny", eval_haystacks=("moby",))
    with pytest.raises(ValueError, match="finetune_lr_grid must hold"):
        study_config("tiny", finetune_lr_grid=(1e-3, -1.0))
    with pytest.raises(ValueError, match="eval_rope_scaling must be"):
        study_config("tiny", eval_rope_scaling={"rope_type": "linear"})
    with pytest.raises(ValueError, match="each seed's study has one"):
        _ = study_config("tiny", seeds=(0, 1)).seed


def test_the_control_arm_shares_the_infini_arms_segments_and_recipe():
    keys = ("segment_len=8,16", "gate_init=0,2", "gate_trainable=true,false", "pretrain.lr=1e-3")
    cfg = study_config("tiny", control_arm=True, sweeps=sweeps(*keys))
    arms = expand_arms(cfg)
    names = [a.name for a in arms]
    assert len([n for n in names if n.startswith("infini-")]) == 8
    assert names[8:] == [
        "full-pretrain.lr=0.001",
        "local-segment_len=8-pretrain.lr=0.001",
        "local-segment_len=16-pretrain.lr=0.001",
    ], "one baseline; one control per segment length: it has no gates"
    local = arms[9]
    assert local.attention == "local" and local.model == {"segment_len": 8} and local.pretrain == {"lr": 0.001}
    # Each Infini arm is compared with the baseline, then with the control of its own segment length.
    pairs = [(i.name, o.name) for i, o in counterparts(arms)]
    assert len(pairs) == 16 and pairs[:2] == [(names[0], names[8]), (names[0], names[9])]
    assert all(o.model.get("segment_len") == i.model["segment_len"] for i, o in counterparts(arms)[1::2])
    assert study_stages.passkey_tasks(cfg, local) == ["passkey"], "no memory-off row, no RoPE row"
    assert study_stages.train_recipe(cfg, local, "finetune") == study_stages.train_recipe(cfg, arms[0], "finetune")
    assert "The local control is the Infini arm's segment-local attention" in describe_study(cfg)
    assert [a.attention for a in expand_arms(study_config("tiny"))] == ["infini", "full"], "off by default"


def test_the_control_arm_and_frozen_gate_from_the_command_line(monkeypatch):
    from infini_llama.cli import main
    from infini_llama.study import runner

    studies = []
    monkeypatch.setattr(runner, "run_study", lambda cfg, out, **kwargs: studies.append(cfg))
    for extra in (["--control-arm"], ["--set", "control_arm=true"]):
        assert (
            main(["study", "--out", "o", *extra, "--sweep", "gate_trainable=false", "--set", "model.gate_init=0"]) == 0
        )
        assert studies[-1].control_arm is True and studies[-1].model["gate_init"] == 0
        arms = expand_arms(studies[-1])
        assert [(a.attention, a.model) for a in arms] == [
            ("infini", {"gate_trainable": False}),
            ("full", {}),
            ("local", {}),
        ]
    with pytest.raises(ValueError, match="control_arm must be true or false"):
        study_config("tiny", control_arm="yes")


def test_a_study_folder_from_before_the_control_arm_continues(tmp_path):
    import dataclasses

    from infini_llama.study.runner import STUDY_FILE, _claim_folder

    cfg = study_config("tiny")
    saved = json.loads(json.dumps(dataclasses.asdict(cfg)))
    del saved["control_arm"]
    (tmp_path / STUDY_FILE).write_text(json.dumps(saved))
    _claim_folder(tmp_path, cfg, overwrite=False)  # the same study: no error
    with pytest.raises(ValueError, match="differs in: control_arm"):
        _claim_folder(tmp_path, study_config("tiny", control_arm=True), overwrite=False)


def test_layer_off_multiple_is_an_evaluated_length_or_none():
    assert study_config("tiny").layer_off_multiple == 2.0
    assert study_config("tiny", layer_off_multiple=None).layer_off_multiple is None
    with pytest.raises(ValueError, match="layer_off_multiple must be one of eval_multiples"):
        study_config("tiny", layer_off_multiple=3)


def test_ablations_add_one_arm_each_and_share_the_arms_they_do_not_change():
    texts = ["gate_trainable=false", "gate_init=-2", "pretrain.gate_lr=none+finetune.gate_lr=none", "segment_len=32"]
    ablations = [parse_ablation(t) for t in texts]
    assert ablations[2] == {"pretrain.gate_lr": None, "finetune.gate_lr": None}
    cfg = study_config("tiny", ablations=ablations, control_arm=True)
    arms = expand_arms(cfg)
    assert [a.name for a in arms] == [
        "infini",
        "infini-gate_trainable=False",
        "infini-gate_init=-2",
        "infini-pretrain.gate_lr=none-finetune.gate_lr=none",
        "infini-segment_len=32",
        "full",
        "local",
        "local-segment_len=32",
    ], "one baseline (it has none of these values); the control repeats only for the segment it shares"
    by_name = {a.name: a for a in arms}
    gate_lr = by_name["infini-pretrain.gate_lr=none-finetune.gate_lr=none"]
    assert gate_lr.pretrain == {"gate_lr": None} and gate_lr.finetune == {"gate_lr": None} and gate_lr.model == {}
    assert study_stages.train_recipe(cfg, gate_lr, "finetune").gate_lr is None
    assert study_stages.train_recipe(cfg, by_name["infini"], "finetune").gate_lr == 0.1
    pairs = {(i.name, o.name) for i, o in counterparts(arms)}
    assert ("infini-segment_len=32", "full") in pairs and ("infini-segment_len=32", "local-segment_len=32") in pairs
    assert ("infini-gate_init=-2", "local") in pairs
    # With a sweep, each ablation repeats over the sweep's values.
    swept = expand_arms(study_config("tiny", ablations=[{"gate_init": 2}], sweeps=sweeps("finetune.lr=1e-3,2e-3")))
    assert [a.name for a in swept] == [
        "infini-finetune.lr=0.001", "infini-finetune.lr=0.002", "infini-finetune.lr=0.001-gate_init=2",
        "infini-finetune.lr=0.002-gate_init=2", "full-finetune.lr=0.001", "full-finetune.lr=0.002",
    ]  # fmt: skip
    # An ablation that changes an Infini-only value and a shared one gives the baseline only the shared one, once.
    mixed = study_config("tiny", ablations=[parse_ablation("finetune.steps=30"),
                                            parse_ablation("memory_rope=true+finetune.steps=30")])  # fmt: skip
    assert [a.name for a in expand_arms(mixed)] == [
        "infini", "infini-finetune.steps=30", "infini-memory_rope=True-finetune.steps=30", "full",
        "full-finetune.steps=30",
    ]  # fmt: skip
    pairs = {(i.name, o.name) for i, o in counterparts(expand_arms(mixed))}
    assert ("infini-memory_rope=True-finetune.steps=30", "full-finetune.steps=30") in pairs
    for bad, match in (
        ([{"lr": 1e-3}], "say which stage"),
        ([{}], "at least one value"),
        ([{"seed": 1}], "not an ablation"),
        ([{"gate_init": 2, "nonsense": 1}], "unknown sweep key"),
    ):
        with pytest.raises(ValueError, match=match):
            study_config("tiny", ablations=bad)
    with pytest.raises(ValueError, match="ablate it or sweep it"):
        study_config("tiny", ablations=[{"gate_init": 2}], sweeps=sweeps("gate_init=0,1"))
    with pytest.raises(ValueError, match="--ablate takes KEY=VALUE"):
        parse_ablation("gate_init=1,2")
    args = build_parser(["study"]).parse_args(
        ["study", "--out", "x", "--ablate", "gate_init=2", "--ablate", "gate_trainable=false"]
    )
    assert args.ablate == ["gate_init=2", "gate_trainable=false"]


def test_a_study_started_before_a_field_existed_continues(tmp_path):
    from infini_llama.study.runner import StudyError, _claim_folder

    cfg = study_config("tiny")
    saved = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for newer in ("ablations", "layer_off_multiple", "control_arm"):  # fields added after studies had run
        del saved[newer]
    (tmp_path / "study.json").write_text(json.dumps(saved))
    _claim_folder(tmp_path, cfg, overwrite=False)  # the missing fields read as their defaults
    with pytest.raises(StudyError, match="differs in: ablations"):
        _claim_folder(tmp_path, study_config("tiny", ablations=[{"gate_init": 2}]), overwrite=False)


@pytest.mark.parametrize(
    "preset,pretrain,finetune",
    [("mini", 16, 16), ("paper-300m", 4, 64), ("paper-short", 4, 64), ("paper-h200", 4, 8)],
    ids=str,
)
def test_gpu_presets_keep_their_global_batch_in_as_many_passes_as_memory_needs(preset, pretrain, finetune):
    cfg = study_config(preset)
    arm = expand_arms(cfg)[0]
    for stage, sequences in (("pretrain", pretrain), ("finetune", finetune)):
        tcfg = study_stages.train_recipe(cfg, arm, stage)
        assert (tcfg.batch_size, tcfg.global_batch) == (None, sequences), "automatic, the recipe's global batch"
    tiny = study_config("tiny")
    tiny_recipes = [study_stages.train_recipe(tiny, expand_arms(tiny)[0], s) for s in ("pretrain", "finetune")]
    assert [r.batch_size for r in tiny_recipes] == [16, 8], "the CPU study: fixed passes"


def test_a_study_preset_can_build_on_a_model_preset_of_another_name():
    cfg = study_config("paper-short")
    assert cfg.preset == "paper-short" and cfg.model_preset == "paper-300m"
    arm = expand_arms(cfg)[0]
    pre, fin = (study_stages.train_recipe(cfg, arm, stage) for stage in ("pretrain", "finetune"))
    assert pre.preset == fin.preset == "paper-300m" and pre.seq_len == 8192 and fin.seq_len == 4096
    assert pre.steps * pre.global_batch * pre.seq_len == 300 * 4 * 8192, "the token budget the preset states"
    assert study_stages.eval_lengths(cfg, arm) == [1024, 2048, 4096, 8192, 16384]
    assert "300 steps of 4 × 8192 tokens" in describe_study(cfg)
    # Its first run taught neither arm with the study's loss on every token over 100 steps; the answer carries it.
    assert cfg.passkey["loss"] == "answer" and study_config("paper-300m").passkey["loss"] == "all"
    assert study_config("mini").model_preset == "mini"
    one = study_config("paper-h200")  # one H200: half the study's fine-tuning tokens, one LR, the mini recipe's gates
    assert one.model_preset == "paper-300m" and not one.finetune_lr_grid and one.layer_off_multiple is None
    fin = study_stages.train_recipe(one, expand_arms(one)[0], "finetune")
    assert fin.steps * fin.global_batch * fin.seq_len == 2000 * 8 * 4096 and fin.gate_lr == 0.1
    # The screened recipe (reports/paper-h200-screen/, lease F): the LR held, then decayed over the last 500 steps;
    # pretraining on half-copied windows; most needles cut by a segment boundary.
    assert (fin.lr, fin.min_lr, fin.decay_steps) == (1e-4, 1e-5, 500)
    assert study_stages.train_recipe(one, expand_arms(one)[0], "pretrain").repeat_fraction == 0.5
    assert (one.passkey["boundary_share"], one.passkey["needle_boundary_share"]) == (0.3, 0.7)
    assert study_stages.eval_lengths(one, expand_arms(one)[0]) == [1024, 2048, 4096, 8192, 16384]
    # A checkpoint at each stage's end only (3.6 GB each; the weights stay on the leased machine).
    assert fin.save_every == 0 and study_stages.train_recipe(one, expand_arms(one)[0], "pretrain").save_every == 0
    # Evaluated in TF32, batches of 65,536 tokens (benchmarks/results/eval_precision_h200.json).
    assert one.eval_precision == "tf32" and one.eval_batch_tokens == 65536
    with pytest.raises(ValueError, match="unknown model preset 'nano'"):
        study_config("tiny", base="nano")


def test_gate_and_drop_are_related_within_layers_not_by_layer_identity():
    from infini_llama.study.results import within_layer_association

    def seeds(rows):  # rows[seed][layer] = (gate, drop)
        return [{"layers": [{"gate_mean": g, "drop": d} for g, d in layers]} for layers in rows]

    # Layer identity alone (the same gate and drop in every seed, up to noise unrelated to the gate): no relation.
    rng = np.random.default_rng(1)
    identity = [[(0.9, 90 + rng.normal()), (0.1, 10 + rng.normal()), (0.5, 50 + rng.normal())] for _ in range(5)]
    for s, layers in enumerate(identity):
        identity[s] = [(g + 0.01 * rng.normal(), d) for g, d in layers]
    found = within_layer_association(seeds(identity))
    assert found["points"] == 15 and found["p"] > 0.05
    # Within each layer, the seed with the higher gate loses more: related.
    related = [[(0.9 + e, 90 + 200 * e), (0.1 + e, 10 + 200 * e), (0.5 - e, 50 - 200 * e)]
               for e in (-0.04, -0.02, 0.0, 0.02, 0.04)]  # fmt: skip
    found = within_layer_association(seeds(related))
    assert found["r"] == pytest.approx(1.0) and found["p"] < 0.01
    assert within_layer_association(seeds(related[:1])) is None


def test_a_study_of_several_seeds_is_checked_seed_by_seed():
    from infini_llama.study.settings import check_study

    check_study(study_config("tiny", seeds=(0, 1, 2)))
    with pytest.raises(ValueError, match="finetune of arm"):
        check_study(study_config("tiny", seeds=(0, 1), finetune={"steps": 0}))
    check_study(study_config("tiny", pretrain={"repeat_fraction": 0.25}))  # windows of text: pretraining
    with pytest.raises(ValueError, match="finetune of arm .*repeat_fraction .* pretraining only"):
        check_study(study_config("tiny", finetune={"repeat_fraction": 0.25}))  # passkey prompts: refused up front


def test_a_seed_whose_grid_is_incomplete_is_named_not_silently_dropped():
    from infini_llama.study.results import across_seeds

    def seed_results(rate):
        grid = {"by_length": [{"length": 256, "exact": {"rate": rate}, "digit_acc": {"mean": rate}}]}
        haystacks = {"repeat": grid} if rate is not None else {}
        return {
            "environments": [], "leads": [], "comparisons": [],
            "arms": {"full": {"attention": "full", "selection": None,
                              "passkey": {"passkey": {"label": "full", "haystacks": haystacks}}}},
        }  # fmt: skip

    cfg = study_config("tiny", seeds=(0, 1, 2), eval_multiples=(1,), layer_off_multiple=None)
    summary = across_seeds(cfg, {0: seed_results(1.0), 1: seed_results(None), 2: seed_results(0.5)})
    (length,) = summary["rows"][0]["haystacks"]["repeat"]
    assert length["exact"]["mean"] == pytest.approx(0.75) and length["missing_seeds"] == [1]


def test_each_lead_counts_the_verdicts_of_its_own_row():
    """The baseline's plain grid and the local control's share the task name "passkey": a lead over one must not
    count the other's verdicts."""
    from infini_llama.study.results import leads

    cfg = study_config("tiny", control_arm=True, eval_multiples=(1, 2, 4), eval_haystacks=("repeat",),
                       eval_rope_scaling=None)  # fmt: skip
    arms = expand_arms(cfg)
    names = {arm.attention: arm.name for arm in arms}
    grid = {"by_length": [{"exact": {"rate": r}} for r in (1.0, 0.5, 0.25)]}
    entries = {n: {"passkey": {"passkey": {"label": n, "haystacks": {"repeat": grid}}}} for n in names.values()}
    verdicts = {"full": ("ahead", "ahead"), "local": ("behind", "level")}
    compared = [
        {"infini": names["infini"], "other": names[other], "task": "passkey", "haystack": "repeat", "multiple": m,
         "verdict": v}
        for other, pair in verdicts.items() for m, v in zip((2, 4), pair, strict=True)
    ]  # fmt: skip
    found = {d["baseline"]: (d["ahead"], d["behind"], d["lengths"]) for d in leads(cfg, arms, entries, compared)}
    assert found == {names["full"]: (2, 0, 2), names["local"]: (0, 1, 2)}
