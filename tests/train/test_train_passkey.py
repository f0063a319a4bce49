"""PasskeyBatchSource: the trainer's batches for passkey fine-tuning."""

import json
import math

import numpy as np
import pytest
import torch

from infini_llama.eval import PasskeyGridConfig
from infini_llama.eval.passkey import (
    DEFAULT_KEY_DIGITS,
    EVAL_STREAM,
    TRAIN_VALIDATION_STREAM,
    evaluation_keys,
    make_passkey_sample,
    sample_rng,
)
from infini_llama.eval.prompts import FILLER_BLOCK, FILLER_STYLES, decode
from infini_llama.train.batches import PrefetchedBatches, _worker_context
from infini_llama.train.passkey import FINETUNE_HAYSTACKS, PasskeyBatchSource


def source(tok, **overrides):
    options = dict(seq_len=192, batch_size=4, grad_accum=1, key_digits=4, validation_batches=2, pack_min_len=0)
    options.update(overrides)
    return PasskeyBatchSource(tok, **options)


def test_batches_are_passkey_sequences_of_seq_len(bpe_tok):
    src = source(bpe_tok)
    input_ids, labels = src.batch(0, 0)
    assert input_ids.shape == (4, 192) and input_ids.dtype == torch.long
    assert torch.equal(labels, input_ids), "loss='all': plain language modelling on every token"
    for row in input_ids.tolist():
        assert row[-1] == bpe_tok.eos_token_id
        text = decode(bpe_tok, row)
        key = text.rsplit("The pass key is", 1)[1].replace("<|endoftext|>", "").strip()
        assert len(key) == 4 and key.isdigit()
        assert text.count(key) == 3, "twice in the needle, once as the answer"


def test_batches_are_a_pure_function_of_step_micro_step_and_rank(bpe_tok):
    a, b = source(bpe_tok), source(bpe_tok)
    assert torch.equal(a.batch(3, 0)[0], b.batch(3, 0)[0])
    assert not torch.equal(a.batch(3, 0)[0], a.batch(4, 0)[0])
    # The sequences of one optimizer step are the same however they are split over accumulation and processes.
    whole = source(bpe_tok, batch_size=8).batch(2, 0)[0]
    accumulated = source(bpe_tok, grad_accum=2)
    ranks = [source(bpe_tok, rank=r, world_size=2) for r in (0, 1)]
    assert torch.equal(whole, torch.cat([accumulated.batch(2, 0)[0], accumulated.batch(2, 1)[0]]))
    assert torch.equal(whole, torch.cat([ranks[0].batch(2, 0)[0], ranks[1].batch(2, 0)[0]]))


def test_a_source_split_anew_keeps_the_sequences_of_each_step_and_of_validation(bpe_tok):
    # As the trainer splits a source built with the whole per-process batch for an automatic micro-batch: two
    # processes' step, in the order of its sequences (pass by pass, rank by rank), is the same.
    wholes = [source(bpe_tok, loss="answer", world_size=2, rank=r) for r in (0, 1)]
    splits = [whole.split(2, 2) for whole in wholes]
    for step in (0, 3):
        before = [whole.batch(step, 0) for whole in wholes]
        after = [split.batch(step, m) for m in range(2) for split in splits]
        for part in (0, 1):  # inputs, labels
            assert torch.equal(torch.cat([b[part] for b in before]), torch.cat([b[part] for b in after]))
    whole, split = wholes[1], splits[1]
    validation = [list(s.validation_batches()) for s in (whole, split)]
    assert [len(ids) for ids, _ in validation[1]] == [2, 2, 2, 2], "the 2 × 4 validation sequences, in passes of 2"
    assert torch.equal(*(torch.cat([ids for ids, _ in batches]) for batches in validation))
    assert split.state_dict() == whole.state_dict()
    with pytest.raises(ValueError, match="would change the step's 4 sequences"):
        whole.split(2, 1)


