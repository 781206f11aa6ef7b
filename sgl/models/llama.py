"""Llama decoder (Touvron et al., 2023) over the paged KV pool.

Layout follows transformers' ``LlamaForCausalLM`` (so HF checkpoints load by
name) with nano-vllm/SGLang habits for serving: fused ``qkv_proj`` and
``gate_up_proj`` matmuls, residual adds inside the o_proj/down_proj GEMMs,
one cos/sin lookup per step shared by all layers, and attention delegated to an
:class:`~sgl.layers.attention.base.AttentionBackend` that reads and writes
the KV pool. Tokens of all requests are flattened into one ``[n, hidden]``
tensor, so no layer loops over requests or syncs with the host. Decode fast
paths (torch.compile'd regions, GGUF-block GEMV) live in the executor
(:mod:`sgl.executor.compiled_decode`), not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional, Tuple

import torch
from torch import nn

from sgl.layers.attention.base import AttentionBackend
from sgl.layers.embedding import VocabEmbedding
from sgl.layers.linear import GateUpLinear, Linear, QKVLinear
from sgl.layers.norm import RMSNorm
from sgl.layers.rotary import RotaryEmbedding, apply_rotary, rope_parameters

if TYPE_CHECKING:  # the executor is a higher layer: type annotations only
    from sgl.executor.forward_batch import ForwardBatch

# (our fused parameter, checkpoint projection name, shard id)
STACKED_PARAMS = (
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)
IGNORED_WEIGHT_SUFFIXES = ("rotary_emb.inv_freq",)


def fused_param_name(name: str) -> Tuple[str, object]:
    """A checkpoint name as (our parameter name, shard id): ``...q_proj.weight`` ->
    (``...qkv_proj.weight``, ``"q"``); names outside :data:`STACKED_PARAMS` -> (name, None)."""
    for fused, ckpt, shard in STACKED_PARAMS:
        if f".{ckpt}." in name:
            return name.replace(f".{ckpt}.", f".{fused}."), shard
    return name, None


def head_dim_of(hf_config) -> int:
    """``head_dim`` from the config, else ``hidden_size // num_attention_heads``."""
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


