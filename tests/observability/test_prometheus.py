"""A real Prometheus scrapes the running stack under load; every dashboard
panel query and every alert expression must return data, and every metric
they name must be one we export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.observability.stack import KEYS, SECRET_PROMPT, ObservedStack, drive_load, start_stack

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "grafana" / "llmgw-overview.json"
ALERTS = ROOT / "dashboards" / "prometheus" / "alerts.yml"
VLLM_ALERTS = ROOT / "dashboards" / "prometheus" / "vllm-alerts.yml"
# The deployed stacks' job names (deploy/compose/prometheus.yml, deploy/k8s/base/prometheus.yaml).
JOBS = {"gateway": "llmgw-gateway", "shim": "llmgw-shim"}
_ABSENT = re.compile(r"^absent\((?P<inner>.*)\)$")
PROMETHEUS = shutil.which("prometheus")
# Threshold comparisons are stripped: what must have data is what the alert measures.
_THRESHOLD = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.e+-]+\s*$")
_METRIC = re.compile(r"\b(llmgw_[a-z_]+?)(?:_bucket|_count|_sum)?\b(?=\s*[\[{(]|\s*\)|$)")


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def alert_queries() -> list[tuple[str, str]]:
    """What each alert measures: its expression without the threshold; for absent(X),
    X (absent() is empty while things are well, X must not be)."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    queries = []
    for g in groups:
        for r in g["rules"]:
            expr = _THRESHOLD.sub("", r["expr"])
            absent = _ABSENT.match(expr)
            queries.append((r["alert"], absent.group("inner") if absent else expr))
    return queries


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedStack]:
    s = start_stack(tmp_path_factory.mktemp("stack"), shim_workers=2)
    try:
        yield s
    finally:
        s.stop()


def jobs(stack: ObservedStack) -> dict[str, list[str]]:
    """Targets by job, named as the deployed stacks name them (every sidecar: llmgw-sidecar)."""
    out: dict[str, list[str]] = {}
    for name, port in stack.metrics_ports.items():
        out.setdefault(JOBS.get(name, "llmgw-sidecar"), []).append(f"127.0.0.1:{port}")
    return out


@pytest.fixture(scope="module")
def prometheus(stack: ObservedStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if PROMETHEUS is None:
        pytest.fail("prometheus is not installed (apt-get install prometheus)")
    folder = tmp_path_factory.mktemp("prometheus")
    shutil.copy(ALERTS, folder / "alerts.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]}
            for job, targets in jobs(stack).items()
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        # Load long enough for rate() windows to hold several scrapes.
        outcomes = drive_load(stack, seconds=12)
        assert outcomes.get("ok", 0) > 20 and outcomes.get("429", 0) > 0, outcomes
        wait_for_scrapes_and_rules_after(url, time.time())
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def wait_for_scrapes_and_rules_after(url: str, moment: float, timeout: float = 60) -> None:
    """Until every target was scraped, and every rule group evaluated, after ``moment``
    (Unix time): then the queries see the whole load (a busy machine delays both)."""
    deadline = time.monotonic() + timeout
    while True:
        targets = httpx.get(url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        groups = httpx.get(url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        stamps = [t["lastScrape"] for t in targets] + [g["lastEvaluation"] for g in groups]
        if targets and groups and all(_unix(stamp) > moment for stamp in stamps):
            return
        assert time.monotonic() < deadline, f"no scrape or evaluation since the load: {stamps}"
        time.sleep(0.2)


def _unix(stamp: str) -> float:
    """An RFC 3339 time from Prometheus's API (nanoseconds, ``Z``) as Unix time."""
    day, _, rest = stamp.partition("T")
    clock = re.match(r"(\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", rest)
    assert clock is not None, stamp
    zone = "+00:00" if clock[3] == "Z" else clock[3]
    whole = datetime.fromisoformat(f"{day}T{clock[1]}{zone}").timestamp()
    return whole + float(clock[2] or 0)


def query(url: str, expr: str) -> list[object]:
    expr = expr.replace("$__rate_interval", "30s")
    answer = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]  # type: ignore[no-any-return]


def test_every_target_is_scraped(prometheus: str) -> None:
    targets = httpx.get(prometheus + "/api/v1/targets").json()["data"]["activeTargets"]
    assert sorted((t["labels"]["job"], t["health"]) for t in targets) == [
        ("llmgw-gateway", "up"), ("llmgw-shim", "up"),
        ("llmgw-sidecar", "up"), ("llmgw-sidecar", "up"),
    ]  # fmt: skip


@pytest.mark.parametrize(("title", "expr"), panel_queries())
def test_dashboard_panel_has_data(prometheus: str, title: str, expr: str) -> None:
    assert query(prometheus, expr), f"panel {title!r}: no data for {expr}"


@pytest.mark.parametrize(("alert", "expr"), alert_queries())
def test_alert_expression_has_data(prometheus: str, alert: str, expr: str) -> None:
    assert query(prometheus, expr), f"alert {alert}: no data for {expr}"


def test_dashboards_and_alerts_name_only_exported_metrics(
    stack: ObservedStack, prometheus: str
) -> None:
    exported = set()
    for port in stack.metrics_ports.values():
        for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
            if line.startswith("# TYPE "):
                name, kind = line.split()[2:4]
                exported.add(name)
                if kind == "histogram":
                    exported.update({name + "_bucket", name + "_count", name + "_sum"})
                if kind == "counter":
                    exported.add(name + "_total" if not name.endswith("_total") else name)
    named = {
        m
        for _, expr in panel_queries() + alert_queries()
        for m in re.findall(r"\b(?:llmgw|gen_ai)_[a-z_]+", expr)
    }
    assert named - exported == set()


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is not installed (apt-get install prometheus)"
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS), str(VLLM_ALERTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_logs_hold_neither_keys_nor_prompts(stack: ObservedStack, prometheus: str) -> None:
    logs = stack.logs()
    assert logs, "the processes wrote no logs at all"
    for key in KEYS.values():
        assert key not in logs and key.split("_")[2] not in logs
    assert SECRET_PROMPT not in logs and "hunter2" not in logs
    # ...while the access log does carry what an operator needs, as JSON.
    access = [
        json.loads(line)
        for line in logs.splitlines()
        if line.startswith("{") and '"request"' in line
    ]
    access = [a for a in access if a.get("logger") == "llmgw.access"]
    assert access, "no access log lines"
    one = access[-1]
    assert {"request_id", "trace_id", "tenant", "model", "backend", "outcome", "ttft_ms",
            "prompt_tokens", "completion_tokens", "duration_ms"} <= set(one)  # fmt: skip
    assert {a["tenant"] for a in access} >= {"acme"}
