"""The trainer on the data layer: the default corpus + built-in BPE path, local files, the vocabulary rule,
and the default batch source's contract."""

import json

import pytest
import torch
from train_helpers import Wrapped, window_source

from infini_llama import InfiniLlamaForCausalLM
from infini_llama.data import load_tokenizer, prepare_tokens
from infini_llama.train import BatchSource, TokenWindowSource, read_metrics, train
from infini_llama.train.setup import ConfigError


def test_default_corpus_and_builtin_tokenizer(micro_cfg, tmp_path):
    """No --data, no --tokenizer: the embedded corpus with a BPE trained at the model's vocab_size (512 here
    to keep the tokenizer quick), validation from the held-out split."""
    cfg = micro_cfg(data=None, tokenizer=None, steps=2, eval_every=0, model={"vocab_size": 512})
    result = train(cfg)
    run = json.loads((result.run_dir / "run.json").read_text())
    tokenizer = load_tokenizer(None, vocab_size=512, cache_dir=cfg.cache_dir)
    data = prepare_tokens(tokenizer, cache_dir=cfg.cache_dir)
    assert run["data"]["num_tokens"] == data.num_train_tokens > 1_000_000  # the whole corpus, not a sample
    assert run["model"]["vocab_size"] == 512 and run["model"]["eos_token_id"] == data.eos_token_id
    final = load_tokenizer(str(result.final_dir))
    assert len(final) == 512 and final.eos_token == "<|endoftext|>"
    assert torch.isfinite(torch.tensor(list(result.losses.values()))).all()


def test_copy_batches_repeat_the_validation_windows_and_score_the_copyable_tokens(micro_cfg):
    """`copy_batches()`: each validation window with its first half twice, labelled from the second token of the
    copy on (the first has no predecessor in the first half to copy from), on every process's share alike."""
    cfg = micro_cfg()
    data = prepare_tokens(load_tokenizer(cfg.tokenizer), data=cfg.data, cache_dir=cfg.cache_dir)
    for rank in range(2):
        source = TokenWindowSource(data, seq_len=33, batch_size=3, grad_accum=1, rank=rank, world_size=2,
                                   eval_windows=8)  # fmt: skip
        pairs = list(zip(source.validation_batches(), source.copy_batches(), strict=True))
        assert sum(len(x) for (x, _), _ in pairs) == 4
        for (plain, _), (copied, labels) in pairs:
            assert torch.equal(copied[:, :17], plain[:, :17]) and torch.equal(copied[:, 17:], plain[:, :16])
            assert (labels[:, :18] == -100).all() and torch.equal(labels[:, 18:], copied[:, 18:])


def test_training_on_text_logs_the_loss_on_copied_text_as_a_float64_reference_has_it(micro_cfg, tmp_path):
    """Each validation of a run on text also scores the copied windows (`copy_loss` in metrics.jsonl and the
    result); the last one is the final model's loss on them, summed in float64. A source without `copy_batches`
    (passkey prompts, a run's own batches) logs none."""
    cfg = micro_cfg(steps=4, eval_every=2, save_every=0)
    result = train(cfg)
    records = read_metrics(result.run_dir / "metrics.jsonl", "val")
    assert [r["step"] for r in records] == [0, 2, 4] and all(r["copy_loss"] > 0 for r in records)
    assert result.copy_loss == records[-1]["copy_loss"]
    model = InfiniLlamaForCausalLM.from_pretrained(result.final_dir).double().eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for input_ids, labels in window_source(cfg).copy_batches():
            logits = model(input_ids=input_ids).logits[:, :-1]
            scored = labels[:, 1:] != -100
            total += torch.nn.functional.cross_entropy(logits[scored], labels[:, 1:][scored], reduction="sum").item()
            count += int(scored.sum())
    assert result.copy_loss == pytest.approx(total / count, rel=1e-5)
    own = train(
        micro_cfg(steps=2, eval_every=0, save_every=0, out=str(tmp_path / "own")), batches=Wrapped(window_source(cfg))
    )
    assert own.copy_loss is None and "copy_loss" not in read_metrics(own.run_dir / "metrics.jsonl", "val")[-1]


@pytest.mark.parametrize("repeat_fraction", [0.0, 1.0])
def test_the_loss_on_copied_text_falls_far_below_the_validation_loss_only_once_the_model_copies(
    micro_cfg, tmp_path, repeat_fraction
):
    """Full attention trained on windows whose second half repeats the first learns to copy: its loss on copied
    text falls far below its validation loss (about 0.2 against 4.9 here, torch 2.13 CPU); on plain text the
    two stay about the same. The metric measures copying, not the windows."""
    cfg = micro_cfg(
        out=str(tmp_path / f"r{repeat_fraction}"), seq_len=64, batch_size=16, steps=200, warmup_steps=20, lr=3e-3,
        eval_every=0, save_every=0, eval_windows=16, repeat_fraction=repeat_fraction,
        model={"hidden_size": 64, "intermediate_size": 128, "attention": "full"}, compile=False,
    )  # fmt: skip
    result = train(cfg)
    if repeat_fraction:
        assert result.copy_loss < 0.5 * result.val_loss
    else:
        assert result.copy_loss == pytest.approx(result.val_loss, rel=0.15)


