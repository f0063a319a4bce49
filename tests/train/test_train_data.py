"""The trainer on the data layer: the default corpus + built-in BPE path, local files, the vocabulary rule,
and the default batch source's contract."""

import json

import pytest
import torch

from infini_llama.data import load_tokenizer, prepare_tokens
from infini_llama.train import BatchSource, TokenWindowSource, train
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