def test_answer_only_loss_masks_everything_but_the_answer(bpe_tok):
    input_ids, labels = source(bpe_tok, loss="answer").batch(0, 0)
    for ids, lab in zip(input_ids.tolist(), labels.tolist(), strict=True):
        kept = [i for i, v in enumerate(lab) if v != -100]
        assert kept == list(range(kept[0], kept[-1] + 1)) and kept[-1] == 190, "the answer, just before EOS"
        answer = decode(bpe_tok, [ids[i] for i in kept])
        assert answer.strip().isdigit() and len(answer.strip()) == 4


@pytest.mark.parametrize("loss", ["answer", "all"])
def test_answer_token_validation_labels_the_answers_token_by_token(bpe_tok, loss):
    src = source(bpe_tok, seq_len=1024, pack_min_len=150, loss=loss)
    on_answers = source(bpe_tok, seq_len=1024, pack_min_len=150, loss="answer")
    answers = torch.cat([labels for _, labels in on_answers.validation_batches()])
    labelled = list(src.answer_token_validation())
    sequences, training = (torch.cat(x) for x in zip(*src.validation_batches(), strict=True))
    assert torch.equal(torch.cat([ids for ids, _ in labelled]), sequences), "the validation sequences"
    assert torch.equal(torch.cat([labellings[0] for _, labellings in labelled]), training), "first as in training"
    by_token = [torch.cat([labellings[1 + t] for _, labellings in labelled]) for t in range(5)]
    assert all(len(labellings) == 1 + 5 for _, labellings in labelled), "then the space and four digits"
    for token, labels in enumerate(by_token):
        kept = labels != -100
        assert torch.equal(labels[kept], answers[kept]), "the answers' own tokens, whatever the training loss"
        parts = int((answers != -100).sum()) // 5
        assert int(kept.sum()) == parts > 4, "one token of every packed part's answer"
        text = decode(bpe_tok, labels[kept].tolist())
        assert (set(text) == {" "}) if token == 0 else text.isdigit(), "token 0 is the space before the key"
    # Together they are the answers, each position once, on the validation sequences.
    assert torch.equal(sum((labels != -100).long() for labels in by_token), (answers != -100).long())


def test_fine_tuning_logs_the_validation_loss_of_each_answer_token(tmp_path, bpe_tok, passkey_base):
    """Every validation of a passkey fine-tuning logs the loss on each answer token (`answer_token_losses`); each
    answer having as many tokens, their mean is the validation loss on the answer."""
    from infini_llama.train import read_metrics
    from infini_llama.train.passkey import finetune_passkey

    result = finetune_passkey(
        str(passkey_base), str(tmp_path / "ft"), tokenizer=bpe_tok, steps=2, seq_len=160, global_batch=4, 
        warmup_steps=0, eval_every=1, save_every=0, device="cpu", progress=False, tensorboard=False,
        source_options=dict(key_digits=4, pack_min_len=0, validation_batches=2, loss="answer"),
    )  # fmt: skip
    records = read_metrics(result.run_dir / "metrics.jsonl", "val")
    assert [r["step"] for r in records] == [0, 1, 2]
    for r in records:
        assert len(r["answer_token_losses"]) == 5 and all(x > 0 for x in r["answer_token_losses"])
        assert sum(r["answer_token_losses"]) / 5 == pytest.approx(r["loss"], rel=1e-6)
    assert records[-1]["answer_token_losses"] != records[0]["answer_token_losses"], "scored anew at each validation"


def test_training_never_uses_evaluation_samples_or_keys(bpe_tok):
    # 2-digit keys: only 90 exist, so without the exclusion the 40 evaluation keys would surely be drawn.
    src = source(bpe_tok, key_digits=2, exclude_eval_seed=0, exclude_eval_samples=20, batch_size=8)
    eval_keys = set(evaluation_keys(0, 20, 2)) | set(evaluation_keys(0, 20, 2, split="validation"))
    assert len(eval_keys) > 20, "the keys of the test and the validation grids"
    train_keys = set()
    for step in range(12):
        for row in src.batch(step, 0)[0].tolist():
            train_keys.add(decode(bpe_tok, row).rsplit("The pass key is", 1)[1].split("<")[0].strip())
    assert train_keys and not train_keys & eval_keys
    # Separate seed streams: the training sample i is not the evaluation sample i of the same seed.
    eval_sample = make_passkey_sample(bpe_tok, 186, 0.0, seed=0, index=0, stream=EVAL_STREAM, key_digits=4)
    assert source(bpe_tok).sequence(1, 0)[0][:186] != eval_sample.input_ids
    with pytest.raises(ValueError, match="leave no 1-digit key"):
        source(bpe_tok, key_digits=1, exclude_eval_samples=200)


