"""InfiniLlamaForCausalLM: the causal LM of every arm, as a `transformers.PreTrainedModel`.

Parameter names follow HF Llama (`model.layers.0.self_attn.q_proj.weight`, ...), so a Llama checkpoint maps
one to one; Infini-attention adds one tensor per layer, `model.layers.N.self_attn.memory_gate` (β, one per head).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, LlamaForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from infini_llama.layers import CausalSelfAttention, DecoderLayer, InfiniAttention, LocalAttention, RMSNorm
from infini_llama.models.cache import InfiniCache
from infini_llama.models.config import InfiniLlamaConfig
from infini_llama.models.convert import copy_llama_weights, infini_config_from_llama, load_llama
from infini_llama.models.fast_generate import fast_generate
from infini_llama.models.hf_compat import GENERATE_CACHE_NAME, OUTPUT_CACHE_NAME, output_cache, pick_cache

GATE_PARAMETER = "memory_gate"


def build_attention(config: InfiniLlamaConfig) -> nn.Module:
    dims = (
        config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim,
        config.rope_theta,
    )  # fmt: skip
    if config.attention == "full":
        return CausalSelfAttention(*dims)
    if config.attention == "local":
        return LocalAttention(*dims, segment_len=config.segment_len)
    return InfiniAttention(
        *dims,
        segment_len=config.segment_len,
        memory_update=config.memory_update,
        gate_activation=config.gate_activation,
        gate_init=config.gate_init,
        gate_trainable=config.gate_trainable,
        memory_rope=config.memory_rope,
        bptt=config.bptt,
    )


class InfiniLlamaPreTrainedModel(PreTrainedModel):
    config_class = InfiniLlamaConfig
    config: InfiniLlamaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DecoderLayer"]
    _supports_sdpa = True

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with frozen gates (`gate_trainable=False`) frozen again: the loader
        replaces every parameter by one that requires a gradient."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info
        for module in model.modules():
            if isinstance(module, InfiniAttention):
                module.memory_gate.requires_grad_(module.gate_trainable)
        return loaded

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Every initialisation in one place (the 300M study's scheme).

        Linear and embedding weights ~ N(0, std²) with std = 1/sqrt(hidden_size) unless `initializer_range` is
        set; the projections that write into the residual stream (attention o_proj, MLP down_proj) use
        std / sqrt(2 · num_hidden_layers) so the residual's variance does not grow with depth (the layers mark
        them `writes_residual`: transformers calls this per module, without names); RMSNorm weights are 1; the
        gate logits β start at `gate_init` (0: g = 0.5, memory and local attention weighed equally).
        """
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            if getattr(module, "writes_residual", False):
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, InfiniAttention):
            init.constant_(module.memory_gate, self.config.gate_init)


class InfiniLlamaModel(InfiniLlamaPreTrainedModel):
    """Embeddings, decoder layers and the final norm: (B, T) token ids -> (B, T, C) hidden states."""

    def __init__(self, config: InfiniLlamaConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(build_attention(config), config.hidden_size, config.intermediate_size, config.rms_norm_eps)
            for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        states: tuple | None = None,
        use_cache: bool = False,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        keep = use_cache or states is not None
        states = [None] * len(self.layers) if states is None else list(states)
        if len(states) != len(self.layers):
            raise ValueError(f"the state holds {len(states)} layer states, the model has {len(self.layers)}")
        for i, layer in enumerate(self.layers):
            x, states[i] = layer(x, states[i], keep)
        cache = {OUTPUT_CACHE_NAME: tuple(states) if keep else None}
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), **cache)


