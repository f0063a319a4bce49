"""transformers integration: Auto classes, save/load, `generate` with the InfiniCache, lm-evaluation-harness."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from infini_llama import InfiniLlamaConfig, InfiniLlamaForCausalLM
from infini_llama.models.cache import InfiniCache
from infini_llama.models.hf_compat import output_cache

VOCAB = 97
SEGMENT = 8


def make_model(seed=0, dtype=torch.float64, **overrides) -> InfiniLlamaForCausalLM:
    config = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, segment_len=SEGMENT, gate_init=1.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return InfiniLlamaForCausalLM(InfiniLlamaConfig(**{**config, **overrides})).to(dtype).eval()


def tokens(B=2, length=13, seed=1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, length), generator=torch.Generator().manual_seed(seed))


ARMS = [pytest.param({}, id="infini"), pytest.param({"attention": "full"}, id="full")]


def test_auto_classes_resolve_the_model_type():
    config = AutoConfig.for_model("infini_llama", vocab_size=VOCAB, hidden_size=32, segment_len=SEGMENT)
    assert isinstance(config, InfiniLlamaConfig)
    assert isinstance(AutoModelForCausalLM.from_config(config), InfiniLlamaForCausalLM)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="infini"),
        pytest.param({"tie_word_embeddings": True}, id="infini-tied"),
        pytest.param({"attention": "full"}, id="full"),
    ],
)
def test_save_pretrained_round_trip_gives_identical_logits(tmp_path, overrides):
    m = make_model(dtype=torch.float32, **overrides)
    m.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is InfiniLlamaForCausalLM
    fields = {**loaded.config.to_dict(), "_name_or_path": ""}
    assert fields == m.config.to_dict()
    x = tokens(length=30)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, m(x).logits)
    tied = loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert tied == bool(overrides.get("tie_word_embeddings", False))


def greedy_by_hand(m, x, new_tokens):
    """Greedy decoding the slow way: a full forward over the whole sequence for every new token."""
    with torch.no_grad():
        for _ in range(new_tokens):
            x = torch.cat([x, m(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x


@pytest.mark.parametrize("overrides", ARMS)
def test_greedy_generate_matches_a_manual_loop(overrides):
    m = make_model(**overrides)
    x = tokens()
    out = m.generate(x, max_new_tokens=20, do_sample=False)
    assert torch.equal(out, greedy_by_hand(m, x, 20))


@pytest.mark.parametrize("overrides", ARMS)
def test_sampling_matches_manual_sampling_with_the_same_seed(overrides):
    m = make_model(**overrides)
    x = tokens()
    temperature, top_k, new_tokens = 0.7, 5, 15
    torch.manual_seed(123)
    out = m.generate(x, max_new_tokens=new_tokens, do_sample=True, temperature=temperature, top_k=top_k)
    torch.manual_seed(123)
    seq = x
    with torch.no_grad():
        for _ in range(new_tokens):
            scores = m(seq).logits[:, -1].float() / temperature
            kth = scores.topk(top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
            nxt = torch.multinomial(scores.softmax(-1), num_samples=1)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)


def test_beam_search_reorders_the_cache():
    m = make_model()
    x = tokens()
    with_cache = m.generate(x, max_new_tokens=10, num_beams=3, do_sample=False)
    without_cache = m.generate(x, max_new_tokens=10, num_beams=3, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without_cache)


@pytest.mark.parametrize("overrides", ARMS)
@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])  # the name before transformers 5.24 still works
def test_generate_continues_a_streamed_prompt(overrides, keyword):
    m = make_model(**overrides)
    x = tokens(length=45)
    expected = greedy_by_hand(m, x, 10)
    state = None
    for chunk in x[:, :-1].split(7, dim=1):  # generate() feeds the last prompt token itself
        _, state = m.stream(chunk, state)
    cache = InfiniCache(state, seen_tokens=x.shape[1] - 1)
    assert torch.equal(m.generate(x, **{keyword: cache}, max_new_tokens=10, do_sample=False), expected)
    assert torch.equal(m.generate(x, max_new_tokens=10, do_sample=False, prefill_chunk_size=6), expected)


def test_left_padding_is_refused_with_the_reason():
    m = make_model()
    x = tokens()
    mask = torch.ones_like(x)
    mask[0, :3] = 0  # a shorter first prompt, left-padded
    with pytest.raises(ValueError, match="left padding.*compressive memory"):
        m.generate(x, attention_mask=mask, max_new_tokens=3)


def test_foreign_cache_with_content_is_refused():
    m = make_model()
    cache = DynamicCache()
    cache.update(torch.zeros(2, 2, 3, 8, dtype=torch.float64), torch.zeros(2, 2, 3, 8, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="InfiniCache"):
        m(tokens(), cache=cache, use_cache=True)


def test_a_cache_under_both_names_is_refused():
    m = make_model()
    with pytest.raises(ValueError, match="not both"):
        m(tokens(), cache=InfiniCache(), past_key_values=InfiniCache(), use_cache=True)
    with pytest.raises(ValueError, match="not both"):
        m.generate(tokens(), cache=InfiniCache(), past_key_values=InfiniCache(), max_new_tokens=2)


def test_infini_cache_refuses_to_crop():
    m = make_model()
    cache = InfiniCache()
    assert output_cache(m(tokens(), cache=cache, use_cache=True)) is cache
    cache.crop(0)  # a no-op is fine
    with pytest.raises(ValueError, match="cannot drop tokens"):
        cache.crop(-1)


def test_readme_use_with_transformers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # --- docs/transformers.md "Using the models (and with transformers)" (keep in sync) ---
    import torch
    from transformers import AutoModelForCausalLM

    import infini_llama  # noqa: F401  (registers model_type "infini_llama" with the Auto classes)
    from infini_llama import InfiniLlamaForCausalLM, config_from_preset
    from infini_llama.models.cache import InfiniCache

    model = InfiniLlamaForCausalLM(config_from_preset("tiny")).eval()
    model.save_pretrained("tiny-infini")  # config.json + model.safetensors
    model = AutoModelForCausalLM.from_pretrained("tiny-infini").eval()

    prompt = torch.randint(0, model.config.vocab_size, (2, 300))  # a batch of equal-length prompts
    out = model.generate(prompt, max_new_tokens=20, do_sample=False)

    # A long prompt chunk by chunk: each layer's state stays one memory plus one unfinished segment.
    state = None
    for chunk in prompt[:, :-1].split(64, dim=1):
        logits, state = model.stream(chunk, state)
    cache = InfiniCache(state, seen_tokens=prompt.shape[1] - 1)
    same = model.generate(prompt, cache=cache, max_new_tokens=20, do_sample=False)
    assert torch.equal(out, same)
    # --- end of the docs snippet ---


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(["the cat sat on the mat", "water is wet", "the sun is hot"] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def test_lm_eval_harness_scores_a_checkpoint_through_its_hf_backend(tmp_path):
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install lm-eval)")
    from lm_eval.tasks import TaskManager

    tok = tiny_tokenizer()
    m = make_model(dtype=torch.float32, vocab_size=len(tok), eos_token_id=tok.eos_token_id)
    m.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    docs = [("the cat sat on the", ["mat", "sun"], 0), ("water is", ["wet", "hot"], 0), ("the sun", ["is", "cat"], 1)]
    with open(tmp_path / "docs.jsonl", "w") as f:
        for question, choices, label in docs:
            f.write(json.dumps({"question": question, "choices": choices, "label": label}) + "\n")
    (tmp_path / "task.yaml").write_text(
        "task: infini_local_choice\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ntarget_delimiter: ' '\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tmp_path / 'ckpt'},dtype=float32,backend=causal",
        tasks=["infini_local_choice"], task_manager=TaskManager(include_path=str(tmp_path)), device="cpu",
        batch_size=2, log_samples=True,
    )  # fmt: skip
    samples = sorted(results["samples"]["infini_local_choice"], key=lambda s: s["doc_id"])
    for sample, (question, choices, _) in zip(samples, docs, strict=True):
        for (loglik, _), choice in zip(sample["filtered_resps"], choices, strict=True):
            context = tok(question)["input_ids"]
            whole = tok(question + " " + choice)["input_ids"]
            with torch.no_grad():
                logprobs = m(torch.tensor([whole])).logits[0].log_softmax(-1)
            ours = sum(logprobs[t - 1, whole[t]].item() for t in range(len(context), len(whole)))
            assert loglik == pytest.approx(ours, abs=1e-4)


def test_generate_command_streams_the_prompt_and_prints_the_greedy_continuation(tmp_path, capsys):
    from infini_llama.cli import main
    from infini_llama.generate import printable

    tok = tiny_tokenizer()
    m = make_model(dtype=torch.float32, vocab_size=len(tok), eos_token_id=tok.eos_token_id)
    m.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    prompt = "the cat sat on the mat. water is wet. " * 8  # many segments of 8 tokens
    (tmp_path / "prompt.txt").write_text(prompt)
    argv = ["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt-file", str(tmp_path / "prompt.txt")]
    assert main([*argv, "--max-new-tokens", "12", "--temperature", "0", "--chunk-size", "5"]) == 0
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    expected = greedy_by_hand(m, ids, 12)
    # Control characters of the continuation are printed escaped (an untrained model emits some).
    assert capsys.readouterr().out == printable(tok.decode(expected[0, ids.shape[1] :])) + "\n"


@pytest.mark.parametrize(
    "option,value,message",
    [("--max-new-tokens", "0", "max-new-tokens"), ("--temperature", "-1", "temperature"), ("--top-k", "-2", "top-k")],
)
def test_generate_command_refuses_bad_options(tmp_path, option, value, message, capsys):
    from infini_llama.cli import main

    argv = ["generate", "--checkpoint", str(tmp_path), "--prompt-file", str(tmp_path / "p.txt"), option, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("infini-llama generate: error: ") and message in err and len(err.splitlines()) == 1