def test_validation_batches_are_fixed_and_apart_from_training(bpe_tok):
    src = source(bpe_tok)
    first, again = list(src.validation_batches()), list(src.validation_batches())
    assert len(first) == 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0][0], src.batch(0, 0)[0])
    json.dumps(src.state_dict())


def test_validation_sequences_are_built_once_and_scored_as_built_anew(bpe_tok, monkeypatch):
    options = dict(seq_len=1024, pack_min_len=150, loss="answer", segment_len=128, boundary_share=0.3,
                   needle_boundary_share=0.3)  # fmt: skip

    def every_validation(src):  # what one validation of the trainer asks for, in its order
        return [list(src.answer_token_validation()), list(src.boundary_batches()), list(src.needle_boundary_batches())]

    src = source(bpe_tok, **options)
    built = []
    original = PasskeyBatchSource._packed
    monkeypatch.setattr(PasskeyBatchSource, "_packed", lambda self, *a, **k: built.append(a) or original(self, *a, **k))
    first = every_validation(src)
    assert len(built) == 3 * 2 * 4, "each of the 2 × 4 sequences once per way of aligning it (none, question, needle)"
    again = every_validation(src)
    assert len(built) == 3 * 2 * 4, "and never again"
    src.batch(0, 0)
    assert len(built) == 3 * 2 * 4 + 4, "training sequences are built each time they are asked for"
    fresh = every_validation(source(bpe_tok, **options))

    def tensors(batches):  # every tensor of a validation's batches, labellings included, in order
        return [
            t
            for kind in batches
            for batch in kind
            for part in batch
            for t in (part if isinstance(part, list) else [part])
        ]

    for batches in (again, fresh):
        assert all(torch.equal(a, b) for a, b in zip(tensors(first), tensors(batches), strict=True))


def test_bad_options_are_refused(bpe_tok):
    with pytest.raises(ValueError, match="loss must be"):
        source(bpe_tok, loss="keys")
    with pytest.raises(ValueError, match="shorter than the prompt template"):
        source(bpe_tok, seq_len=40)


def test_packed_sequences_hold_several_prompts_of_varied_lengths(bpe_tok):
    src = source(bpe_tok, seq_len=1024, pack_min_len=150, loss="answer")
    input_ids, labels = src.batch(0, 0)
    assert input_ids.shape == (4, 1024)
    lengths = []
    for ids, lab in zip(input_ids.tolist(), labels.tolist(), strict=True):
        text = decode(bpe_tok, ids[1:])  # after the BOS, parts are "prompt answer<EOS>"
        parts = text.split("<|endoftext|>")[:-1]
        assert all(p.startswith("A pass key is hidden") for p in parts)
        lengths += [len(bpe_tok.encode(p, add_special_tokens=False)) for p in parts]
        keys = [p.rsplit("The pass key is", 1)[1].strip() for p in parts]
        answers = decode(bpe_tok, [t for t in lab if t != -100])
        assert answers.split() == keys, "the loss covers every part's answer and nothing else"
        assert all(p.count(k) == 3 for p, k in zip(parts, keys, strict=True))
    assert len(lengths) > 6 and len(set(lengths)) > 4, "several parts per sequence, of many lengths"
    assert min(lengths) >= 150 - 1, "none shorter than asked (the EOS is not counted here)"
    assert torch.equal(input_ids, source(bpe_tok, seq_len=1024, pack_min_len=150, loss="answer").batch(0, 0)[0])
    # A minimum shorter than any prompt is raised to what a prompt needs; packing is the default.
    assert source(bpe_tok, pack_min_len=1).pack_min_len > 100
    assert PasskeyBatchSource(bpe_tok, 2048, 2).pack_min_len == 2048 // 8


