"""The prompt generators: token-exact lengths, needles at the asked depth between sentences, fixed seeds."""

import re

import pytest

from infini_llama.data import held_out_book, load_corpus
from infini_llama.data.corpus import HELD_OUT_BOOK
from infini_llama.eval import make_multineedle_sample, make_passkey_sample, memory_updates
from infini_llama.eval.multineedle import MULTI_TASKS, needle_keys
from infini_llama.eval.passkey import NEEDLE, QUESTION, TASK, evaluation_keys
from infini_llama.eval.prompts import FILLER_BLOCK, FILLER_STYLES, Haystack, SampleSeed, decode

TOKENIZERS = ["bpe_tok", "char_tok", "metaspace_tok"]
DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


def lengths_for(name):
    # A character tokenizer needs ~4x the tokens for the same template.
    return [600, 777, 1500] if name == "char_tok" else [160, 203, 512, 1024]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_prompt_length_is_exactly_the_asked_length(request, name):
    tok = request.getfixturevalue(name)
    for length in lengths_for(name):
        for depth in DEPTHS:
            for index in range(3):
                s = make_passkey_sample(tok, length, depth, seed=7, index=index)
                assert len(s.input_ids) == length, (name, length, depth, index)
                assert s.roundtrip, "the concatenated ids must be the tokenizer's own encoding of the text"
                body = s.input_ids[1:] if tok.bos_token_id is not None else s.input_ids
                assert tok.encode(s.text, add_special_tokens=False) == body


@pytest.mark.parametrize("name", TOKENIZERS)
def test_needle_sits_between_sentences_at_the_asked_depth(request, name):
    tok = request.getfixturevalue(name)
    length = lengths_for(name)[-1]
    sentence = max(len(tok.encode(text, add_special_tokens=False)) for text in FILLER_BLOCK)
    fixed = len(tok.encode(TASK, add_special_tokens=False)) + len(tok.encode(QUESTION, add_special_tokens=False))
    for depth in DEPTHS:
        s = make_passkey_sample(tok, length, depth, seed=3, index=1)
        needle = NEEDLE.format(key=s.key)
        # The needle's tokens spell exactly the needle sentence: it is neither cut nor merged with the filler.
        assert decode(tok, s.input_ids[s.needle_start : s.needle_end]).strip() == needle.strip()
        task_end = s.text.index("at the end.") + len("at the end.")
        question_start = s.text.index(QUESTION.strip())
        before = s.text[task_end : s.text.index(needle.strip())]
        after = s.text[s.text.index(needle.strip()) + len(needle.strip()) : question_start]
        assert before.strip() == "" or before.endswith(". "), "the needle starts right after a whole sentence"
        # Depth is the share of the filler before the needle: off by at most one sentence (rounding to a sentence
        # boundary) plus the partial sentence that closes the last gap; a few tokens of slack for the joins.
        filler = length - (s.needle_end - s.needle_start) - fixed - (tok.bos_token_id is not None)
        before_tokens = len(tok.encode(before, add_special_tokens=False)) if before.strip() else 0
        assert abs(before_tokens - depth * filler) <= 2 * sentence + 2, (depth, before_tokens, filler)
        assert depth < 1.0 or len(tok.encode(after, add_special_tokens=False)) <= sentence + 2


@pytest.mark.parametrize("haystack", ["repeat", "styles", "corpus", "distractors"])
def test_a_needle_at_slot_s_starts_where_slot_starts_says(bpe_tok, haystack):
    """Depth s / sentences puts the needle at `slot_starts[s]`, around the same filler: the prompts at every slot
    hold the same tokens, the needle's among them, only in another order."""
    first = make_passkey_sample(bpe_tok, 600, 0.5, haystack=haystack, index=3)
    sentences = len(first.slot_starts) - 1
    assert sentences > 10 and list(first.slot_starts) == sorted(first.slot_starts)
    for slot in range(sentences + 1):
        s = make_passkey_sample(bpe_tok, 600, slot / sentences, haystack=haystack, index=3)
        assert (s.needle_start, s.slot_starts) == (first.slot_starts[slot], first.slot_starts)
        assert sorted(s.input_ids) == sorted(first.input_ids) and s.key == first.key
    assert make_passkey_sample(bpe_tok, 600, 0.5, unit="chars").slot_starts == ()


def test_bos_is_added_once_and_recorded(bpe_tok, metaspace_tok):
    s = make_passkey_sample(bpe_tok, 200, 0.5)
    assert s.input_ids[0] == bpe_tok.bos_token_id and s.input_ids[1] != bpe_tok.bos_token_id
    assert make_passkey_sample(bpe_tok, 200, 0.5, bos=False).input_ids[0] != bpe_tok.bos_token_id
    assert metaspace_tok.bos_token_id is None  # no BOS to add: the prompt starts with the task line
    assert len(make_passkey_sample(metaspace_tok, 300, 0.5).input_ids) == 300