def test_a_run_on_text_says_how_many_times_it_reads_the_training_split(micro_cfg, capsys):
    """The windows a run reads over those its training split holds, counted on the sampler's own windows, whichever
    way a step is split into micro-batches and processes."""
    cfg = micro_cfg(steps=3, eval_every=0, save_every=0)
    train(cfg)
    source = window_source(cfg)
    windows = source.sampler.num_windows
    assert windows == len({int(o) for step in range(windows) for o in source.sampler.offsets(step, 1)})
    times = 3 * cfg.batch_size / windows
    line = f"data: {source.data.num_train_tokens:,} training tokens in {windows:,} windows of 32; 3 steps of 4 windows "
    assert line + f"read them {times:.3g} times" in capsys.readouterr().out
    for rank in range(2):  # two processes of two sequences, each step in two micro-batches of one
        data = source.data
        split = TokenWindowSource(data, seq_len=32, batch_size=2, grad_accum=1, rank=rank, world_size=2).split(1, 2)
        assert split.reading(3).endswith(f"3 steps of 4 windows read them {times:.3g} times")


def test_model_vocabulary_follows_the_tokenizer_unless_fixed(micro_cfg):
    result = train(micro_cfg(steps=1, eval_every=0, repeat_fraction=0.5))  # the 300-token test tokenizer
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["model"]["vocab_size"] == 300  # vocab_size not set
    assert run["data"]["repeat_fraction"] == 0.5  # the trainer's windows are the ones the config asks for


def test_window_source_is_a_pure_function_of_step_and_rank(micro_cfg):
    cfg = micro_cfg()
    data = prepare_tokens(load_tokenizer(cfg.tokenizer), data=cfg.data, cache_dir=cfg.cache_dir)
    one = TokenWindowSource(data, seq_len=32, batch_size=4, grad_accum=1)
    assert isinstance(one, BatchSource)
    input_ids, labels = one.batch(5, 0)
    assert input_ids.shape == (4, 32) and input_ids.dtype == torch.long
    assert torch.equal(labels, input_ids)  # aligned: the model shifts
    assert torch.equal(one.batch(5, 0)[0], TokenWindowSource(data, 32, 4, 1).batch(5, 0)[0])
    # The windows of a step are the same set for 1 process × 4, 2 processes × 2, or 2 accumulation steps × 2.
    ranks = [TokenWindowSource(data, 32, 2, 1, rank=r, world_size=2).batch(5, 0)[0] for r in range(2)]
    accum = [TokenWindowSource(data, 32, 2, 2).batch(5, m)[0] for m in range(2)]
    rows = {tuple(row.tolist()) for row in input_ids}
    assert rows == {tuple(row.tolist()) for row in torch.cat(ranks)}
    assert rows == {tuple(row.tolist()) for row in torch.cat(accum)}
    validation = list(one.validation_batches())
    assert sum(len(x) for x, _ in validation) == 32  # eval_windows
    assert all(torch.equal(a[0], b[0]) for a, b in zip(validation, one.validation_batches(), strict=True))
    # 3 windows asked of 2 processes: 2, one each, so every process runs the same number of forward passes
    shares = [
        list(TokenWindowSource(data, 32, 4, 1, rank=r, world_size=2, eval_windows=3).validation_batches())
        for r in range(2)
    ]
    assert [len(batches[0][0]) for batches in shares] == [1, 1]
    assert not torch.equal(shares[0][0][0], shares[1][0][0])


def test_repeated_windows_copy_their_first_half_whichever_the_split(micro_cfg):
    """`repeat_fraction`: that share of the training windows (by global sample number) hold their first half
    twice; the rest, and every validation window, are the plain windows of the corpus."""
    cfg = micro_cfg()
    data = prepare_tokens(load_tokenizer(cfg.tokenizer), data=cfg.data, cache_dir=cfg.cache_dir)
    plain = TokenWindowSource(data, seq_len=33, batch_size=8, grad_accum=1)
    mixed = TokenWindowSource(data, seq_len=33, batch_size=8, grad_accum=1, repeat_fraction=0.25)
    copies = 0
    for step in range(50):
        a, b = plain.batch(step, 0)[0], mixed.batch(step, 0)[0]
        same = (a == b).all(dim=1)
        copied = (b[:, 17:] == b[:, :16]).all(dim=1)  # half = 17 of 33: the last 16 tokens repeat the first 16
        assert (same | copied).all() and torch.equal(a[:, :17], b[:, :17])
        copies += int((~same).sum())
    assert 0.2 < copies / 400 < 0.3
    accum = torch.cat([TokenWindowSource(data, 33, 4, 2, repeat_fraction=0.25).batch(7, m)[0] for m in range(2)])
    assert torch.equal(accum, mixed.batch(7, 0)[0])
    pairs = zip(plain.validation_batches(), mixed.validation_batches(), strict=True)
    assert all(torch.equal(x, y) for (x, _), (y, _) in pairs)
    assert "repeat_fraction" not in plain.state_dict() and mixed.state_dict()["repeat_fraction"] == 0.25
    with pytest.raises(ValueError, match="repeat_fraction"):
        TokenWindowSource(data, 33, 8, 1, repeat_fraction=1.5)
    for bad in (-0.1, 2, True):
        with pytest.raises(ValueError, match="repeat_fraction"):
            micro_cfg(repeat_fraction=bad).validate()
    with pytest.raises(ConfigError, match="repeat_fraction repeats windows of text.*TokenWindowSource"):
        train(micro_cfg(repeat_fraction=0.5), batches=plain)  # a run's own batches: the option would do nothing