def _parts(tok, ids):
    """(length, tokens from the needle's key to the part's end) of each packed part of a sequence."""
    parts = decode(tok, ids[1:]).split("<|endoftext|>")[:-1]
    count = lambda text: len(tok.encode(text, add_special_tokens=False))  # noqa: E731
    return [(count(p), count(p.split("The pass key is", 1)[1])) for p in parts]


def test_a_curriculum_starts_with_the_needle_close_and_ends_as_without_one(bpe_tok):
    options = dict(seq_len=1024, pack_min_len=150, loss="answer", depths=[i / 10 for i in range(11)])
    plain, taught = source(bpe_tok, **options), source(bpe_tok, **options, curriculum_steps=10)
    assert [taught.progress(s) for s in (0, 4, 9, 50)] == [0.1, 0.5, 1.0, 1.0] and plain.progress(0) == 1.0
    early = [part for row in taught.batch(0, 0)[0].tolist() for part in _parts(bpe_tok, row)]
    longest = taught.longest_part(0.1)
    assert longest == max(taught.pack_min_len + int(0.1 * (1024 - taught.pack_min_len)), 2 * taught.pack_min_len - 1)
    assert all(length <= longest for length, _ in early), "no part longer than the curriculum allows, the last too"
    for step in range(10):  # and none in any sequence of the curriculum
        progress = taught.progress(step)
        for index in range(16):
            lengths = taught._part_lengths(sample_rng(1, 0, index, "part_lengths"), progress)
            assert sum(lengths) == 1023 and max(lengths) <= taught.longest_part(progress)
            assert min(lengths) >= taught.pack_min_len
    # At progress 0.1 only the depths 0.9 and 1.0 are drawn: the needle is in the last tenth of the filler.
    assert max(distance for _, distance in early) < 130
    late = [part for row in plain.batch(0, 0)[0].tolist() for part in _parts(bpe_tok, row)]
    assert max(distance for _, distance in late) > 200, "without a curriculum needles lie anywhere"
    # From curriculum_steps on, and for validation, the batches are those without a curriculum.
    for step in (9, 12):
        assert torch.equal(taught.batch(step, 0)[1], plain.batch(step, 0)[1])
    assert all(
        torch.equal(a[0], b[0]) for a, b in zip(taught.validation_batches(), plain.validation_batches(), strict=True)
    )
    assert taught.state_dict()["curriculum_steps"] == 10
    with pytest.raises(ValueError, match="needs packing"):
        source(bpe_tok, curriculum_steps=10)
    with pytest.raises(ValueError, match="curriculum_steps must be"):
        source(bpe_tok, **options, curriculum_steps=-1)


def test_haystacks_vary_and_never_use_the_held_out_text(bpe_tok):
    src = source(bpe_tok, seq_len=1024, pack_min_len=150)
    kinds = [src._draw(1, i)[2] for i in range(200)]
    assert set(kinds) == set(FINETUNE_HAYSTACKS) and "book" not in FINETUNE_HAYSTACKS
    text = " ".join(decode(bpe_tok, row) for row in src.batch(0, 0)[0].tolist())
    assert any(sentence in text for block in FILLER_STYLES for sentence in block), "other filler styles are used"
    assert any(sentence in text for sentence in FILLER_BLOCK), "and the classic filler"
    assert src.state_dict()["haystacks"] == list(FINETUNE_HAYSTACKS)
    only = source(bpe_tok, haystacks=("corpus",))
    assert {only._draw(1, i)[2] for i in range(20)} == {"corpus"}
    with pytest.raises(ValueError, match="'book' is for evaluation only"):
        source(bpe_tok, haystacks=("repeat", "book"))


