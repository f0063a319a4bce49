"""File names of report figures."""

from infini_llama.eval.markdown import slug


def test_slugs_of_ablation_labels_stay_apart():
    labels = [
        "infini-gate_init=-2", "infini-gate_init=2", "infini-gate_init=-2 (memory off in layer 0)",
        "infini-gate_init=2 (memory off in layer 0)", "infini-pretrain.gate_lr=none-finetune.gate_lr=none",
        "full (RoPE dynamic NTK)", "infini (memory off)",
    ]  # fmt: skip
    names = [slug(label) for label in labels]
    assert len(set(names)) == len(labels), names
    assert slug("full (RoPE dynamic NTK)") == "full-rope-dynamic-ntk"
    assert all(c.isalnum() or c in "._=+-" for name in names for c in name)
    assert slug("(( ))") == "run"
