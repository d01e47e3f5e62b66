"""One settings object per process: flags over LLMGW_* variables over the class defaults."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from backends.settings import SidecarSettings
from common.settings import load_settings, settings_parser
from gateway.settings import GatewaySettings
from rest_shim.settings import ShimSettings

ROOT = Path(__file__).resolve().parents[2]


def test_a_flag_overrides_the_environment_which_overrides_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(ShimSettings, []).port == 8080  # the class default
    monkeypatch.setenv("LLMGW_SHIM_PORT", "9000")
    assert load_settings(ShimSettings, []).port == 9000
    assert load_settings(ShimSettings, ["--port", "9001"]).port == 9001


def test_boolean_settings_are_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(GatewaySettings, []).redis_cluster is False
    assert load_settings(GatewaySettings, ["--redis-cluster"]).redis_cluster is True
    monkeypatch.setenv("LLMGW_GATEWAY_REDIS_CLUSTER", "true")
    assert load_settings(GatewaySettings, []).redis_cluster is True


def test_every_field_has_a_flag_named_after_it() -> None:
    for cls in (GatewaySettings, ShimSettings, SidecarSettings):
        flags = {a.dest for a in settings_parser(cls, "x")._actions if a.option_strings}
        assert set(cls.model_fields) <= flags, cls.__name__


def test_invalid_settings_exit_2_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        load_settings(GatewaySettings, ["--workers", "0"], "llmgw-gateway")
    assert exited.value.code == 2
    assert "--workers: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_a_cross_field_rule_is_reported_without_a_field_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        load_settings(SidecarSettings, ["--engine", "vllm"], "llmgw-sidecar")
    assert "--engine vllm needs --vllm-url" in capsys.readouterr().err


def test_an_unknown_environment_variable_of_the_prefix_is_ignored_but_an_unknown_flag_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMGW_SHIM_NO_SUCH_THING", "1")
    assert load_settings(ShimSettings, []).port == 8080
    with pytest.raises(SystemExit):
        load_settings(ShimSettings, ["--no-such-thing", "1"])


# Only these modules may read the environment: the settings classes do it through
# pydantic-settings; tracing follows OpenTelemetry's own OTEL_* variables; the metrics
# module sets prometheus-client's multiprocess folder for its workers.
ENV_ALLOWED = {"common/observability/tracing.py", "common/observability/metrics.py"}


@pytest.mark.parametrize("package", ["gateway", "rest_shim", "backends", "common"])
def test_no_service_module_reads_or_writes_os_environ(package: str) -> None:
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        relative = str(path.relative_to(ROOT))
        if relative in ENV_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("environ", "getenv", "putenv")
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            ):
                offenders.append(f"{relative}:{node.lineno}")
    assert offenders == []


def test_every_process_names_its_drain_setting_alike() -> None:
    # Deployments set LLMGW_{GATEWAY,SHIM,SIDECAR}_SHUTDOWN_GRACE_S; an unknown variable of
    # a prefix is ignored, so a differently named field would silently keep its default.
    for cls in (GatewaySettings, ShimSettings, SidecarSettings):
        assert "shutdown_grace_s" in cls.model_fields, cls.__name__