def test_selection_prompts_are_a_split_of_their_own(bpe_tok):
    src = source(bpe_tok, exclude_eval_seed=0, exclude_eval_samples=64)
    prompts = src.selection_prompts(200, 12)
    assert all(len(p.input_ids) == 200 and p.input_ids[0] == bpe_tok.bos_token_id for p in prompts)
    assert [p.key for p in prompts] == [p.key for p in src.selection_prompts(200, 12)], "fixed"
    assert not {p.key for p in prompts} & set(evaluation_keys(0, 64, 4))
    assert len({p.haystack for p in prompts}) > 1 and len({p.depth for p in prompts}) > 1
    assert [p.key for p in prompts] != [src._draw(1, i)[0] for i in range(12)], "not the training prompts"


def test_one_default_key_length_for_fine_tuning_and_evaluation(bpe_tok):
    from infini_llama.cli import build_parser

    defaults = {
        "source": PasskeyBatchSource(bpe_tok, 256, 2).key_digits,
        "grid": PasskeyGridConfig().key_digits,
        "sample": len(make_passkey_sample(bpe_tok, 200, 0.5).key),
        "finetune CLI": build_parser(["finetune"]).parse_args(
            ["finetune", "passkey", "--checkpoint", "c", "--out", "o"]
        ),
        "eval CLI": build_parser(["eval"]).parse_args(["eval", "passkey", "--checkpoint", "c", "--out", "o"]),
    }
    defaults["finetune CLI"] = defaults["finetune CLI"].key_digits
    defaults["eval CLI"] = defaults["eval CLI"].key_digits
    assert set(defaults.values()) == {DEFAULT_KEY_DIGITS}, defaults


@pytest.mark.parametrize("start_method", [None, "spawn"])  # the default (a fork server on Linux); Windows': spawn
def test_worker_processes_build_the_same_batches(bpe_tok, start_method):
    """The trainer's prefetching workers (`data_workers`) receive the source once and build what it builds (here
    with parts moved to segment boundaries both ways)."""
    src = source(bpe_tok, seq_len=1024, pack_min_len=150, loss="answer", segment_len=16, boundary_share=0.5,
                 needle_boundary_share=0.5)  # fmt: skip
    assert {kind for i in range(16) for kind in src._packed(1, i)[2].values()} == {"question", "needle"}
    with PrefetchedBatches(src, grad_accum=2, workers=2, start_method=start_method) as ahead:
        ahead.prefetch(3)  # returns at once: the workers build steps 3 to 3 + depth - 1
        assert sorted(ahead.pending) == [3, 4, 5, 6]
        for step in (3, 4, 7):  # a start other than 0 (a resumed run), then a skipped step
            for (ids, labels), m in zip(ahead.batches(step), range(2), strict=True):
                want_ids, want_labels = src.batch(step, m)
                assert torch.equal(ids, want_ids) and torch.equal(labels, want_labels)
        assert all(step > 7 for step in ahead.pending), "batches of passed steps are dropped"


def test_workers_start_from_a_fork_server_that_imported_the_source(bpe_tok):
    """Not forked from the trainer (CUDA and threads must not be inherited), not each a new Python importing torch
    and transformers (spawn): forked from a server that imported the source's module once."""
    context = _worker_context(source(bpe_tok))
    assert context.get_start_method() == "forkserver"
    with pytest.raises(ValueError, match="start_method must be"):
        PrefetchedBatches(source(bpe_tok), grad_accum=1, workers=1, start_method="fork")


