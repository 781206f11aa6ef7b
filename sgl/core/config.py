"""Structured configs (validated by OmegaConf against these dataclasses) and
Hydra composition.

The YAML groups under ``configs/`` (model, cache, scheduler, attention,
sampler, grammar, server, experiment) fill these dataclasses; ``compose_config``
builds an ``EngineConfig`` from Hydra overrides such as ``["cache=none",
"scheduler.chunked_prefill_size=64"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class ModelConfig:
    """name: config name; path: HF directory or .gguf file (None = the bundled SmolLM2-135M-Instruct GGUF);
    dtype: torch dtype name; device: torch device; context_length: override of the model's max positions (tokens);
    enable_torch_compile: run single-token (batch-1 decode) steps through torch.compile'd layer regions
    (sgl/models/compiled_decode.py; needs a C++ compiler, else the eager model is used with a warning);
    gguf_block_gemv: with enable_torch_compile, single-token matmuls of a GGUF model read its own quantized
    blocks (Q4_0/Q4_1/Q8_0: the same weights in ~3x fewer bytes; sgl/models/gguf_blocks.py)."""
    name: str = "smollm2_135m"
    path: Optional[str] = None
    dtype: str = "float32"
    device: str = "cpu"
    context_length: Optional[int] = None
    chat_template: Optional[str] = None
    enable_torch_compile: bool = True
    gguf_block_gemv: bool = True


@dataclass
class CacheConfig:
    """name: CacheManager implementation (radix | lru | none); page_size: tokens per cached block for
    page-granular caches (lru; None = the implementation's default; radix and none take none)."""
    name: str = "radix"
    page_size: Optional[int] = None

    def __post_init__(self):
        if self.page_size is not None and self.name != "lru":
            raise ValueError(f"cache.page_size applies to page-granular caches (lru), not cache={self.name}")


@dataclass
class SchedulerConfig:
    """policy: SchedulePolicy (lpm | fcfs); budgets are in tokens.

    max_total_tokens: KV pool size in tokens (None = from mem_fraction_static of
    system memory, capped at max_running_requests * context length).
    max_prefill_tokens: token budget of one extend batch.
    chunked_prefill_size: longest extend of a single request per step (<=0 disables chunking).
    new_token_ratio: fraction of each running request's remaining max_new_tokens reserved when admitting
    new requests (decays to min_new_token_ratio; SGLang's admission heuristic).
    log_interval: decode steps between "Decode batch." log lines (0 = never).
    """
    policy: str = "lpm"
    max_running_requests: int = 64
    max_total_tokens: Optional[int] = None
    mem_fraction_static: float = 0.05
    max_prefill_tokens: int = 4096
    chunked_prefill_size: int = 1024
    init_new_token_ratio: float = 0.7
    min_new_token_ratio: float = 0.1
    new_token_ratio_decay: float = 0.001
    log_interval: int = 40
    check_integrity_when_idle: bool = True

    def __post_init__(self):
        positive = ("max_running_requests", "max_prefill_tokens")
        for name in positive + (("max_total_tokens",) if self.max_total_tokens is not None else ()):
            if getattr(self, name) <= 0:
                raise ValueError(f"scheduler.{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.mem_fraction_static < 1:
            raise ValueError(f"scheduler.mem_fraction_static must be in (0, 1), got {self.mem_fraction_static}")
        if not 0 <= self.min_new_token_ratio <= self.init_new_token_ratio:
            raise ValueError("scheduler needs 0 <= min_new_token_ratio <= init_new_token_ratio")
        if self.log_interval < 0:
            raise ValueError(f"scheduler.log_interval must be >= 0, got {self.log_interval}")


@dataclass
class AttentionConfig:
    """backend: AttentionBackend implementation (torch | triton);
    decode_staging_mb: torch backend only: memory (MiB) for a dense copy of the decode batch's K/V that
    is extended in place each step instead of gathered from the paged pool in every layer (0 = always
    gather; sgl/kernels/attention/decode_staging.py)."""
    backend: str = "torch"
    decode_staging_mb: int = 512

    def __post_init__(self):
        if self.decode_staging_mb < 0:
            raise ValueError(f"attention.decode_staging_mb must be >= 0, got {self.decode_staging_mb}")

    def backend_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``make_attention_backend(self.backend, ...)``."""
        return {"decode_staging_mb": self.decode_staging_mb} if self.backend == "torch" else {}


@dataclass
class SamplerConfig:
    """seed: global RNG seed for unseeded requests (None = nondeterministic)."""
    name: str = "default"
    seed: Optional[int] = None


@dataclass
class GrammarConfig:
    """backend: GrammarBackend implementation (builtin | xgrammar); jump_forward: compressed-FSM jump-forward."""
    backend: str = "builtin"
    jump_forward: bool = True


@dataclass
class ServerConfig:
    """host/port of the HTTP server; api_key: Bearer token checked on every route but /health."""
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: Optional[str] = None
    log_requests: bool = True


@dataclass
class EngineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    grammar: GrammarConfig = field(default_factory=GrammarConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    experiment: Optional[Dict[str, Any]] = None


GROUPS = ("model", "cache", "scheduler", "attention", "sampler", "grammar", "server")


def to_engine_config(cfg: DictConfig | EngineConfig) -> EngineConfig:
    """Validate a composed config against EngineConfig (unknown fields or wrong types raise ValueError)."""
    if isinstance(cfg, EngineConfig):
        return cfg
    schema = OmegaConf.structured(EngineConfig)
    try:
        return OmegaConf.to_object(OmegaConf.merge(schema, cfg))
    except ValueError:
        raise
    except Exception as e:  # omegaconf raises ConfigKeyError / ValidationError
        raise ValueError(f"invalid config: {e}") from e


def kwargs_to_overrides(kwargs: Dict[str, Any]) -> List[str]:
    """Map ``Engine(**kwargs)`` to Hydra overrides.

    ``cache="none"`` (a group name with a string) selects a group option;
    ``"scheduler.chunked_prefill_size"`` or a bare field name that exists in
    exactly one group (``chunked_prefill_size=64``) sets that field.

    Raises:
        ValueError: for a name that matches no config field.
    """
    schema = OmegaConf.structured(EngineConfig)
    owners: Dict[str, List[str]] = {}
    for g in GROUPS:
        for name in schema[g].keys():
            owners.setdefault(name, []).append(g)
    fields = {name: gs[0] for name, gs in owners.items() if len(gs) == 1}
    overrides = []
    for key, value in kwargs.items():
        if key in GROUPS and isinstance(value, str):
            overrides.append(f"{key}={value}")
            continue
        if "." in key:
            full = key
        elif fields.get(key):
            full = f"{fields[key]}.{key}"
        elif key == "model_path":
            full = "model.path"
        else:
            raise ValueError(f"unknown engine option {key!r}; use a config field name such as "
                             f"'max_total_tokens' or a dotted path such as 'scheduler.policy'")
        overrides.append(f"++{full}={_override_value(value)}")
    return overrides


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def compose_config(overrides: Optional[List[str]] = None) -> EngineConfig:
    """Compose ``configs/config.yaml`` with Hydra overrides and validate it.

    Works inside and outside a running Hydra app.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides or [])
    try:
        if GlobalHydra.instance().is_initialized():
            cfg = compose(config_name="config", overrides=overrides)
        else:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
                cfg = compose(config_name="config", overrides=overrides)
    except Exception as e:
        if isinstance(e, ValueError):
            raise
        raise ValueError(f"invalid config override(s) {overrides}: {e}") from e
    return to_engine_config(cfg)


def argv_to_overrides(argv: List[str]) -> List[str]:
    """Hydra overrides for command-line tokens, as ``python -m sgl.server`` takes them: each token is
    either a Hydra override (``cache=none``, ``scheduler.max_total_tokens=4096``, ``+experiment=x``)
    or an ``sgl.Engine`` keyword with a bare field name (``max_total_tokens=4096``), whose value is
    parsed as YAML.

    Raises:
        ValueError: a token that is not ``key=value``, or an unknown bare field name.
    """
    import yaml

    out: List[str] = []
    for token in argv:
        key, sep, raw = token.partition("=")
        bare = key.lstrip("+~")
        if not sep or not bare:
            raise ValueError(f"expected key=value, got {token!r}")
        if "." in bare or bare in GROUPS or bare == "experiment" or key != bare:
            out.append(token)
        else:
            out.extend(kwargs_to_overrides({bare: yaml.safe_load(raw) if raw else ""}))
    return out
