"""Every config group composes and instantiates; overrides and bad values give clear errors."""

from __future__ import annotations

import pytest

from sgl.core.config import CONFIG_DIR, GROUPS, compose_config, kwargs_to_overrides


def _options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes(group):
    for option in _options(group):
        overrides = [f"{group}={option}"] + (["model.path=/x"] if (group, option) == ("model", "hf_dir") else [])
        cfg = compose_config(overrides)
        assert getattr(cfg, group) is not None


def test_every_component_instantiates():
    import torch

    from sgl.engine.cache import make_cache_manager
    from sgl.executor.memory_pool import TokenToKVPool
    from sgl.engine.schedule_policy import make_schedule_policy
    from sgl.layers.attention import make_attention_backend

    pool = TokenToKVPool(8, 1, 1, 4, torch.float32)
    for opt in _options("cache"):
        assert make_cache_manager(compose_config([f"cache={opt}"]).cache.name, pool).match_prefix([1]).prefix_len == 0
    for opt in _options("scheduler"):
        assert make_schedule_policy(compose_config([f"scheduler={opt}"]).scheduler.policy) is not None
    import os

    runnable = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
    for opt in _options("attention"):
        name = compose_config([f"attention={opt}"]).attention.backend
        if name == "triton" and not runnable:
            with pytest.raises(ValueError, match="TRITON_INTERPRET"):
                make_attention_backend(name)
        else:
            assert make_attention_backend(name) is not None


def test_experiments_compose():
    for exp in _options("experiment"):
        cfg = compose_config([f"+experiment={exp}"])
        assert cfg.experiment["name"] == exp


def test_overrides_and_errors():
    cfg = compose_config(kwargs_to_overrides({"cache": "none", "max_total_tokens": 1234, "scheduler.policy": "fcfs"}))
    assert (cfg.cache.name, cfg.scheduler.max_total_tokens, cfg.scheduler.policy) == ("none", 1234, "fcfs")
    with pytest.raises(ValueError, match="unknown engine option"):
        kwargs_to_overrides({"no_such_field": 1})
    with pytest.raises(ValueError):
        compose_config(["cache=does_not_exist"])
    with pytest.raises(ValueError):
        compose_config(["++scheduler.max_running_requests=abc"])
    with pytest.raises(ValueError, match="max_total_tokens must be > 0"):
        compose_config(["scheduler.max_total_tokens=-5"])
    with pytest.raises(ValueError, match="mem_fraction_static"):
        compose_config(["scheduler.mem_fraction_static=1.5"])