def test_every_quantity_of_a_training_prompt_is_drawn_independently(bpe_tok):
    """Replaying 5,000 training draws: the needle's depth predicts neither the haystack kind nor anything the
    haystack draws (filler style, text start), and every filler style occurs in every depth band. (Drawn from one
    generator rebuilt per sample, the style was a step function of the depth and corr(depth, text start) ~ 1.)"""
    src = source(bpe_tok, depths=[i / 40 for i in range(41)], seq_len=256, pack_min_len=128)
    length = src.pack_min_len
    draws = []
    for index in range(5000):
        sample = src._prompt(1, index, length, bos=False)
        draws.append((sample.depth, FINETUNE_HAYSTACKS.index(sample.haystack), sample.haystack_draws))
    depth = np.array([d for d, _, _ in draws])
    kind = np.array([k for _, k, _ in draws])
    assert abs(np.corrcoef(depth, kind)[0, 1]) < 0.05
    for quantity in ("style", "text_start"):
        pairs = np.array([(d, h[quantity]) for d, _, h in draws if quantity in h], dtype=float)
        assert len(pairs) > 1000, quantity
        assert abs(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]) < 0.05, quantity
    for haystack, blocks in (("styles", len(FILLER_STYLES)), ("distractors", len(FILLER_STYLES) + 1)):
        styles = [(d, h["style"]) for d, k, h in draws if FINETUNE_HAYSTACKS[k] == haystack]
        for band in range(10):  # depth bands of a tenth
            seen = {s for d, s in styles if min(int(d * 10), 9) == band}
            assert seen == set(range(blocks)), (haystack, band, seen)


def test_sequences_part_lengths_are_drawn_apart_from_their_prompts(bpe_tok):
    """Part 0 of sequence 0 and the sequence's part lengths used to come from one generator: the first part's key
    then fixed its length."""
    src = source(bpe_tok, seq_len=1024, pack_min_len=150)
    firsts = [src._part_lengths(sample_rng(1, 0, i, "part_lengths"), 1.0)[0] for i in range(2000)]
    keys = [int(src._draw(1, i << 20)[0]) for i in range(2000)]
    assert abs(np.corrcoef(firsts, keys)[0, 1]) < 0.07


def _answer_starts(src, stream, index, share=None):
    """The first answer token's position of each packed part of a sequence, and which parts were moved."""
    ids, answers, moved = src._packed(stream, index, 1.0, share)
    return ids, [answer[0] for answer in answers], moved


def test_a_boundary_share_puts_answers_where_an_evaluation_prompt_of_whole_segments_has_them(bpe_tok):
    """With `boundary_share` a part's question ends at a segment's last token, so its answer starts a new segment
    (the space before the key is its first token), as after an evaluation prompt of whole segments; the other
    parts and every sequence's length are as packing draws them, and no share leaves the sequences as they were."""
    options = dict(seq_len=1024, pack_min_len=150, loss="answer", segment_len=128)
    plain, half, every = (source(bpe_tok, **options, boundary_share=s) for s in (0.0, 0.5, 1.0))
    counts = {"moved": 0, "parts": 0}
    for index in range(24):
        ids, starts, moved = _answer_starts(every, 1, index)
        plain_ids, plain_starts, _ = _answer_starts(plain, 1, index)
        assert len(ids) == 1024 and starts[-1] == plain_starts[-1], "the last part ends with the sequence"
        assert all(starts[p] % 128 == 0 for p in moved) and set(moved.values()) <= {"question"}
        assert set(moved) <= set(range(len(starts) - 1)) and len(starts) == len(plain_starts)
        lengths = [b - a for a, b in zip([1, *starts], starts, strict=False)]
        assert all(n > 100 for n in lengths), "parts long enough for a prompt"
        counts["moved"] += len(moved)
        counts["parts"] += len(starts) - 1
    assert counts["moved"] >= 0.8 * counts["parts"], counts
    # Half: about half the parts, each drawn on its own; the plain source does not move any.
    moved_half = sum(len(_answer_starts(half, 1, i)[2]) for i in range(24))
    assert 0.25 * counts["parts"] <= moved_half <= 0.75 * counts["parts"]
    assert not plain.boundary_share and all(not _answer_starts(plain, 1, i)[2] for i in range(8))
    default = source(bpe_tok, seq_len=1024, pack_min_len=150, loss="answer")
    assert torch.equal(plain.batch(0, 0)[0], default.batch(0, 0)[0])
    assert "boundary_share" not in plain.state_dict() and every.state_dict()["segment_len"] == 128


