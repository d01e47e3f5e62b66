"""The vLLM dashboard (dashboards/grafana/llmgw-vllm.json) and the vLLM alerts
(dashboards/prometheus/vllm-alerts.yml) name metrics that a real vLLM serves: every
``vllm:`` series they query is in the /metrics of the vLLM servers this tier runs, with
the labels they group by. (Prometheus itself needs no vLLM: the sim stack's tier checks
the gateway's panels and alerts; DCGM's names come from dcgm-exporter's defaults and are
not checked here.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml

from tests.e2e.conftest import E2EStack
from tests.e2e.probe import MODELS

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "grafana" / "llmgw-vllm.json"
ALERTS = ROOT / "dashboards" / "prometheus" / "vllm-alerts.yml"
_VLLM = re.compile(r"\bvllm:[a-z_]+")
_BY = re.compile(r"\bby \(([^)]*)\)")


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return exprs + [r["expr"] for g in groups for r in g["rules"]]


def exported(text: str) -> dict[str, set[str]]:
    """Series name -> label names, from a Prometheus text exposition."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, rest = line.partition("{")
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', rest)) if rest else set()
        out.setdefault(name.split()[0], set()).update(labels)
    return out


def test_vllm_dashboard_and_alerts_name_series_vllm_serves(e2e: E2EStack) -> None:
    # One request first, so that every histogram and counter has samples.
    model = MODELS[0]
    answer = httpx.post(
        f"{e2e.vllm_url(model)}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    series = exported(httpx.get(f"{e2e.vllm_url(model)}/metrics", timeout=30).text)
    named = {m for expr in queries() for m in _VLLM.findall(expr)}
    assert named, "the vLLM dashboard and alerts name no vLLM metric"
    missing = {m for m in named if m not in series}
    assert not missing, f"not served by vLLM: {sorted(missing)}"
    for expr in queries():
        for metric in _VLLM.findall(expr):
            for group in _BY.findall(expr):
                labels = {label.strip() for label in group.split(",")} - {"le", "instance"}
                assert labels <= series[metric], (expr, metric, series[metric])
