"""Every option of every config group composes through Hydra and builds what it says; option YAMLs hold
only what differs from their dataclass; overrides and bad values give clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hydra import compose, initialize_config_dir

from sgl.core.config import (CONFIG_DIR, GROUPS, SCHEMAS, EngineConfig, ServerConfig, compose_config,
                             kwargs_to_overrides, to_engine_config)

#: (group, option) -> the values that tell the option apart (every other field keeps its default).
EXPECTED = {
    ("model", "smollm2_135m"): {"name": "smollm2_135m", "path": None},
    ("model", "hf_dir"): {"name": "hf_dir", "path": "/x"},  # composed with model.path=/x
    ("cache", "radix"): {"name": "radix", "page_size": None},
    ("cache", "lru"): {"name": "lru", "page_size": 16},
    ("cache", "none"): {"name": "none", "page_size": None},
    ("scheduler", "lpm"): {"policy": "lpm"},
    ("scheduler", "fcfs"): {"policy": "fcfs"},
    ("scheduler", "dfs-weight"): {"policy": "dfs-weight"},
    ("attention", "torch"): {"backend": "torch", "decode_staging_mb": 512},
    ("attention", "triton"): {"backend": "triton"},
    ("sampler", "default"): {"name": "default", "seed": None},
    ("grammar", "builtin"): {"backend": "builtin", "jump_forward": True},
    ("grammar", "xgrammar"): {"backend": "xgrammar", "jump_forward": False},
    ("server", "default"): {"host": "127.0.0.1", "port": 30000, "api_key": None},
}
EXTRA_OVERRIDES = {("model", "hf_dir"): ["model.path=/x"]}


def _options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def hydra_compose():
    """``compose(overrides) -> EngineConfig`` through Hydra's own initialize_config_dir + compose."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        yield lambda overrides: to_engine_config(compose(config_name="config", overrides=overrides))


def test_every_option_has_expectations():
    on_disk = {(g, o) for g in GROUPS for o in _options(g)}
    assert on_disk == set(EXPECTED)
    assert {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()} == set(GROUPS) | {"experiment"}


@pytest.mark.parametrize("group,option", sorted(EXPECTED))
def test_every_option_builds_its_dataclass(hydra_compose, group, option):
    cfg = hydra_compose([f"{group}={option}"] + EXTRA_OVERRIDES.get((group, option), []))
    assert isinstance(cfg, EngineConfig)
    built = getattr(cfg, group)
    assert type(built) is SCHEMAS[group]
    expected = EXPECTED[(group, option)]
    assert {k: getattr(built, k) for k in expected} == expected
    defaults = SCHEMAS[group]()
    for f in dataclasses.fields(built):  # the rest is the dataclass's defaults
        if f.name not in expected:
            assert getattr(built, f.name) == getattr(defaults, f.name), f"{group}={option}: {f.name}"
    others = [g for g in GROUPS if g != group]  # the other groups keep the root's default options
    assert all(getattr(cfg, g) == getattr(EngineConfig(), g) for g in others)


@pytest.mark.parametrize("group,option", sorted(EXPECTED))
def test_option_yaml_extends_its_schema_and_holds_only_non_defaults(group, option):
    raw = yaml.safe_load((CONFIG_DIR / group / f"{option}.yaml").read_text()) or {}
    assert raw.pop("defaults") == [f"/{group}_schema@_here_", "_self_"]
    defaults = dataclasses.asdict(SCHEMAS[group]())
    assert set(raw) <= set(defaults)
    same = {k: v for k, v in raw.items() if defaults[k] == v}
    assert not same, f"{group}/{option}.yaml repeats dataclass defaults {same}"


def test_default_config_is_the_dataclass_defaults(hydra_compose):
    assert hydra_compose([]) == EngineConfig()
    assert compose_config() == EngineConfig()