def test_boundary_batches_score_only_answers_written_in_a_new_segment(bpe_tok):
    """`boundary_batches()` holds the validation sequences with every part that can be moved at a segment boundary,
    labelled on those answers alone; without a segment length it has no batches."""
    src = source(bpe_tok, seq_len=1024, pack_min_len=150, loss="answer", segment_len=128, batch_size=2)
    batches = list(src.boundary_batches())
    assert len(batches) == 2
    labelled = 0
    for input_ids, labels in batches:
        for b in range(input_ids.shape[0]):
            positions = (labels[b] != -100).nonzero().flatten().tolist()
            starts = [p for p in positions if p - 1 not in positions]
            assert all(s % 128 == 0 for s in starts) and len(positions) == 5 * len(starts)
            assert labels[b, positions].tolist() == input_ids[b, positions].tolist()
            labelled += len(starts)
    assert labelled >= 4
    assert list(source(bpe_tok, seq_len=1024, pack_min_len=150).boundary_batches()) == []


def test_fine_tuning_logs_the_loss_on_answers_at_a_segment_boundary(tmp_path, bpe_tok, passkey_base):
    """A packed fine-tuning takes the checkpoint's segment length and logs `boundary_loss` and
    `needle_boundary_loss` at each validation."""
    from infini_llama.train import read_metrics
    from infini_llama.train.passkey import finetune_passkey

    result = finetune_passkey(
        str(passkey_base), str(tmp_path / "ft"), tokenizer=bpe_tok, steps=1, seq_len=960, global_batch=2,
        warmup_steps=0, eval_every=1, save_every=0, device="cpu", progress=False, tensorboard=False,
        source_options=dict(key_digits=4, pack_min_len=150, validation_batches=2, loss="answer", boundary_share=0.5,
                            needle_boundary_share=0.5),  # fmt: skip
    )  # fmt: skip
    records = read_metrics(result.run_dir / "metrics.jsonl", "val")
    assert [r["step"] for r in records] == [0, 1]
    assert all(r["boundary_loss"] > 0 for r in records) and records[0]["boundary_loss"] != records[1]["boundary_loss"]
    assert all(r["needle_boundary_loss"] > 0 for r in records)
    segment = json.loads((passkey_base / "config.json").read_text())["segment_len"]
    data = json.loads((result.run_dir / "run.json").read_text())["data"]
    assert (data["segment_len"], data["boundary_share"], data["needle_boundary_share"]) == (segment, 0.5, 0.5)


def _part_spans(src, stream, index, shares=None, progress=1.0):
    """Each packed part's (start, length) in a sequence, its ids there, the ids and slot starts it has at its drawn
    depth (`_part`), and the parts moved."""
    ids, answers, moved = src._packed(stream, index, progress, shares)
    starts = [1] + [answer[-1] + 2 for answer in answers[:-1]]  # after BOS; then after each answer and its EOS
    lengths = [b - a for a, b in zip(starts, [*starts[1:], len(ids)], strict=True)]
    parts = []
    for part, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        drawn, _, span, slots = src._part(stream, (index << 20) | part, length, progress)
        parts.append((start, ids[start : start + length], drawn, span, slots))
    return lengths, parts, moved


def test_a_needle_boundary_share_cuts_needles_with_a_segment_boundary(bpe_tok):
    """With `needle_boundary_share` a drawn part is built with its needle at a filler slot where a segment boundary
    falls strictly inside it (the key's sentence split across a memory update): the same tokens as drawn, in
    another order, the packing unchanged; the first and last parts too; the cut falls at different places in the
    needle; both shares together move each part one way or not at all."""
    options = dict(seq_len=1024, pack_min_len=150, loss="answer", segment_len=128)
    plain, every = source(bpe_tok, **options), source(bpe_tok, **options, needle_boundary_share=1.0)
    cuts, ends, counts = set(), set(), {"moved": 0, "parts": 0}
    for index in range(24):
        lengths, parts, moved = _part_spans(every, 1, index)
        assert lengths == _part_spans(plain, 1, index)[0], "the packing is the plain one"
        assert set(moved.values()) <= {"needle"}
        for part, (start, part_ids, drawn, (first, end), slots) in enumerate(parts):
            if part not in moved:
                assert part_ids == drawn
                continue
            assert sorted(part_ids) == sorted(drawn) and part_ids[-6:] == drawn[-6:], "same filler, key and answer"
            needle = next(s for s in slots if part_ids[s : s + end - first] == drawn[first:end])
            boundary = (start + needle) // 128 * 128 + 128
            assert start + needle < boundary < start + needle + end - first, "a boundary inside the needle"
            cuts.add(boundary - start - needle)
            ends.add(part in (0, len(lengths) - 1))
        counts["moved"] += len(moved)
        counts["parts"] += len(lengths)
    assert counts["moved"] >= 0.5 * counts["parts"] and len(cuts) >= 5 and ends == {True, False}, (counts, cuts)
    both = source(bpe_tok, **options, boundary_share=0.5, needle_boundary_share=0.5)
    kinds = [kind for i in range(24) for kind in _part_spans(both, 1, i)[2].values()]
    assert {"question", "needle"} <= set(kinds)
    assert every.state_dict()["needle_boundary_share"] == 1.0 and "needle_boundary_share" not in plain.state_dict()


