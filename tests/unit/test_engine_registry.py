"""The engine registry: names, settings validation, and the shortcut flags."""

from __future__ import annotations

import pytest

from backends.engines import registry
from backends.engines.sim import SimConfig, SimEngine
from backends.engines.vllm import VllmEngine
from backends.settings import SidecarSettings


def settings(*args: str) -> SidecarSettings:
    values = dict(zip(args[::2], args[1::2], strict=True))
    return SidecarSettings(**values)  # type: ignore[arg-type]


def build(s: SidecarSettings) -> object:
    return registry.build_engine(s.engine, registry.engine_settings(s.engine, s, s.engine_config))


def test_every_registered_engine_has_a_pydantic_settings_class() -> None:
    assert set(registry.engine_names()) >= {"sim", "vllm"}
    for spec in registry.ENGINES.values():
        assert hasattr(spec.settings, "model_validate") and callable(spec.create)


def test_sim_takes_its_settings_from_engine_config_or_the_older_sim_config_flag() -> None:
    engine = build(settings("sim_config", '{"ttft_ms": 5}', "engine_config", '{"itl_ms": 2}'))
    assert isinstance(engine, SimEngine)
    assert engine.config == SimConfig(ttft_ms=5, itl_ms=2)
    # --engine-config wins over the older flag.
    engine = build(settings("sim_config", '{"ttft_ms": 5}', "engine_config", '{"ttft_ms": 7}'))
    assert isinstance(engine, SimEngine) and engine.config.ttft_ms == 7


def test_vllm_shortcut_flags_fill_its_settings() -> None:
    s = settings("engine", "vllm", "vllm_url", "http://127.0.0.1:9/", "vllm_capacity", "8")
    engine = build(s)
    assert isinstance(engine, VllmEngine)
    s = settings("engine", "vllm", "engine_config", '{"url": "http://h:1", "capacity": 3}')
    # --engine-config's capacity wins over --vllm-capacity's default; no --model: left out.
    assert registry.engine_settings("vllm", s, s.engine_config) == {
        "url": "http://h:1",
        "capacity": 3,
    }


def test_unknown_engines_and_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="unknown engine 'tgi'; known: sim, vllm"):
        SidecarSettings(engine="tgi")
    with pytest.raises(ValueError, match="invalid sim engine settings: ttft_ms"):
        build(settings("engine_config", '{"ttft_ms": -1}'))
    with pytest.raises(ValueError, match="invalid sim engine settings: warp"):
        build(settings("engine_config", '{"warp": 9}'))
    with pytest.raises(ValueError, match="--engine-config must be a JSON object"):
        build(settings("engine_config", "[1]"))
    with pytest.raises(ValueError, match="--sim-config is not valid JSON"):
        build(settings("sim_config", "{nope"))
