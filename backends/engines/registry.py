"""Every engine a sidecar can front, by name: its settings class and its engine class.

This is the one place that knows the engines. To add one, write a module
under ``backends/engines/`` with a pydantic settings class and a class that
implements ``backends.engine.Engine`` (built from those settings), and add
an ``EngineSpec`` line to ``ENGINES``. ``--engine NAME`` then selects it and
``--engine-config '{...}'`` (JSON) sets its settings, validated by its class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from backends.engine import Engine
from backends.engines.sim import SimConfig, SimEngine
from backends.engines.vllm import VllmConfig, VllmEngine


@dataclass(frozen=True)
class EngineSpec:
    """How to build one kind of engine.

    ``settings`` validates the engine's settings; ``create`` builds the
    engine from a validated instance. The other two serve the flags that
    predate ``--engine-config``: ``shortcuts`` maps a sidecar setting to an
    engine setting (``--vllm-url`` is vllm's ``url``; unset ones are left
    out), ``json_setting`` names a sidecar setting holding the engine's
    settings as a JSON object (``--sim-config``). ``--engine-config`` wins
    over both.
    """

    settings: type[BaseModel]
    create: Callable[[Any], Engine]
    shortcuts: Mapping[str, str] = field(default_factory=dict)
    json_setting: str | None = None


ENGINES: Mapping[str, EngineSpec] = {
    "sim": EngineSpec(SimConfig, SimEngine, json_setting="sim_config"),
    "vllm": EngineSpec(
        VllmConfig,
        VllmEngine,
        shortcuts={"vllm_url": "url", "model": "served_model", "vllm_capacity": "capacity"},
    ),
}


def engine_names() -> list[str]:
    """The names ``--engine`` accepts."""
    return list(ENGINES)


def _json_object(text: str, flag: str) -> dict[str, object]:
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError as error:
        raise ValueError(f"--{flag.replace('_', '-')} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--{flag.replace('_', '-')} must be a JSON object")
    return value


def engine_settings(name: str, sidecar: object, engine_config: str = "{}") -> dict[str, object]:
    """The raw settings of engine ``name``: its shortcut flags read from the
    ``sidecar`` settings object, then ``engine_config`` (a JSON object) over them."""
    spec = ENGINES.get(name)
    raw: dict[str, object] = {}
    if spec is not None:
        if spec.json_setting is not None:
            raw.update(_json_object(str(getattr(sidecar, spec.json_setting)), spec.json_setting))
        for flag, key in spec.shortcuts.items():
            value = getattr(sidecar, flag, None)
            if value is not None:
                raw[key] = value
    raw.update(_json_object(engine_config, "engine_config"))
    return raw


def build_engine(name: str, raw: Mapping[str, object]) -> Engine:
    """Validate ``raw`` with the engine's settings class and build the engine;
    ValueError (naming every problem) if the name or a setting is invalid."""
    spec = ENGINES.get(name)
    if spec is None:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
    try:
        settings = spec.settings.model_validate(dict(raw))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(f"invalid {name} engine settings: {problems}") from None
    return spec.create(settings)