def test_every_component_instantiates():
    import os

    import torch

    from sgl.engine.cache import make_cache_manager
    from sgl.engine.sampling.sampler import SAMPLERS, Sampler
    from sgl.engine.schedule_policy import make_schedule_policy
    from sgl.executor.memory_pool import TokenToKVPool
    from sgl.grammar import GRAMMAR_BACKENDS
    from sgl.layers.attention import make_attention_backend

    pool = TokenToKVPool(8, 1, 1, 4, torch.float32)
    for opt in _options("cache"):
        cache = compose_config([f"cache={opt}"]).cache
        kw = {} if cache.page_size is None else {"page_size": cache.page_size}
        manager = make_cache_manager(cache.name, pool, **kw)
        assert manager.match_prefix([1]).prefix_len == 0
        if cache.page_size is not None:
            assert manager.page_size == cache.page_size
    for opt in _options("scheduler"):
        assert make_schedule_policy(compose_config([f"scheduler={opt}"]).scheduler.policy) is not None
    for opt in _options("sampler"):
        assert isinstance(SAMPLERS.get(compose_config([f"sampler={opt}"]).sampler.name)(), Sampler)
    for opt in _options("grammar"):  # building one needs a tokenizer: the engine tests do that
        assert callable(GRAMMAR_BACKENDS.get(compose_config([f"grammar={opt}"]).grammar.backend))
    runnable = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
    for opt in _options("attention"):
        attention = compose_config([f"attention={opt}"]).attention
        if attention.backend == "triton" and not runnable:
            with pytest.raises(ValueError, match="TRITON_INTERPRET"):
                make_attention_backend(attention.backend, **attention.backend_kwargs())
        else:
            assert make_attention_backend(attention.backend, **attention.backend_kwargs()) is not None


def test_unknown_sampler_name_is_a_value_error_naming_the_field():
    from sgl.engine.engine import Engine

    assert compose_config(["sampler.name=nope"]).sampler.name == "nope"  # composing is fine; building is not
    with pytest.raises(ValueError, match=r"sampler\.name.*'nope'"):
        Engine(**{"sampler.name": "nope"})


def test_experiments_compose(hydra_compose):
    expected = {"generate": {"prompts_file": "experiments/prompts.txt", "max_new_tokens": 48},
                "frontend_tour": {"max_tokens_cap": 64, "chat_template": None}}
    assert set(_options("experiment")) == set(expected)
    for exp, values in expected.items():
        cfg = hydra_compose([f"+experiment={exp}"])
        assert cfg.experiment["name"] == exp
        assert {k: cfg.experiment[k] for k in values} == values
        assert dataclasses.replace(cfg, experiment=None) == EngineConfig()


def test_server_config_is_the_one_server_dataclass():
    cfg = compose_config(["server.port=31000", "server.api_key=k", "server.served_model_name=m"])
    assert cfg.server == ServerConfig(port=31000, api_key="k", served_model_name="m")
    assert ServerConfig.from_config(cfg.server) is cfg.server
    assert ServerConfig.from_config(None) == ServerConfig()
    assert ServerConfig.from_config({"port": "31001", "log_requests": False}) == ServerConfig(port=31001,
                                                                                              log_requests=False)
    assert cfg.server.public_dict()["api_key"] == "***" and ServerConfig().public_dict()["api_key"] is None
    with pytest.raises(ValueError, match="unknown server option"):
        ServerConfig.from_config({"prot": 1})
    with pytest.raises(ValueError, match="invalid server config"):
        ServerConfig.from_config({"port": "abc"})


def test_create_app_fills_in_the_model_name_without_changing_the_callers_config():
    from sgl.server.app import create_app

    class FakeEngine:
        model_path = "/models/m"

    config = ServerConfig(log_requests=False)
    app = create_app(FakeEngine(), config)
    assert app.state.server_config.served_model_name == "/models/m" and config.served_model_name is None
    assert create_app(FakeEngine(), {"served_model_name": "x"}).state.server_config.served_model_name == "x"


def test_overrides_and_errors():
    cfg = compose_config(kwargs_to_overrides({"cache": "none", "max_total_tokens": 1234, "scheduler.policy": "fcfs"}))
    assert (cfg.cache.name, cfg.scheduler.max_total_tokens, cfg.scheduler.policy) == ("none", 1234, "fcfs")
    with pytest.raises(ValueError, match="unknown engine option"):
        kwargs_to_overrides({"no_such_field": 1})
    with pytest.raises(ValueError, match="unknown engine option"):
        kwargs_to_overrides({"chat_template": "chatml"})  # removed: the tokenizer's template is the model's
    with pytest.raises(ValueError):
        compose_config(["cache=does_not_exist"])
    with pytest.raises(ValueError):
        compose_config(["++scheduler.max_running_requests=abc"])
    with pytest.raises(ValueError):
        compose_config(["scheduler.no_such_field=1"])
    with pytest.raises(ValueError, match="max_total_tokens must be > 0"):
        compose_config(["scheduler.max_total_tokens=-5"])
    with pytest.raises(ValueError, match="mem_fraction_static"):
        compose_config(["scheduler.mem_fraction_static=1.5"])
    with pytest.raises(ValueError, match=r"model\.path must be set for model=hf_dir"):
        compose_config(["model=hf_dir"])
