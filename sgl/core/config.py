"""Structured configs (validated by OmegaConf against these dataclasses) and
Hydra composition.

The dataclasses are stored in Hydra's ConfigStore (:func:`register_configs`);
each option of the YAML groups under ``configs/`` (model, cache, scheduler,
attention, sampler, grammar, server) extends its group's dataclass and sets
only what differs from its defaults (``experiment`` options are free-form).
``compose_config`` builds an ``EngineConfig`` from Hydra overrides such as
``["cache=none", "scheduler.chunked_prefill_size=64"]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

#: ``model.name`` of the bundled SmolLM2-135M-Instruct, the one model that needs no ``model.path``.
BUNDLED_MODEL = "smollm2_135m"


@dataclass
class ModelConfig:
    """name: config name; path: HF directory or .gguf file (None = the bundled SmolLM2-135M-Instruct GGUF);
    dtype: torch dtype name; device: torch device; context_length: override of the model's max positions (tokens);
    enable_torch_compile: run single-token (batch-1 decode) steps through torch.compile'd layer regions
    (the runner's CompiledDecode, sgl/executor/compiled_decode.py; needs a C++ compiler, else the eager model is used with a warning);
    gguf_block_gemv: with enable_torch_compile, single-token matmuls of a GGUF model read its own quantized
    blocks (Q4_0/Q4_1/Q8_0: the same weights in ~3x fewer bytes; sgl/models/gguf_blocks.py)."""
    name: str = BUNDLED_MODEL
    path: Optional[str] = None
    dtype: str = "float32"
    device: str = "cpu"
    context_length: Optional[int] = None
    enable_torch_compile: bool = True
    gguf_block_gemv: bool = True

    def __post_init__(self):
        if self.path is None and self.name != BUNDLED_MODEL:
            raise ValueError(f"model.path must be set for model={self.name} (only the bundled "
                             f"{BUNDLED_MODEL} loads without one)")


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
    """name: Sampler implementation (the ``SAMPLERS`` registry, sgl/engine/sampling/sampler.py);
    seed: global RNG seed for unseeded requests (None = nondeterministic)."""
    name: str = "default"
    seed: Optional[int] = None


@dataclass
class GrammarConfig:
    """backend: GrammarBackend implementation (builtin | xgrammar); jump_forward: compressed-FSM jump-forward."""
    backend: str = "builtin"
    jump_forward: bool = True


@dataclass
class ServerConfig:
    """The HTTP layer (``python -m sgl.launch``, ``sgl.server.app.create_app``, ``sgl.server.serve.serve``).

    host: interface to bind (loopback unless told otherwise); port: TCP port;
    api_key: when set, every route except ``/health`` needs ``Authorization: Bearer <api_key>``;
    served_model_name: model id reported by ``/v1/models`` and in responses (None = the engine's model path);
    log_requests: write one access-log line per request;
    max_request_bytes: largest request body accepted (bytes; larger gets 413 before it is parsed);
    max_prompt_chars: longest prompt text accepted before tokenizing (characters; None = 32 x the
    context length);
    max_n: most completions one request may ask for (``n``, on every route);
    allow_request_chat_template: whether a request may send its own chat template source
    (``chat_template_kwargs.chat_template`` and the like; off by default: a template is a program);
    chat_template_timeout_s: time budget for rendering a request-supplied chat template (seconds);
    max_rendered_prompt_chars: largest prompt a chat template may render (characters);
    shutdown_timeout_s: on SIGTERM, how long running requests may take to finish (seconds) before
    the rest are ended with a final error.
    """
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: Optional[str] = None
    served_model_name: Optional[str] = None
    log_requests: bool = True
    max_request_bytes: int = 8 * 2**20
    max_prompt_chars: Optional[int] = None
    max_n: int = 64
    allow_request_chat_template: bool = False
    chat_template_timeout_s: float = 2.0
    max_rendered_prompt_chars: int = 4 * 2**20
    shutdown_timeout_s: float = 30.0

    @classmethod
    def from_config(cls, config: Any = None) -> "ServerConfig":
        """A ServerConfig as is; None as the defaults; a mapping or an OmegaConf node of its fields.

        Raises:
            ValueError: a field this dataclass does not have, or a value of the wrong type.
        """
        if isinstance(config, cls):
            return config
        if config is None:
            return cls()
        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
        if not isinstance(config, Mapping):
            raise ValueError(f"server config: expected a ServerConfig or a mapping, got {type(config).__name__}")
        unknown = sorted(set(config) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown server option(s) {unknown}; known: {[f.name for f in fields(cls)]}")
        try:
            return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), dict(config)))
        except Exception as e:  # omegaconf ValidationError
            raise ValueError(f"invalid server config: {e}") from e

    def public_dict(self) -> Dict[str, Any]:
        """The fields with the API key redacted."""
        out = asdict(self)
        out["api_key"] = "***" if self.api_key else None
        return out


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


#: The config groups and the structured config (schema and defaults) their options extend.
SCHEMAS: Dict[str, type] = {"model": ModelConfig, "cache": CacheConfig, "scheduler": SchedulerConfig,
                            "attention": AttentionConfig, "sampler": SamplerConfig, "grammar": GrammarConfig,
                            "server": ServerConfig}
GROUPS = tuple(SCHEMAS)


def register_configs() -> None:
    """Store the dataclasses in Hydra's ConfigStore as base configs: ``engine_schema`` (EngineConfig, the
    root that ``configs/config.yaml`` extends) and ``<group>_schema`` for each group. An option YAML
    extends its group's schema (``defaults: [/cache_schema@_here_, _self_]``) and holds only the values
    that differ from the dataclass defaults. They are stored outside the groups, so ``--help`` lists
    only the YAML options. Runs on import; storing again replaces the same nodes."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="engine_schema", node=EngineConfig)
    for group, schema in SCHEMAS.items():
        cs.store(name=f"{group}_schema", node=schema)


register_configs()


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