def test_same_sample_seed_in_every_cell(bpe_tok):
    keys = {
        (length, depth): [make_passkey_sample(bpe_tok, length, depth, seed=5, index=i).key for i in range(4)]
        for length in (200, 400)
        for depth in (0.0, 1.0)
    }
    assert len({tuple(v) for v in keys.values()}) == 1
    assert keys[200, 0.0] == evaluation_keys(5, 4, 5)
    assert len(set(keys[200, 0.0])) == 4
    assert all(len(k) == 5 for k in keys[200, 0.0]), "keys have a fixed number of digits"
    assert [make_passkey_sample(bpe_tok, 200, 0.0, seed=6, index=i).key for i in range(4)] != keys[200, 0.0]


def test_too_short_length_is_refused_with_the_minimum(bpe_tok):
    with pytest.raises(ValueError, match="shorter than the prompt template.*>= \\d+"):
        make_passkey_sample(bpe_tok, 40, 0.5)
    with pytest.raises(ValueError, match="depth must be in"):
        make_passkey_sample(bpe_tok, 200, 1.5)
    with pytest.raises(ValueError, match="unit must be"):
        make_passkey_sample(bpe_tok, 200, 0.5, unit="words")


@pytest.mark.parametrize("haystack", ["styles", "corpus", "distractors", "book"])
def test_other_haystacks_are_token_exact_and_recorded(bpe_tok, haystack):
    for depth in (0.0, 0.5, 1.0):
        s = make_passkey_sample(bpe_tok, 400, depth, haystack=haystack, index=2)
        assert len(s.input_ids) == 400 and s.roundtrip and s.haystack == haystack
        assert s.text.count(s.key) == 2, "the key appears only in the needle (twice)"
        before = s.text[: s.text.index(NEEDLE.format(key=s.key).strip())]
        assert before.endswith(". ") or before.endswith("! ") or before.endswith("? "), "needle after a sentence"


def filler_sentences(sample) -> list[str]:
    """The whole filler sentences of a passkey prompt (task line, needle and question removed)."""
    text = sample.text.replace(TASK, "").replace(NEEDLE.format(key=sample.key).strip(), "")
    text = text[: text.index(QUESTION.strip())]
    return [" " + p for p in re.split(r"(?<=[.!?])\s+", text.strip())][:-1]  # the last one may be partial


def test_corpus_haystack_is_training_text_and_book_haystack_is_held_out(bpe_tok):
    held_out = " ".join(held_out_book().text.split())
    training = {name: " ".join(d.text.split()) for name, d in ((d.name, d) for d in load_corpus("train"))}
    assert HELD_OUT_BOOK not in training, "the held-out book is never training text"
    for index in range(4):
        corpus = filler_sentences(make_passkey_sample(bpe_tok, 600, 0.5, haystack="corpus", index=index))
        book = filler_sentences(make_passkey_sample(bpe_tok, 600, 0.5, haystack="book", index=index))
        assert corpus and book
        assert all(any(s.strip() in text for text in training.values()) for s in corpus)
        assert all(s.strip() in held_out for s in book)
        assert not any(s.strip() in held_out for s in corpus if len(s.split()) > 8)
    styled = filler_sentences(make_passkey_sample(bpe_tok, 600, 0.5, haystack="styles", index=0))
    assert any(set(styled) <= set(block) for block in FILLER_STYLES) and not set(styled) & set(FILLER_BLOCK)


def test_distractor_numbers_are_never_the_key(bpe_tok):
    # One-digit distractors: nine numbers only, so "3" would be drawn many times if it were not avoided.
    hay = Haystack(bpe_tok, "distractors", SampleSeed((0,)), distractor_digits=1, avoid="3")
    numbers = [re.findall(r"\d+", hay.sentence(i)[0]) for i in range(400)]
    drawn = [n for found in numbers for n in found]
    assert len(drawn) == 100 and len(set(drawn)) == 8 and "3" not in drawn
    s = make_passkey_sample(bpe_tok, 600, 0.5, haystack="distractors", index=1)
    numbers = re.findall(r"\d{5}", s.text)
    assert len(numbers) > 2 and numbers.count(s.key) == 2, "distractors hold other numbers than the key"


def test_character_mode_counts_characters_and_records_tokens(bpe_tok):
    s = make_passkey_sample(bpe_tok, 2000, 0.5, unit="chars")
    assert len(s.text) == 2000
    assert len(s.input_ids) < 2000  # the token count differs from the character count and is what is recorded
    assert s.key in decode(bpe_tok, s.input_ids[s.needle_start : s.needle_end + 2])


def test_memory_updates_counts_segment_boundaries():
    assert memory_updates(key_last_token=70, prompt_len=128, segment_len=64) == 0  # same segment as the question
    assert memory_updates(key_last_token=63, prompt_len=128, segment_len=64) == 1
    assert memory_updates(key_last_token=0, prompt_len=1024, segment_len=64) == 15
    assert memory_updates(key_last_token=0, prompt_len=1024, segment_len=None) is None