class LlamaAttention(nn.Module):
    """Self-attention with grouped-query heads: ``[n, hidden]`` -> ``[n, hidden]``."""

    def __init__(self, hf_config, layer_id: int, attn_backend: AttentionBackend, qkv_bias: bool, o_bias: bool):
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = hf_config.num_attention_heads
        self.num_kv_heads = getattr(hf_config, "num_key_value_heads", None) or self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads={self.num_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_kv_heads}")
        self.head_dim = head_dim_of(hf_config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scaling = self.head_dim ** -0.5
        self.attn_backend = attn_backend
        self.qkv_proj = QKVLinear(hf_config.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, qkv_bias)
        self.o_proj = Linear(self.q_size, hf_config.hidden_size, bias=o_bias)

    def forward(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                forward_batch: ForwardBatch, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[n, hidden]`` normed input -> ``[n, hidden]`` (plus ``residual``, added inside o_proj's GEMM)."""
        qkv = self.qkv_proj(hidden_states)
        qk_size = self.q_size + self.kv_size
        # rotate q and k heads in one pass; q, k, v stay views (no copies)
        q, k = apply_rotary(qkv[:, :qk_size], cos, sin, self.head_dim).split([self.q_size, self.kv_size], dim=-1)
        v = qkv[:, qk_size:]
        out = self.attend(q, k, v, forward_batch)
        return self.o_proj(out) if residual is None else self.o_proj.forward_add(out, residual)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        """Store k/v of the new tokens in the KV pool and attend: ``[n, num_heads * head_dim]`` out."""
        return self.attn_backend.forward(q, k, v, self.layer_id, self.num_heads, self.num_kv_heads,
                                         self.head_dim, self.scaling, forward_batch)


class LlamaMLP(nn.Module):
    """Gated MLP ``down(silu(gate(x)) * up(x))``; gate and up share one weight (:class:`GateUpLinear`)."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        self.gate_up_proj = GateUpLinear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[n, hidden]`` -> ``[n, hidden]`` (plus ``residual``, added inside down_proj's GEMM)."""
        act = self.gate_up_proj.forward_silu_mul(x)
        return self.down_proj(act) if residual is None else self.down_proj.forward_add(act, residual)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: ``forward(hidden [n, hidden], cos, sin, fb) -> [n, hidden]``.

    ``h = x + attn(norm(x)); out = h + mlp(norm(h))``; each residual add happens
    inside the o_proj / down_proj GEMM (a oneDNN post-op when prepacked)."""

    def __init__(self, hf_config, layer_id: int, attn_backend: AttentionBackend, qkv_bias: bool, o_bias: bool):
        super().__init__()
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={hf_config.hidden_act!r} is not supported (only 'silu')")
        eps = hf_config.rms_norm_eps
        self.input_layernorm = RMSNorm(hf_config.hidden_size, eps)
        self.self_attn = LlamaAttention(hf_config, layer_id, attn_backend, qkv_bias, o_bias)
        self.post_attention_layernorm = RMSNorm(hf_config.hidden_size, eps)
        self.mlp = LlamaMLP(hf_config.hidden_size, hf_config.intermediate_size,
                            bias=bool(getattr(hf_config, "mlp_bias", False)))

    def forward(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                forward_batch: ForwardBatch) -> torch.Tensor:
        residual = self.self_attn(self.input_layernorm(hidden_states), cos, sin, forward_batch,
                                  residual=hidden_states)
        return self.mlp(self.post_attention_layernorm(residual), residual=residual)


class LlamaModel(nn.Module):
    """Embedding, decoder layers and final norm: token ids ``[n]`` -> hidden ``[n, hidden]``."""

    def __init__(self, hf_config, attn_backend: AttentionBackend, qkv_bias: bool, o_bias: bool):
        super().__init__()
        self.embed_tokens = VocabEmbedding(hf_config.vocab_size, hf_config.hidden_size)
        self.rotary_emb = RotaryEmbedding(head_dim_of(hf_config), hf_config.max_position_embeddings,
                                          rope_parameters(hf_config))
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(hf_config, i, attn_backend, qkv_bias, o_bias)
            for i in range(hf_config.num_hidden_layers))
        self.norm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch):
        hidden_states = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb.cos_sin(positions, hidden_states.dtype)
        for layer in self.layers:
            hidden_states = layer(hidden_states, cos, sin, forward_batch)
        return self.norm(hidden_states)


class LlamaForCausalLM(nn.Module):
    """Llama causal LM.

    Args:
        hf_config: a transformers ``LlamaConfig`` (or compatible).
        attn_backend: the AttentionBackend all layers call.

    API: ``forward(forward_batch) -> [n, hidden_size]`` hidden states after the
    final norm (one row per new token); ``compute_logits(h [m, hidden]) ->
    [m, vocab_size]`` float32; ``load_weights(iterable of (hf_name, tensor))``.
    """

    def __init__(self, hf_config, attn_backend: AttentionBackend):
        super().__init__()
        self.config = hf_config
        self.attn_backend = attn_backend
        qkv_bias, o_bias = self.attention_biases(hf_config)
        self.model = LlamaModel(hf_config, attn_backend, qkv_bias, o_bias)
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        self.lm_head = Linear(hf_config.hidden_size, hf_config.vocab_size)
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def attention_biases(hf_config) -> Tuple[bool, bool]:
        """(bias on q/k/v, bias on o_proj); Llama uses ``attention_bias`` for both."""
        bias = bool(getattr(hf_config, "attention_bias", False))
        return bias, bias

    def forward(self, forward_batch: ForwardBatch) -> torch.Tensor:
        """Run one step; int64 ``input_ids``/``positions`` ``[n]`` -> hidden ``[n, hidden_size]``.

        New tokens' K/V are written into ``forward_batch.token_to_kv_pool``."""
        self.attn_backend.init_forward_metadata(forward_batch)
        return self.model(forward_batch.input_ids, forward_batch.positions, forward_batch)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``[m, hidden_size]`` -> float32 logits ``[m, vocab_size]``."""
        return self.lm_head(hidden_states).float()

    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named checkpoint tensors into our (partly fused) parameters.

        ``q/k/v_proj`` go into shards of ``qkv_proj``; ``gate/up_proj`` into
        ``gate_up_proj``. ``lm_head.weight`` is skipped when embeddings are
        tied; when it is absent from the checkpoint the head is tied to the
        embedding.

        Raises:
            ValueError: on a checkpoint name with no matching parameter, a
                shape mismatch, or parameters left unloaded.
        """
        for module in self.modules():  # packed and block copies would go stale
            if isinstance(module, Linear):
                module.drop_derived_weights()
        params = dict(self.named_parameters())
        loaded = set()
        for name, tensor in weights:
            if name.endswith(IGNORED_WEIGHT_SUFFIXES):
                continue
            if name == "lm_head.weight" and self.tie_word_embeddings:
                continue
            target, shard = fused_param_name(name)
            param = params.get(target)
            if param is None:
                raise ValueError(f"checkpoint weight {name!r} has no matching parameter in {type(self).__name__}")
            loader = getattr(param, "weight_loader", None)
            if loader is None:
                if tuple(param.shape) != tuple(tensor.shape):
                    raise ValueError(f"checkpoint weight {name!r} has shape {tuple(tensor.shape)}, "
                                     f"parameter {target!r} has {tuple(param.shape)}")
                param.data.copy_(tensor)
            else:
                loader(param, tensor, shard)
            loaded.add((target, shard))
        if "lm_head.weight" in params and ("lm_head.weight", None) not in loaded:
            self.lm_head.weight = self.model.embed_tokens.weight
            self.tie_word_embeddings = True
            loaded.add(("lm_head.weight", None))
        missing = sorted(f"{p}[{s}]" if s is not None else p
                         for p, s in self._required_loads() - loaded)
        if missing:
            raise ValueError(f"checkpoint is missing weights for: {missing[:8]}"
                             f"{' ...' if len(missing) > 8 else ''} ({len(missing)} in all)")

    def _required_loads(self) -> set:
        """(parameter name, shard id) pairs a complete checkpoint must provide."""
        required = set()
        for mod_name, module in self.named_modules():
            for p_name, _ in module.named_parameters(recurse=False):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                shards = module.shard_offsets() if isinstance(module, Linear) else {}
                if shards:
                    required.update((full, s) for s in shards)
                else:
                    required.add((full, None))
        if self.tie_word_embeddings:
            required.discard(("lm_head.weight", None))
        return required
