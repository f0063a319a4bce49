"""Tokenizers: a byte-level BPE trained offline on the embedded corpus, or any HF tokenizer.

Every tokenizer handed to the rest of the project is a ``transformers``
``PreTrainedTokenizerFast`` with ``eos_token`` and ``pad_token`` set, so data, model
and evaluation code treat them alike.  The model's vocabulary size must be
``len(tokenizer)`` (it counts added special tokens).

The default tokenizer is trained once per (corpus fingerprint, vocab size) and cached
under ``<cache_dir>/tokenizers/``; the cache dir is ``$INFINI_LLAMA_CACHE`` or
``~/.cache/infini_llama``.  Training is deterministic: the same corpus and vocab size
give the same vocabulary and merges on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .corpus import corpus_fingerprint, load_corpus

EOS_TOKEN = "<|endoftext|>"  # end of document; also the document separator and BOS
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)  # ids 0 and 1 in the default tokenizer
DEFAULT_VOCAB_SIZE = 8192
# Bump when the training recipe below changes, so cached tokenizers are rebuilt.
_RECIPE_VERSION = "bpe-bytelevel-digits-v3"


def default_cache_dir() -> Path:
    """``$INFINI_LLAMA_CACHE`` if set, else ``~/.cache/infini_llama``."""
    env = os.environ.get("INFINI_LLAMA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "infini_llama"


def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (deterministic for the same input).

    Byte-level means every UTF-8 string round-trips exactly and nothing is ever unknown; a digit is never merged
    with anything, so a number is one token per digit and the space before it a token of its own.
    ``vocab_size`` counts the 256 byte symbols and the two special tokens, so it must be
    at least 258.  Words seen fewer than twice produce no merges (``min_frequency=2``).
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least 258")
    backend = Tokenizer(models.BPE())
    # No normaliser: the text is kept byte-exact.  Every digit is a piece of its own, as in LLaMA's tokenizer,
    # so a number of n digits is n tokens whatever the vocabulary size. The space before a number is not merged
    # with its first digit either: with " 1", " 2", " 3" in the vocabulary (frequent in the corpus) and " 8" not,
    # a number's first token would depend on its first digit, and a model answering " 86556" after "is" would
    # have to choose between " " and a merged " 2" before it had read the key (small models did, wrongly).
    # Then GPT-2 style splitting without an added prefix space, so a text's first word is encoded as written.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return _wrap(backend)


def _default_tokenizer(vocab_size: int, cache_dir: str | os.PathLike | None) -> PreTrainedTokenizerFast:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(f"{_RECIPE_VERSION}|{corpus_fingerprint()}|{vocab_size}".encode()).hexdigest()[:16]
    target = root / "tokenizers" / f"bpe-{vocab_size}-{key}"
    if (target / "tokenizer.json").is_file():
        return _wrap(Tokenizer.from_file(str(target / "tokenizer.json")))

    tok = train_bpe_tokenizer((doc.text for doc in load_corpus("train")), vocab_size)
    # Save into a temporary sibling folder, then rename: a run killed half-way never
    # leaves a folder that looks complete.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tok.save_pretrained(str(tmp))
        (tmp / "infini_llama.json").write_text(
            json.dumps({"recipe": _RECIPE_VERSION, "corpus": corpus_fingerprint(), "vocab_size": vocab_size})
        )
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "tokenizer.json").is_file():  # not a lost race with another process
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def _ensure_eos_pad(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    if tok.eos_token is None:
        # Prefer a token the tokenizer already has, so the vocabulary does not grow.
        # special_tokens_map lists only the tokens that are set (no warnings for unset ones).
        fallback = tok.special_tokens_map.get("sep_token") or tok.special_tokens_map.get("bos_token")
        if fallback is not None:
            tok.eos_token = fallback
        elif EOS_TOKEN in tok.get_vocab():
            tok.eos_token = EOS_TOKEN
        else:
            tok.add_special_tokens({"eos_token": EOS_TOKEN})  # len(tok) grows by one
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_tokenizer(
    name_or_path: str | os.PathLike | None = None,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    cache_dir: str | os.PathLike | None = None,
) -> PreTrainedTokenizerFast:
    """Load a tokenizer with ``eos_token`` and ``pad_token`` set.

    Args:
        name_or_path: ``None`` for the default byte-level BPE trained on the embedded
            corpus's train split (built on first use, then loaded from the cache); a local
            directory saved with ``save_pretrained``; or a Hugging Face Hub name, which is
            only fetched if it is not already in the HF cache and the hub is reachable.
        vocab_size: vocabulary size of the default BPE (ignored for other tokenizers).
        cache_dir: where the default BPE is cached (default :func:`default_cache_dir`).

    For tokenizers without an EOS token, ``sep``/``bos`` is used, else ``<|endoftext|>``
    is added; a missing pad token falls back to EOS.
    """
    if name_or_path is None:
        return _default_tokenizer(vocab_size, cache_dir)
    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.exists() and not local.is_dir():
        raise ValueError(f"tokenizer path {name!r} is a file; pass the directory that holds tokenizer.json")
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name)
    except (OSError, ValueError) as exc:
        if local.is_dir():
            raise ValueError(
                f"could not load a tokenizer from directory {name!r}; it should hold the files written by "
                f"save_pretrained (tokenizer.json, tokenizer_config.json). Cause: {exc}"
            ) from exc
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise FileNotFoundError(
            f"could not load tokenizer {name!r}: it is not a local directory and is not in the Hugging "
            f"Face cache{' (HF_HUB_OFFLINE is set)' if offline else ' or the hub could not be reached'}. "
            "Download it once while online, pass a local directory, or pass None for the built-in BPE. "
            f"Cause: {exc}"
        ) from exc
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise ValueError(
            f"tokenizer {name!r} loaded as a slow {type(tok).__name__}; this project needs a fast "
            "(Rust `tokenizers`) tokenizer: provide tokenizer.json alongside it"
        )
    return _ensure_eos_pad(tok)


def tokenizer_fingerprint(tok: PreTrainedTokenizerFast) -> str:
    """Stable hex digest of a tokenizer's vocabulary, merges, pipeline and special tokens.

    Two tokenizers with the same fingerprint produce the same ids for every text, so
    the fingerprint keys caches of tokenized data.
    """
    h = hashlib.sha256()
    # tokenizer.json lists vocab in id order and merges in rank order: a canonical form.
    state = json.loads(tok.backend_tokenizer.to_str())
    h.update(json.dumps(state, sort_keys=True, ensure_ascii=False).encode())
    h.update(json.dumps({"eos": tok.eos_token, "pad": tok.pad_token, "bos": tok.bos_token}).encode())
    return h.hexdigest()[:16]
