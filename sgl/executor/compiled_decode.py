"""Runner-level decode fast path: the dense parts of each decoder layer as two
functions compiled by ``torch.compile`` (Inductor), SGLang's
``enable_torch_compile`` for the CPU. The model itself stays a plain module
(its eager ``forward`` reads like the reference architecture); the
:class:`CompiledDecode` wrapper, built by the :class:`~sgl.executor.model_runner.ModelRunner`,
runs steps of a few tokens through the compiled regions and everything else
through the model, as nano-vllm keeps CUDA graphs in its model runner.

With one new token per step (batch-1 decode) a CPU forward is bound by reading
the weights: 538 MB per step for SmolLM2-135M in float32. oneDNN's packed GEMV
streams them at ~18 GB/s on the 2-core benchmark machine, with a fixed cost
per call that dominates the small projections. Written as a row-wise
reduction, ``(W * x).sum(-1)``, the matrix-vector product becomes an
Inductor-generated, vectorised, OpenMP-parallel loop that streams ``W`` at
~30 GB/s; the norms, rotary embedding, SiLU gate and residual adds around it
fuse into the same kernels, and each layer costs two calls instead of a dozen
ops. Measured by ``bench/model_decode.py``: 26.7 -> 36-40 tokens/s at batch 1,
and ~60 tokens/s when the weights are a GGUF's own int8 blocks (same loop,
1.25 bytes per weight; see :func:`gemv`). Over float32 weights oneDNN's GEMM
wins from two rows on; over block weights the compiled loop still wins at two
rows (85 vs 49 tokens/s at batch 2) and loses from three. The functions are
compiled for static shapes, one graph per row count.

The functions below are the eager definitions; :func:`compiled` returns the
compiled form, shared by every layer (weights are arguments, not captured
attributes), so a model needs three small graphs per row count (the
pre-attention region with and without an incoming residual, the post-attention
region) and one for the single-row LM head.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, Optional, Tuple, Union

import torch
from torch import nn

from sgl.layers.activation import silu_and_mul
from sgl.layers.linear import GateUpLinear, Linear, QKVLinear
from sgl.layers.norm import RMSNorm, rms_norm
from sgl.layers.rotary import apply_rotary
from sgl.models.gguf_blocks import dequantize_blocks

if TYPE_CHECKING:
    from sgl.executor.forward_batch import ForwardBatch

# Steps of up to this many tokens run compiled when the linears read GGUF blocks.
# bench/model_decode.py, whole model: 2 rows 81 vs 49 tok/s (oneDNN float32 GEMM);
# at 3 and 4 rows the compiled regions lose (69 vs 83, 72 vs 115 tok/s).
BLOCK_MAX_ROWS = 2


def gemv(x: torch.Tensor, weight: Union[torch.Tensor, tuple], bias: Optional[torch.Tensor] = None
         ) -> torch.Tensor:
    """``x @ weight.T + bias`` for a few rows: ``x`` ``[m, k]``, ``bias`` ``[n]`` or None -> ``[m, n]``.

    ``weight`` is a ``[n, k]`` tensor, or a block-affine tuple ``(codes int8
    [n, k], scales [n, k // B], mins [n, k // B] or None)`` (see
    :mod:`sgl.models.gguf_blocks`), unpacked inside the same loop. Each row is
    a broadcast multiply and a reduction over ``k``, so that Inductor fuses the
    ``m`` rows into one streaming pass over the weight (no ``[n, k]``
    temporary); ``m`` must be static (it is unrolled)."""
    if isinstance(weight, tuple):
        weight = dequantize_blocks(*weight, dtype=x.dtype)
    if x.shape[0] == 1:
        y = (weight * x).sum(-1).unsqueeze(0)
    else:
        y = torch.stack([(weight * x[i]).sum(-1) for i in range(x.shape[0])])
    return y if bias is None else y + bias


def pre_attention(hidden: torch.Tensor, residual: Optional[torch.Tensor], norm_weight: torch.Tensor, eps: float,
                  qkv_weight, qkv_bias: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                  q_size: int, kv_size: int, head_dim: int
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Residual add, input RMSNorm, fused q/k/v projection and rotary embedding of ``m`` tokens.

    Weights are what :func:`gemv` takes.

    Args:
        hidden: ``[m, hidden_size]`` output of the previous layer (the embedding for layer 0).
        residual: ``[m, hidden_size]`` residual stream, or None for layer 0.
        cos, sin: ``[m, 1, head_dim]`` rotary tables at the tokens' positions.

    Returns:
        ``(q [m, q_size], k [m, kv_size], v [m, kv_size], residual [m, hidden_size])``.
    """
    residual = hidden if residual is None else hidden + residual
    qkv = gemv(rms_norm(residual, norm_weight, eps), qkv_weight, qkv_bias)
    qk = apply_rotary(qkv[:, :q_size + kv_size], cos, sin, head_dim)
    return qk[:, :q_size], qk[:, q_size:], qkv[:, q_size + kv_size:], residual


def post_attention(attn_out: torch.Tensor, residual: torch.Tensor, o_weight, o_bias: Optional[torch.Tensor],
                   norm_weight: torch.Tensor, eps: float, gate_up_weight, gate_up_bias: Optional[torch.Tensor],
                   down_weight, down_bias: Optional[torch.Tensor]
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Output projection, residual add, post-attention RMSNorm and the gated MLP of ``m`` tokens.

    Weights are what :func:`gemv` takes.

    Args:
        attn_out: ``[m, num_heads * head_dim]`` attention output.
        residual: ``[m, hidden_size]`` residual stream.

    Returns:
        ``(mlp_out [m, hidden_size], residual [m, hidden_size])``.
    """
    residual = gemv(attn_out, o_weight, o_bias) + residual
    gate_up = gemv(rms_norm(residual, norm_weight, eps), gate_up_weight, gate_up_bias)
    return gemv(silu_and_mul(gate_up), down_weight, down_bias), residual


@functools.lru_cache(maxsize=None)
def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn)`` for static shapes, created once per function.

    Compilation happens at the first call of each new input signature (a C++
    compiler must be on PATH); Inductor's on-disk cache makes it ~1 s per graph
    after the first process on a machine (~17 s cold). Call
    :func:`configure_compile` on the thread that runs the model first."""
    return torch.compile(fn, dynamic=False)


def configure_compile() -> None:
    """Settings for :func:`compiled`, applied to the calling thread (dynamo's and
    Inductor's config assignments are per thread).

    Each model adds a few signatures per function (shapes, row counts, biases,
    block or float weights), so the recompile limit is raised from 8 to 64; past
    it dynamo runs the function eagerly (same results, slower), never fails.
    The graphs are small and few, so they compile in-process (a worker pool is
    no faster and leaves subprocesses behind)."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    inductor_config.compile_threads = 1


def _children(module: Optional[nn.Module]) -> set:
    return set(dict(module.named_children())) if module is not None else set()


def _is_standard_decoder_layer(layer: nn.Module) -> bool:
    """Whether ``layer`` is a pre-norm decoder layer the compiled regions reproduce exactly:
    RMSNorm -> fused q/k/v (+ rotary) -> attention -> o_proj (+ residual) -> RMSNorm -> gated MLP
    (+ residual), with no other submodules (a q/k-norm, say, would otherwise be skipped)."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    return (_children(layer) == {"input_layernorm", "self_attn", "post_attention_layernorm", "mlp"}
            and isinstance(layer.input_layernorm, RMSNorm) and isinstance(layer.post_attention_layernorm, RMSNorm)
            and _children(attn) == {"qkv_proj", "o_proj"} and isinstance(attn.qkv_proj, QKVLinear)
            and isinstance(attn.o_proj, Linear) and all(hasattr(attn, a) for a in ("attend", "q_size", "kv_size"))
            and _children(mlp) == {"gate_up_proj", "down_proj"} and isinstance(mlp.gate_up_proj, GateUpLinear)
            and isinstance(mlp.down_proj, Linear))


class CompiledDecode:
    """A model wrapped with the compiled few-token path; same API as the model
    (``forward(forward_batch) -> hidden [n, hidden]``, ``compute_logits(hidden [m, hidden]) ->
    float32 [m, vocab]``), so the runner calls it in the model's place.

    Steps of up to :attr:`max_rows` new tokens run each layer as the compiled
    :func:`pre_attention` / :func:`post_attention` regions around the layer's own
    attention call (which writes the KV pool); single-row logits go through the
    compiled :func:`gemv`. Everything else is the model's eager ``forward``. ``max_rows``
    is 1 over float32 weights and :data:`BLOCK_MAX_ROWS` when every layer linear reads
    GGUF blocks (there the loop over 1.25-byte weights beats oneDNN's float32 GEMM).

    The model must be a causal LM built as ``model.model.{embed_tokens, rotary_emb, layers,
    norm}``, ``model.lm_head``, ``model.attn_backend``, with standard pre-norm decoder layers
    (see :func:`supports`; Llama and Qwen2 are); others are served eagerly by the runner.

    Args:
        model: the model to wrap.

    Raises:
        ValueError: if :func:`supports` is false for ``model``.
    """

    def __init__(self, model: nn.Module):
        if not self.supports(model):
            raise ValueError(f"{type(model).__name__} does not have the standard decoder layers "
                             f"the compiled decode path reproduces")
        self.model = model
        self.layers = list(model.model.layers)
        blocks = all(lin.block_weight is not None for layer in self.layers
                     for lin in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                                 layer.mlp.gate_up_proj, layer.mlp.down_proj))
        self.max_rows = BLOCK_MAX_ROWS if blocks else 1

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether ``model`` has the structure described in the class docstring."""
        inner = getattr(model, "model", None)
        return (inner is not None and all(hasattr(inner, a) for a in ("embed_tokens", "rotary_emb", "layers", "norm"))
                and isinstance(getattr(model, "lm_head", None), Linear) and hasattr(model, "attn_backend")
                and len(inner.layers) > 0 and all(_is_standard_decoder_layer(layer) for layer in inner.layers))

    def compile(self) -> None:
        """Compile every region now (each row count up to :attr:`max_rows`), on the calling
        thread, so no request waits for it; ~17 s on a machine's first run, a few seconds
        once Inductor's disk cache is warm.

        Raises:
            RuntimeError: compilation failed (e.g. no C++ compiler); serve the eager model instead.
        """
        layer, param = self.layers[0], self.model.lm_head.weight
        attn = layer.self_attn
        configure_compile()
        try:
            with torch.inference_mode():  # the grad mode of serving, so the graphs are reused
                for m in range(1, self.max_rows + 1):
                    hidden = torch.zeros(m, self.model.config.hidden_size, dtype=param.dtype, device=param.device)
                    rot = torch.zeros(m, 1, attn.head_dim, dtype=param.dtype, device=param.device)
                    attn_out = torch.zeros(m, attn.q_size, dtype=param.dtype, device=param.device)
                    self.layer_pre_attention(layer, hidden, None, rot, rot)
                    self.layer_pre_attention(layer, hidden, hidden, rot, rot)
                    self.layer_post_attention(layer, attn_out, hidden)
                self.compute_logits(hidden[:1])
        except Exception as e:
            raise RuntimeError(f"torch.compile of the single-token path failed: {e}") from e

    def forward(self, forward_batch: "ForwardBatch") -> torch.Tensor:
        """One step (see the model's ``forward``): int64 ``[n]`` ids -> hidden ``[n, hidden_size]``;
        compiled when ``n <= max_rows``, else the model's eager forward."""
        if forward_batch.input_ids.numel() > self.max_rows:
            return self.model.forward(forward_batch)
        inner = self.model.model
        self.model.attn_backend.init_forward_metadata(forward_batch)
        hidden = inner.embed_tokens(forward_batch.input_ids)
        cos, sin = inner.rotary_emb.cos_sin(forward_batch.positions, hidden.dtype)
        residual = None
        for layer in self.layers:
            q, k, v, residual = self.layer_pre_attention(layer, hidden, residual, cos, sin)
            hidden, residual = self.layer_post_attention(layer, layer.self_attn.attend(q, k, v, forward_batch),
                                                         residual)
        return inner.norm(hidden, residual)[0]

    __call__ = forward  # a drop-in for the model: ``wrapper(fb)`` like ``model(fb)``

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``[m, hidden_size]`` -> float32 ``[m, vocab_size]``; one row through the compiled :func:`gemv`."""
        if hidden_states.shape[0] != 1:
            return self.model.compute_logits(hidden_states)
        head = self.model.lm_head
        return compiled(gemv)(hidden_states, head.gemv_weight, head.bias).float()

    @staticmethod
    def layer_pre_attention(layer: nn.Module, hidden, residual, cos, sin):
        """``layer``'s tokens through :func:`pre_attention` (compiled): q, k, v, residual."""
        attn, norm = layer.self_attn, layer.input_layernorm
        return compiled(pre_attention)(hidden, residual, norm.weight, norm.eps, attn.qkv_proj.gemv_weight,
                                       attn.qkv_proj.bias, cos, sin, attn.q_size, attn.kv_size, attn.head_dim)

    @staticmethod
    def layer_post_attention(layer: nn.Module, attn_out, residual):
        """``layer``'s attention output through :func:`post_attention` (compiled): mlp out, residual."""
        o_proj, norm, mlp = layer.self_attn.o_proj, layer.post_attention_layernorm, layer.mlp
        return compiled(post_attention)(attn_out, residual, o_proj.gemv_weight, o_proj.bias, norm.weight, norm.eps,
                                        mlp.gate_up_proj.gemv_weight, mlp.gate_up_proj.bias,
                                        mlp.down_proj.gemv_weight, mlp.down_proj.bias)
