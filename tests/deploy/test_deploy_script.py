"""`make deploy` / `make undeploy` (scripts/deploy.py) in --dry-run: the commands it would
run, checked against the compose file and the rendered overlays. No Docker daemon or
cluster runs here, so the real runs cannot be tested; what they run can."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_deploy_files import PROFILES, load_profile
from tests.deploy.test_k8s_manifests import OVERLAYS, rendered

ROOT = Path(__file__).resolve().parents[2]


def make(*args: str) -> subprocess.CompletedProcess[str]:
    """`make <args> DEPLOY_ARGS=--dry-run` in the repository, with this interpreter and
    without the install prerequisite (STAMP=): a test must never rebuild the venv."""
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            *args,
            "DEPLOY_ARGS=--dry-run",
            "STAMP=",
            f"BIN={Path(sys.executable).parent}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GRAFANA_ADMIN_PASSWORD": "from-the-environment"},
    )


def commands(output: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in output.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_deploy_starts_the_profile_and_waits_for_health(profile: str) -> None:
    result = make("deploy", f"PROFILE={profile}")
    assert result.returncode == 0, result.stderr
    [argv] = commands(result.stdout)
    env = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    assert env["COMPOSE_PROFILES"] == profile
    assert argv[len(env) : len(env) + 4] == ["docker", "compose", "up", "-d"]
    assert "--wait" in argv and "--build" in argv
    assert "from-the-environment" not in result.stdout  # the password is never printed
    # The profile it starts has backends and a gateway routing file for them.
    assert any(s.startswith(("sim-", "sidecar-")) for s in load_profile(profile)["services"])
    assert "http://127.0.0.1:8080/v1" in result.stdout


def test_compose_undeploy_stops_every_profile() -> None:
    result = make("undeploy")
    assert result.returncode == 0, result.stderr
    [argv] = commands(result.stdout)
    assert argv[0] == f"COMPOSE_PROFILES={','.join(PROFILES)}"
    assert argv[1:] == ["docker", "compose", "down"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_deploy_applies_the_overlay_and_waits_for_every_workload(overlay: str) -> None:
    result = make("deploy", "DEPLOY=k8s", f"OVERLAY={overlay}")
    assert result.returncode == 0, result.stderr
    argvs = commands(result.stdout)
    assert argvs[0][1:] == ["apply", "-k", f"deploy/k8s/overlays/{overlay}"]
    waited = {a[5] for a in argvs[1:] if a[1:5] == ["-n", "llmgw", "rollout", "status"]}
    docs = rendered(overlay)
    expected = {
        f"{d['kind'].lower()}/{d['metadata']['name']}"
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }
    assert waited == expected
    assert "port-forward svc/llmgw-shim 8080:8080" in result.stdout


def test_k8s_deploy_with_an_image_applies_a_kustomization_that_sets_it() -> None:
    result = make("deploy", "DEPLOY=k8s", "OVERLAY=sim", "IMAGE=registry.example/llmgw:1.2.3")
    assert result.returncode == 0, result.stderr
    source = ROOT / commands(result.stdout)[0][3]
    kustomization = yaml.safe_load((source / "kustomization.yaml").read_text())
    assert kustomization["images"] == [
        {"name": "llmgw", "newName": "registry.example/llmgw", "newTag": "1.2.3"}
    ]
    built = subprocess.run(
        [str(Path(sys.executable).parent / "kubectl"), "kustomize", str(source)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    images = {
        c["image"]
        for d in yaml.safe_load_all(built)
        if d and d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert "registry.example/llmgw:1.2.3" in images and "llmgw:latest" not in images


def test_an_unknown_profile_or_overlay_is_refused() -> None:
    for args in (("PROFILE=gpux",), ("DEPLOY=k8s", "OVERLAY=huge")):
        result = make("deploy", *args)
        assert result.returncode != 0
        assert "invalid choice" in result.stderr
