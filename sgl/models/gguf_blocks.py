"""A GGUF model's own quantized weights as block-affine int8 tensors.

ggml's simple quantization types store a matrix row by row in blocks of 32
values, each block with a float16 scale ``d`` (and, for Q4_1, a float16 offset
``m``). Unpacked, every such weight is

    w[i, j] = scales[i, j // B] * codes[i, j] + mins[i, j // B]

with int8 ``codes``, float32 ``scales``/``mins`` ``[rows, cols // B]`` and
``B = 32``. This is exactly the float32 value the dequantizer produces (gguf-py
computes ``d * q + m`` in float32), so a matrix-vector product over the codes
uses the same weights as one over the float32 copy while reading 1.25 bytes per
weight instead of 4: batch-1 decode reads ~170 MB per step instead of 538 MB
for SmolLM2-135M (see :func:`sgl.executor.compiled_decode.gemv`).

Block layouts follow ggml (``ggml-common.h``; gguf-py ``quants.py``):

- Q4_0 (18 bytes): ``d`` f16, 16 bytes of nibbles; ``w = d * (q - 8)``.
- Q4_1 (20 bytes): ``d`` f16, ``m`` f16, 16 bytes of nibbles; ``w = d * q + m``.
- Q8_0 (34 bytes): ``d`` f16, 32 int8; ``w = d * q``.

Nibbles: value ``j < 16`` of a block is the low half of byte ``j``, value
``j >= 16`` the high half of byte ``j - 16``. Other types (K-quants, I-quants)
are not decoded; their layers use the float32 weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

BLOCK_SIZE = 32
BLOCKS_FILE = "gguf_blocks.safetensors"


@dataclass
class BlockWeight:
    """``w = scales * codes + mins`` per block of ``cols // scales.shape[1]`` columns.

    Attributes:
        codes: int8 ``[rows, cols]``.
        scales: float32 ``[rows, cols // B]``.
        mins: float32 ``[rows, cols // B]``, or None for symmetric types (Q4_0, Q8_0).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    mins: Optional[torch.Tensor] = None

    @property
    def shape(self) -> Tuple[int, int]:
        """``(rows, cols)`` of the weight."""
        return tuple(self.codes.shape)

    def dequantize(self) -> torch.Tensor:
        """float32 ``[rows, cols]`` (see :func:`dequantize_blocks`)."""
        return dequantize_blocks(self.codes, self.scales, self.mins)

    def rows(self, index: torch.Tensor) -> "BlockWeight":
        """The rows ``index`` (int64 ``[rows]``) in that order."""
        return BlockWeight(self.codes[index], self.scales[index], None if self.mins is None else self.mins[index])


def dequantize_blocks(codes: torch.Tensor, scales: torch.Tensor, mins: Optional[torch.Tensor],
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``scales * codes + mins`` per block, computed as gguf-py does (``d * q``, then ``+ m``).

    Args:
        codes: int8 ``[rows, cols]``.
        scales, mins: float32 ``[rows, cols // B]`` (``mins`` None for symmetric types).
        dtype: dtype the codes are converted to before the multiply.

    Returns:
        ``[rows, cols]`` in ``dtype``.
    """
    rows, cols = codes.shape
    nb = scales.shape[1]
    w = codes.view(rows, nb, cols // nb).to(dtype) * scales.unsqueeze(-1)
    if mins is not None:
        w = w + mins.unsqueeze(-1)
    return w.view(rows, cols)


def decode_blocks(raw: np.ndarray, type_name: str, cols: int) -> Optional[BlockWeight]:
    """Unpack a GGUF tensor's bytes ``raw`` (uint8 ``[rows, bytes per row]``) of ggml type
    ``type_name``; None for a type this module does not decode."""
    rows = raw.shape[0]
    nb = cols // BLOCK_SIZE
    header = {"Q4_0": 2, "Q4_1": 4, "Q8_0": 2}.get(type_name)
    if header is None or cols % BLOCK_SIZE:
        return None
    blocks = np.ascontiguousarray(raw).reshape(rows, nb, -1)
    scales = blocks[:, :, 0:2].copy().view(np.float16).astype(np.float32).reshape(rows, nb)
    mins = None
    if type_name == "Q4_1":
        mins = torch.from_numpy(blocks[:, :, 2:4].copy().view(np.float16).astype(np.float32).reshape(rows, nb))
    payload = blocks[:, :, header:]
    if type_name == "Q8_0":
        codes = payload.copy().view(np.int8)
    else:
        codes = np.concatenate([payload & 0x0F, payload >> 4], axis=-1).astype(np.int8)
        if type_name == "Q4_0":
            codes -= 8
    return BlockWeight(torch.from_numpy(codes.reshape(rows, cols)), torch.from_numpy(scales), mins)


def unpermute_index(rows: int, n_head: int) -> torch.Tensor:
    """Row order that undoes llama.cpp's q/k permutation (``permute`` in its
    ``convert_hf_to_gguf.py``: rows ``[n_head, 2, half]`` stored as ``[n_head, half, 2]``).

    Returns int64 ``[rows]``: HF row ``r`` is GGUF row ``index[r]``."""
    half = rows // n_head // 2
    return torch.arange(rows).view(n_head, half, 2).transpose(1, 2).reshape(rows)


def extract_block_weights(gguf_path: str, hf_config, reference: Dict[str, torch.Tensor]
                          ) -> Dict[str, BlockWeight]:
    """Block-affine forms of the linear weights of ``gguf_path``, keyed by HF parameter name.

    Args:
        gguf_path: the GGUF file.
        hf_config: its transformers config (head counts, tied embeddings).
        reference: HF name -> float32 weight as transformers dequantized it.
            A weight is kept only if its blocks dequantize to exactly this
            tensor (trying llama.cpp's q/k row permutation when needed), so
            the result never disagrees with the float32 model.

    The tied embedding is stored under ``lm_head.weight`` (it is the head's weight).
    """
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    field = reader.fields["general.architecture"]
    arch_name = bytes(field.parts[field.data[0]]).decode()
    arch = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}.get(arch_name)
    if arch is None:
        return {}
    name_map = gguf.get_tensor_name_map(arch, hf_config.num_hidden_layers)
    tensors = {t.name: t for t in reader.tensors}
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    out: Dict[str, BlockWeight] = {}
    for hf_name, ref in reference.items():
        if ref.dim() != 2 or not (hf_name.endswith("_proj.weight") or hf_name == "lm_head.weight"
                                  or (tied and hf_name == "model.embed_tokens.weight")):
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        tensor = tensors.get(gguf_name) if gguf_name else None
        if tensor is None:
            continue
        block = decode_blocks(np.asarray(tensor.data), tensor.tensor_type.name, ref.shape[1])
        if block is None or block.shape != tuple(ref.shape):
            continue
        target = "lm_head.weight" if hf_name == "model.embed_tokens.weight" else hf_name
        for n_head in (None, heads, kv_heads):
            if n_head is not None and ref.shape[0] % (2 * n_head):
                continue
            candidate = block if n_head is None else block.rows(unpermute_index(ref.shape[0], n_head))
            if torch.equal(candidate.dequantize(), ref.float()):
                out[target] = candidate
                break
        else:
            logger.warning("GGUF blocks of %s do not reproduce the float32 weight; using float32", hf_name)
    return out


def save_block_weights(blocks: Dict[str, BlockWeight], path) -> None:
    """Write ``blocks`` as safetensors (``<name>.codes``, ``.scales``, ``.mins``)."""
    from safetensors.torch import save_file

    flat = {}
    for name, b in blocks.items():
        flat[f"{name}.codes"] = b.codes.contiguous()
        flat[f"{name}.scales"] = b.scales.contiguous()
        if b.mins is not None:
            flat[f"{name}.mins"] = b.mins.contiguous()
    save_file(flat, str(path), metadata={"format": "sgl-gguf-blocks"})


def load_block_weights(path) -> Iterator[Tuple[str, BlockWeight]]:
    """Read what :func:`save_block_weights` wrote: (HF name, BlockWeight) pairs."""
    from safetensors.torch import load_file

    flat = load_file(str(path))
    for key in sorted(k for k in flat if k.endswith(".codes")):
        name = key[:-len(".codes")]
        yield name, BlockWeight(flat[key], flat[f"{name}.scales"], flat.get(f"{name}.mins"))