def test_a_cut_needle_keeps_to_the_depths_the_curriculum_allows(bpe_tok):
    """Early in a curriculum (depths >= 1 - p drawn) a needle placed at a boundary is at such a depth too."""
    src = source(bpe_tok, seq_len=1024, pack_min_len=150, loss="answer", segment_len=128, curriculum_steps=10,
                 needle_boundary_share=1.0, depths=[i / 10 for i in range(11)])  # fmt: skip
    progress, placed = src.progress(3), 0
    for index in range(24):
        _, parts, moved = _part_spans(src, 1, index, progress=progress)
        for part in moved:
            _, part_ids, drawn, (first, end), slots = parts[part]
            lowest = slots[math.ceil((1 - progress) * (len(slots) - 1) - 1e-9)]
            assert any(part_ids[s : s + end - first] == drawn[first:end] for s in slots if s >= lowest)
            placed += 1
    assert placed >= 5


def test_needle_boundary_batches_score_only_answers_of_cut_needles(bpe_tok):
    src = source(bpe_tok, seq_len=1024, pack_min_len=150, loss="answer", segment_len=128, batch_size=2)
    labelled = 0
    for input_ids, labels in src.needle_boundary_batches():
        for b in range(input_ids.shape[0]):
            positions = (labels[b] != -100).nonzero().flatten().tolist()
            assert len(positions) % 5 == 0 and labels[b, positions].tolist() == input_ids[b, positions].tolist()
            labelled += len(positions) // 5
    moved = sum(len(src._packed(TRAIN_VALIDATION_STREAM, i, 1.0, (0.0, 1.0))[2]) for i in range(4))
    assert labelled == moved >= 1
    assert list(source(bpe_tok, seq_len=1024, pack_min_len=150).needle_boundary_batches()) == []


def test_a_boundary_share_needs_a_segment_length_and_packing(bpe_tok):
    with pytest.raises(ValueError, match="needs packing"):
        source(bpe_tok, boundary_share=0.5)  # neither
    with pytest.raises(ValueError, match="needs packing"):
        source(bpe_tok, seq_len=1024, pack_min_len=150, boundary_share=0.5)
    with pytest.raises(ValueError, match="boundary_share must be a fraction"):
        source(bpe_tok, seq_len=1024, pack_min_len=150, segment_len=128, boundary_share=1.5)
    with pytest.raises(ValueError, match="segment_len must be a positive integer"):
        source(bpe_tok, segment_len=0)
    with pytest.raises(ValueError, match="needle_boundary_share moves"):
        source(bpe_tok, needle_boundary_share=0.5)
    with pytest.raises(ValueError, match="needle_boundary_share must be a fraction"):
        source(bpe_tok, seq_len=1024, pack_min_len=150, segment_len=128, needle_boundary_share=True)
    with pytest.raises(ValueError, match="at most 1"):
        source(bpe_tok, seq_len=1024, pack_min_len=150, segment_len=128, boundary_share=0.6, needle_boundary_share=0.5)
