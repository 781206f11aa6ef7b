"""One-time conversion of a GGUF file into a Hugging Face model directory.

transformers reads the GGUF config, tokenizer and (dequantized) weights
(``gguf_file=``; it also undoes llama.cpp's q/k row permutation). We save
``config.json``, ``model.safetensors`` (float32) and the tokenizer files
(``save_pretrained``, which keeps the chat template) into a cache directory,
so later starts read plain safetensors in about a second. Linear weights
stored in a simple ggml block type are also kept in that form
(``gguf_blocks.safetensors``, see :mod:`sgl.models.gguf_blocks`) for the
single-token matmuls.

The cache directory is ``<base>/<stem>-<hash>`` where ``hash`` covers the
file's real path, size, mtime and :data:`CONVERT_VERSION`, and ``base`` is
the ``cache_dir`` argument, else ``$SGL_CACHE_DIR``, else ``~/.cache/sgl``.
It is written into a temporary sibling and renamed into place, so a crash
never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

CONVERT_VERSION = 2
GGUF_MAGIC = b"GGUF"
CACHE_FILES = ("config.json", "model.safetensors")


def cache_base(cache_dir: Optional[str] = None) -> Path:
    """Base cache folder: ``cache_dir``, else ``$SGL_CACHE_DIR``, else ``~/.cache/sgl``."""
    return Path(cache_dir or os.environ.get("SGL_CACHE_DIR") or Path.home() / ".cache" / "sgl").expanduser()


def gguf_cache_dir(gguf_path: str, cache_dir: Optional[str] = None) -> Path:
    """Where the conversion of ``gguf_path`` lives (whether or not it exists yet)."""
    path = Path(gguf_path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}|v{CONVERT_VERSION}".encode()
    return cache_base(cache_dir) / f"{path.stem}-{hashlib.sha256(key).hexdigest()[:12]}"


def check_gguf_file(gguf_path: str) -> None:
    """Raises FileNotFoundError if missing, ValueError if it lacks the GGUF magic bytes."""
    path = Path(gguf_path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{gguf_path} is not a GGUF file (magic bytes {magic!r}, expected {GGUF_MAGIC!r})")


def is_complete_cache(model_dir: Path) -> bool:
    return model_dir.is_dir() and all((model_dir / f).is_file() for f in CACHE_FILES)


def ensure_converted(gguf_path: str, cache_dir: Optional[str] = None) -> Path:
    """Return the HF directory for ``gguf_path``, converting it first if not cached.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable GGUF model (message names it).
    """
    check_gguf_file(gguf_path)
    target = gguf_cache_dir(gguf_path, cache_dir)
    if is_complete_cache(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        t0 = time.perf_counter()
        convert_gguf(gguf_path, tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete_cache(target):  # lost a race to a broken dir: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
        logger.info("converted %s -> %s in %.1f s", gguf_path, target, time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf_path: str, out_dir: Path) -> None:
    """Dequantize ``gguf_path`` and save an HF model directory (float32 safetensors,
    config.json, tokenizer files) into ``out_dir``.

    Raises:
        ValueError: transformers cannot read the file (corrupt or unsupported).
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from sgl.models.gguf_blocks import BLOCKS_FILE, extract_block_weights, save_block_weights

    path = Path(gguf_path).resolve()
    kw = dict(gguf_file=path.name, local_files_only=True)
    try:
        config = AutoConfig.from_pretrained(path.parent, **kw)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kw)
        model = AutoModelForCausalLM.from_pretrained(path.parent, config=config, dtype=torch.float32, **kw)
    except Exception as e:  # transformers/gguf raise many types on bad files
        raise ValueError(f"cannot convert GGUF file {gguf_path}: {type(e).__name__}: {e}") from e
    if not getattr(config, "architectures", None):
        arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
        config.architectures = [arch] if arch else None
    if hasattr(config, "quantization_config"):  # the weights we write are dequantized
        del config.quantization_config
    # save_pretrained refuses GGUF-loaded models, so write the tensors ourselves;
    # a tied lm_head shares the embedding's storage and is left out.
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()
             if not (name == "lm_head.weight" and config.tie_word_embeddings)}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    blocks = extract_block_weights(str(path), config, state)
    if blocks:
        save_block_weights(blocks, out_dir / BLOCKS_FILE)
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
