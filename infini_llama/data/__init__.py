"""Data layer: embedded corpus, tokenizers, tokenized caches and window sampling.

Typical training setup::

    from infini_llama.data import load_tokenizer, prepare_tokens, WindowSampler, get_batch

    tok = load_tokenizer(None, vocab_size=4096)            # default BPE, cached
    data = prepare_tokens(tok)                             # embedded corpus -> memmaps
    sampler = WindowSampler(data.num_train_tokens, seq_len=2048, seed=0, rank=0, world_size=1)
    input_ids, _ = get_batch(data.train, sampler.offsets(step, batch_size), 2048)
    loss = model(input_ids=input_ids, labels=input_ids).loss   # the model shifts labels

The model's vocabulary size is ``data.vocab_size`` (``len(tok)``).
"""

from .corpus import Document, corpus_fingerprint, held_out_book, load_corpus
from .sampler import WindowSampler, get_batch, get_windows, iter_validation_batches, validation_offsets
from .shards import TokenData, dtype_for_vocab, encode_documents, load_token_data, prepare_tokens
from .sources import expand_paths, iter_documents, sources_fingerprint
from .tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    default_cache_dir,
    load_tokenizer,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)

__all__ = [
    "EOS_TOKEN",
    "PAD_TOKEN",
    "Document",
    "TokenData",
    "WindowSampler",
    "corpus_fingerprint",
    "default_cache_dir",
    "dtype_for_vocab",
    "encode_documents",
    "expand_paths",
    "get_batch",
    "get_windows",
    "held_out_book",
    "iter_documents",
    "iter_validation_batches",
    "load_corpus",
    "load_token_data",
    "load_tokenizer",
    "prepare_tokens",
    "sources_fingerprint",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
    "validation_offsets",
]