class InfiniLlamaForCausalLM(InfiniLlamaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: InfiniLlamaConfig):
        super().__init__(config)
        self.model = InfiniLlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: Cache | tuple | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        past_key_values: Cache | tuple | None = None,
        logits_at: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits (B, T, V) and, with `labels` (B, T), the mean next-token loss (labels shifted inside, as in HF;
        -100 is ignored).

        `logits_at`, a boolean (B, T) mask, computes the logits at its True positions only, as (N, V) in row-major
        order: a trainer whose labels are mostly -100 (passkey fine-tuning on the answers) skips the rest of the
        output layer; `labels` are then not accepted (the caller pairs the rows with its targets).

        `cache` (or its older name `past_key_values`, which `generate` uses before transformers 5.24) continues a
        stream, in one of two forms: the tuple of per-layer states that `stream` uses (`use_cache=True` without
        one starts a new tuple; a new tuple is returned, the old one is left as it was), or an `InfiniCache`,
        updated in place and returned. An empty `transformers` Cache of another class, which `generate` hands to
        every model, is replaced by an `InfiniCache`. The output holds it under the installed release's name
        (`cache` from 5.24 on). Padding is not supported (see `check_no_padding`).
        """
        check_no_padding(attention_mask)
        states = pick_cache(cache, past_key_values)
        infini_cache = None
        if isinstance(states, Cache):
            infini_cache = as_infini_cache(states)
            states = infini_cache.states
        out = self.model(input_ids, inputs_embeds, states, bool(use_cache) or infini_cache is not None)
        new_states = output_cache(out)
        if infini_cache is not None:
            infini_cache.set_states(new_states, (input_ids if inputs_embeds is None else inputs_embeds).shape[1])
            new_states = infini_cache
        hidden = out.last_hidden_state
        if logits_at is not None:
            if labels is not None or logits_to_keep:
                raise ValueError("logits_at selects its own positions: pass neither labels nor logits_to_keep")
            hidden = hidden[logits_at]
        elif logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{OUTPUT_CACHE_NAME: new_states})

    def generate(self, *args, cache: Cache | None = None, past_key_values: Cache | None = None, **kwargs):
        """`GenerationMixin.generate` with an `InfiniCache`, given or new, on every supported transformers release.

        A cache to continue from is accepted as `cache` or `past_key_values` and handed on under the name the
        installed release reads. Without one, a new `InfiniCache` is handed in: releases before 5.24 leave the
        cache to the model, and the tuple of states `forward` would start has no `reorder_cache` for beam search.
        """
        given = pick_cache(cache, past_key_values)
        # Greedy and sampled decoding of an Infini model run on the fixed-shape decoder (CUDA graphs on CUDA).
        fast = fast_generate(self, *args, cache=given, **kwargs)
        if fast is not None:
            return fast
        config = kwargs.get("generation_config") or self.generation_config
        if given is None and kwargs.get("use_cache", config.use_cache) is not False:  # None: the default, on
            given = InfiniCache()
        if given is not None:
            kwargs[GENERATE_CACHE_NAME] = given
        return super().generate(*args, **kwargs)

    @torch.no_grad()
    def stream(self, input_ids: torch.LongTensor, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        """Feed the next chunk (B, n) of a long sequence: returns its logits (B, n, V) and the state to pass with
        the following chunk. Any chunking gives the logits of one forward pass over the whole sequence; an
        Infini model's state stays constant in size (memory plus at most one unfinished segment), a local model's
        holds only the unfinished segment.

        The state is the tuple of per-layer `InfiniState` / `KVState` / `LocalState`; `InfiniCache(state,
        seen_tokens)` turns it into the cache `generate` continues from.
        """
        out = self.model(input_ids, None, state, True)
        return self.lm_head(out.last_hidden_state), output_cache(out)

    @classmethod
    def from_llama(
        cls, model_or_path: LlamaForCausalLM | str | os.PathLike, *, load_kwargs: dict | None = None, **infini_options
    ) -> InfiniLlamaForCausalLM:
        """An InfiniLlama with the weights of a `transformers` LlamaForCausalLM (an instance, or a path loaded with
        `LlamaForCausalLM.from_pretrained(path, **load_kwargs)`), on its device and in its dtype.

        `infini_options` set the Infini-attention fields (attention, segment_len (default 1024), memory_update,
        gate_activation, gate_init, memory_rope, bptt); the rest maps from the Llama config. The gates start at
        `gate_init` (0: g = 0.5). Raises ValueError for what does not map: rope scaling, attention/MLP biases.
        """
        llama = load_llama(model_or_path, **(load_kwargs or {}))
        param = next(llama.parameters())
        model = cls(infini_config_from_llama(llama.config, **infini_options)).to(param.device, param.dtype)
        copy_llama_weights(model, llama)
        return model.train(llama.training)

    def gate_values(self) -> torch.Tensor | None:
        """g = act(β) as a (layers, heads) tensor, or None for a model without gates (full or local attention)."""
        if self.config.attention != "infini":
            return None
        return torch.stack([layer.self_attn.gate().detach() for layer in self.model.layers])


def check_no_padding(attention_mask: torch.Tensor | None) -> None:
    """Refuse attention masks that mark padding, left (as `generate` uses for ragged prompts) or right."""
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError(
            "attention_mask marks padding, which InfiniLlama does not support (left padding for generate included): "
            "a pad token would be written into the compressive memory and shift every later segment boundary, so "
            "the result would depend on the padding. Give prompts of equal length in a batch, or one at a time."
        )


def as_infini_cache(cache: Cache | None) -> InfiniCache:
    """`cache` itself if it is an InfiniCache; a new one for None or an empty Cache of another class."""
    if isinstance(cache, InfiniCache):
        return cache
    if cache is not None and cache.get_seq_length() > 0:
        raise ValueError(
            f"the cache is a {type(cache).__name__} holding {cache.get_seq_length()} tokens; InfiniLlama "
            "keeps its state (memory + unfinished segment) in an InfiniCache: pass an InfiniCache or nothing"
        )
    return InfiniCache()


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits[:, t] against labels[:, t + 1], in at least float32; -100 labels are ignored.
    `reduction="sum"` lets a trainer weigh every target token alike across accumulation steps and processes."""
    logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100, reduction=reduction)


def parameter_groups(model: nn.Module, weight_decay: float, gate_lr: float | None = None) -> list[dict]:
    """Optimizer groups: matrices (linear and embedding weights) with weight decay; 1-D tensors (norm weights)
    without; the memory gates β on their own learning rate (`gate_lr`, None: the base LR), never decayed.
    Frozen parameters (a frozen gate, `gate_trainable=False`) are in no group, so a model without trainable gates
    has no "gates" group.

    Weight decay would pull β back to 0 and a global LR near 1e-4 barely moves it, leaving every gate at 0.5;
    the study gave the gates LR 0.01 and no decay.
    """
    decay, no_decay, gates = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(GATE_PARAMETER):
            gates.append(param)
        elif param.dim() >= 2:
            decay.append(param)
        else:
            no_decay.append(param)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    if gates:
        gate_group = {"name": "gates", "params": gates, "weight_decay": 0.0}
        if gate_lr is not None:
            gate_group["lr"] = gate_lr
        groups.append(gate_group)
    return groups