@pytest.mark.parametrize("name", TOKENIZERS)
def test_key_last_token_is_the_end_of_the_keys_last_copy(request, name):
    tok = request.getfixturevalue(name)
    for depth in DEPTHS:
        s = make_passkey_sample(tok, lengths_for(name)[-1], depth, seed=2, index=3)
        assert s.needle_start < s.key_last_token < s.needle_end
        through = decode(tok, s.input_ids[s.needle_start : s.key_last_token + 1])
        assert through.count(s.key) == 2 and through.rstrip().endswith(s.key)
        assert decode(tok, s.input_ids[s.needle_start : s.key_last_token]).count(s.key) == 1
        assert not re.search(r"\d", decode(tok, s.input_ids[s.key_last_token + 1 : s.needle_end]))


def test_memory_updates_count_from_the_key_not_the_needle_start(bpe_tok):
    """A needle (~40 tokens here) is longer than a segment: counted from its first token, a needle right before the
    question was always 2 or more updates away at segment 32, though its key's last copy is only 1 away."""
    counts = []
    for length in range(200, 264):
        s = make_passkey_sample(bpe_tok, length, 1.0, index=length)
        assert s.needle_end - s.needle_start > 32
        from_key = memory_updates(s.key_last_token, len(s.input_ids), 32)
        assert from_key <= memory_updates(s.needle_start, len(s.input_ids), 32)
        counts.append(from_key)
    assert min(counts) == 1


@pytest.mark.parametrize("task", MULTI_TASKS)
def test_multineedle_samples(bpe_tok, task):
    s = make_multineedle_sample(bpe_tok, task, 700, seed=1, index=3)
    assert len(s.input_ids) == 700 and s.roundtrip
    assert len(s.needles) == 4 and len({n.depth for n in s.needles}) == 4, "needles at distinct grid depths"
    starts = sorted((n.depth, n.start) for n in s.needles)
    assert [start for _, start in starts] == sorted(start for _, start in starts), "deeper needles come later"
    for n in s.needles:
        assert decode(bpe_tok, s.input_ids[n.start : n.end]).strip().endswith(f"{n.key} is: {n.value}.")
        assert n.key in needle_keys() and len(n.value) == 7
        assert decode(bpe_tok, s.input_ids[n.start : n.value_last_token + 1]).endswith(n.value)
    expected_count = {"multikey": 1, "multivalue": 4, "multiquery": 4}[task]
    assert len(s.expected) == expected_count and len(set(s.expected)) == expected_count
    assert all(k in s.text[-300:] for k in s.queried), "the question names the queried keys"
    same = make_multineedle_sample(bpe_tok, task, 900, seed=1, index=3)
    assert [(n.key, n.value, n.depth) for n in same.needles] == [(n.key, n.value, n.depth) for n in s.needles]
    with pytest.raises(ValueError, match="unknown task"):
        make_multineedle_sample(bpe_tok, "multihop", 700)


def test_word_list_holds_adjective_noun_pairs():
    words = needle_keys()
    assert len(words) >= 500 and len(set(words)) == len(words)
    assert all(w.count("-") == 1 for w in words)


def test_prompt_encoding_equals_the_tokenizers_own(bpe_tok, metaspace_tok):
    """Prompts are encoded and decoded through the Rust tokenizer of a fast tokenizer (the wrapper's per-call work
    dominated fine-tuning's batch building): the ids and texts are the wrapper's."""
    from infini_llama.eval.prompts import encode

    sample = make_passkey_sample(bpe_tok, 600, 0.5, haystack="book", index=3)
    texts = [sample.text, " 12345", " The pass key is 90210.", "  two  spaces", "\n\nnew lines", "ünïcödé"]
    for tok in (bpe_tok, metaspace_tok):
        for text in texts:
            ids = tok.encode(text, add_special_tokens=False)
            assert encode(tok, text) == ids
            assert decode(tok, ids) == tok.decode(ids, clean_up_tokenization_spaces=False)
        with_specials = [tok.bos_token_id or tok.eos_token_id, *tok.encode("A b", add_special_tokens=False)]
        assert decode(tok, with_specials) == tok.decode(with_specials, clean_up_tokenization_spaces=False)


def test_a_continuation_is_the_text_as_encoded_after_a_sentence_end_for_each_tokenizer(request):
    from infini_llama.eval.prompts import encode, encode_continuation

    toks = [request.getfixturevalue(name) for name in TOKENIZERS]
    for text in (*FILLER_BLOCK, " The key is 90080.", "word"):
        for tok in toks:  # interleaved: each tokenizer's anchor is its own
            anchor = encode(tok, ".")
            joined = encode(tok, "." + text)
            expected = joined[len(anchor) :] if joined[: len(anchor)] == anchor else encode(tok, text)
            assert encode_continuation(tok, text) == expected
