"""docker-compose.yml, deploy/ and the Dockerfile, checked offline.

No Docker engine runs on the development or CI machines, so the deployment
files are validated here: the compose file against the Compose
Specification's JSON schema (``../shared/schemas/compose-spec.json``), and,
for each profile (sim, cpu, gpu) as compose runs it, with checks a schema
cannot make: mounted files exist, the routing and tenant files pass the
gateway's own validation, sidecars, vLLM servers and the routing file agree,
vLLM runs as ``vllm serve <model>`` at a pinned revision, Prometheus finds
exactly the ports the services serve /metrics on, every process gets the
stop time its drain needs, only the REST port is published, and the
Dockerfile's commands name modules that exist.

Every check is a function returning a list of problems; the tests at the
bottom feed each one a broken copy to prove it can fail.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from backends.settings import SidecarSettings
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.settings import GatewaySettings
from gateway.tenancy.runtime import check_tenants
from rest_shim.settings import ShimSettings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"
COMPOSE = ROOT / "docker-compose.yml"
PUBLISH = ROOT / "deploy" / "compose" / "publish.yml"
PROFILES = ("sim", "cpu", "gpu")
# What `make deploy` sets: the profile (also the routing file) and Grafana's password.
REQUIRED_ENV = {"GRAFANA_ADMIN_PASSWORD": "only-for-this-test"}
# stop_grace_period must exceed a process's drain setting by this.
STOP_MARGIN_S = 10
# Each process's drain setting: the `shutdown_grace_s` field of its settings class, as
# the environment variable its env_prefix makes of it.
SETTINGS = {"gateway": GatewaySettings, "rest_shim": ShimSettings, "backends": SidecarSettings}
DRAIN_ENV = {
    module: f"{cls.model_config.get('env_prefix', '')}SHUTDOWN_GRACE_S"
    for module, cls in SETTINGS.items()
}
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

Compose = dict[str, Any]


# --- reading -------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation, applied to every string value."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in ("-", ":-"):
            return arg if unset else str(current)
        if op in ("?", ":?"):
            if unset:
                raise ValueError(f"required variable {name} is not set: {arg}")
            return str(current)
        if op in ("+", ":+"):
            return "" if unset else arg
        return "" if current is None else current

    return _VARIABLE.sub(substitute, value)


def load_compose(path: Path = COMPOSE, env: Mapping[str, str] | None = None) -> Compose:
    """The compose file as compose sees it with only ``env`` set (every other default)."""
    raw = yaml.safe_load(path.read_text())
    compose: Compose = interpolate(raw, env or {})
    return compose


def in_profile(compose: Compose, profile: str) -> Compose:
    """The services compose starts with COMPOSE_PROFILES=profile: those without
    profiles and those of the profile; optional dependencies on the others dropped."""
    active = copy.deepcopy(compose)
    services = {
        name: svc
        for name, svc in active["services"].items()
        if not svc.get("profiles") or profile in svc["profiles"]
    }
    for svc in services.values():
        depends = svc.get("depends_on")
        if isinstance(depends, dict):
            svc["depends_on"] = {
                name: dep
                for name, dep in depends.items()
                if name in services or dep.get("required", True)
            }
    active["services"] = services
    # Remembered (as an extension field, which the schema allows) for the scrape check.
    active["x-other-profiles"] = sorted(set(compose["services"]) - set(services))
    return active


def load_profile(profile: str, env: Mapping[str, str] | None = None) -> Compose:
    """The compose file of one profile, as `make deploy PROFILE=profile` runs it."""
    full = load_compose(env={**REQUIRED_ENV, "COMPOSE_PROFILES": profile, **(env or {})})
    return in_profile(full, profile)


def command(service: Mapping[str, Any]) -> list[str]:
    """A service's command as a list (exec form or a shell-split string)."""
    value = service.get("command") or []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def flag(argv: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE``; None when absent."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def python_module(argv: list[str]) -> str | None:
    """X in ``python -m X ...``; None for any other command."""
    if len(argv) >= 3 and PurePosixPath(argv[0]).name.startswith("python") and argv[1] == "-m":
        return argv[2]
    return None


def module_exists(root: Path, module: str) -> bool:
    """Whether ``python -m module`` runs code from this repository."""
    base = root.joinpath(*module.split("."))
    return (base / "__main__.py").is_file() or base.with_suffix(".py").is_file()


def services_running(compose: Compose, module: str) -> dict[str, list[str]]:
    """Services whose command is ``python -m <module>``, with their argv."""
    return {
        name: command(svc)
        for name, svc in compose.get("services", {}).items()
        if python_module(command(svc)) == module
    }


def is_vllm(service: Mapping[str, Any]) -> bool:
    """Whether the service runs a vLLM OpenAI server image (GPU or CPU)."""
    image = str(service.get("image", ""))
    return "vllm/vllm-openai" in image or "vllm-cpu" in image


def vllm_argv(service: Mapping[str, Any]) -> list[str]:
    """entrypoint + command of a vLLM service."""
    entry = service.get("entrypoint") or []
    return [*(shlex.split(entry) if isinstance(entry, str) else entry), *command(service)]


def stop_grace_s(service: Mapping[str, Any]) -> float:
    """stop_grace_period in seconds (compose's default is 10 s)."""
    value = str(service.get("stop_grace_period", "10s"))
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def bind_mounts(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(host source, container target) of a service's bind mounts."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) >= 2 and parts[0].startswith((".", "/", "~")):
                mounts.append((parts[0], parts[1]))
        elif volume.get("type") == "bind":
            mounts.append((volume["source"], volume["target"]))
    return mounts


def host_path(service: Mapping[str, Any], container: str, root: Path) -> Path | None:
    """The file on the host that a container path comes from (longest mount wins)."""
    target = PurePosixPath(container)
    best: tuple[int, Path] | None = None
    for source, mount in bind_mounts(service):
        mount_path = PurePosixPath(mount)
        if target == mount_path or mount_path in target.parents:
            rest = target.relative_to(mount_path)
            host = (root / Path(source).expanduser()).joinpath(*rest.parts)
            if best is None or len(mount_path.parts) > best[0]:
                best = (len(mount_path.parts), host)
    return best[1] if best else None


def port_of(address: str) -> int:
    """The port of ``host:port``."""
    return int(address.rsplit(":", 1)[1])


# --- checks: each returns a list of problems --------------------------------------------


def schema_problems(compose: Compose, schema: Mapping[str, Any]) -> list[str]:
    """Every violation of the Compose Specification's JSON schema."""
    import jsonschema

    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(top level)'}: {error.message}"
        for error in sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    ]


def mount_problems(compose: Compose, root: Path) -> list[str]:
    """Bind-mounted files exist in the repo; named volumes are declared."""
    problems = []
    declared = set(compose.get("volumes") or {})
    for name, svc in compose.get("services", {}).items():
        for source, target in bind_mounts(svc):
            if not (root / Path(source).expanduser()).exists():
                problems.append(f"{name}: mounts {source} at {target}, which does not exist")
        for volume in svc.get("volumes", []):
            spec = volume if isinstance(volume, str) else ""
            named = ":" in spec and not spec.startswith((".", "/", "~"))
            if named and spec.split(":")[0] not in declared:
                problems.append(f"{name}: named volume {spec.split(':')[0]} is not declared")
        build = svc.get("build")
        if isinstance(build, dict):
            dockerfile = root / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                problems.append(f"{name}: builds from {dockerfile}, which does not exist")
    return problems


def gateway_files(compose: Compose, root: Path) -> tuple[str, list[str], Path, Path | None]:
    """The gateway service, its argv, its routing file and its tenant file on the host."""
    gateways = services_running(compose, "gateway")
    assert len(gateways) == 1, f"expected one gateway service, found {sorted(gateways)}"
    name, argv = next(iter(gateways.items()))
    svc = compose["services"][name]
    config_arg = flag(argv, "--config")
    assert config_arg, f"{name}: no --config"
    config = host_path(svc, config_arg, root)
    assert config is not None, f"{name}: --config {config_arg} is not a mounted file"
    tenants_arg = flag(argv, "--tenants")
    tenants = host_path(svc, tenants_arg, root) if tenants_arg else None
    assert tenants_arg is None or tenants is not None, f"{name}: --tenants is not mounted"
    return name, argv, config, tenants


def routing_problems(compose: Compose, root: Path) -> list[str]:
    """The mounted routing and tenant files pass the gateway's own validation, and
    every endpoint is a sidecar service listening on that port."""
    name, argv, config_path, tenants_path = gateway_files(compose, root)
    try:
        config = load_config(config_path)
        listen = flag(argv, "--listen") or "127.0.0.1:50051"
        if tenants_path is not None:
            check_tenants(
                GatewaySettings(listen=listen, config=config_path, tenants=tenants_path), config
            )
    except ConfigError as error:
        return [f"{name}: {error}"]
    problems = []
    sidecars = services_running(compose, "backends")
    for model in config.models:
        for endpoint in model.endpoints:
            host, port = endpoint.rsplit(":", 1)
            if host not in sidecars:
                problems.append(f"model {model.name}: endpoint {endpoint} is no sidecar service")
                continue
            listen = flag(sidecars[host], "--listen") or ""
            if not listen or port_of(listen) != int(port):
                problems.append(f"model {model.name}: {host} listens on {listen!r}, not {port}")
    return problems + engine_problems(compose, config)


def engine_problems(compose: Compose, config: GatewayConfig) -> list[str]:
    """Each vLLM sidecar fronts a vLLM service that serves the model the gateway routes
    to that sidecar, at the URL, name, capacity and context the others expect."""
    problems = []
    services = compose["services"]
    by_endpoint = {e.rsplit(":", 1)[0]: m for m in config.models for e in m.endpoints}
    for name, argv in services_running(compose, "backends").items():
        if flag(argv, "--engine") != "vllm":
            continue
        url = flag(argv, "--vllm-url") or ""
        match = re.fullmatch(r"http://([A-Za-z0-9._-]+):(\d+)/?", url)
        if not match or match.group(1) not in services:
            problems.append(f"{name}: --vllm-url {url!r} is not a compose service")
            continue
        vllm_name, vllm_port = match.group(1), int(match.group(2))
        vllm = services[vllm_name]
        vargv = vllm_argv(vllm)
        if not is_vllm(vllm):
            problems.append(f"{name}: {vllm_name} does not run the vLLM image")
        if vargv[:2] != ["vllm", "serve"] or len(vargv) < 3 or vargv[2].startswith("-"):
            problems.append(f"{vllm_name}: not started as `vllm serve <model>`")
        if "--model" in vargv:
            problems.append(f"{vllm_name}: --model (deprecated by `vllm serve`)")
        if not flag(vargv, "--tool-call-parser") or "--enable-auto-tool-choice" not in vargv:
            # vLLM 0.32 answers 400 to any tool_choice but "none" without a parser.
            problems.append(f"{vllm_name}: no --tool-call-parser with --enable-auto-tool-choice")
        for pin in ("--revision", "--tokenizer-revision"):
            if not re.fullmatch(r"[0-9a-f]{40}", flag(vargv, pin) or ""):
                problems.append(f"{vllm_name}: {pin} is not a commit hash")
        if int(flag(vargv, "--port") or 8000) != vllm_port:
            problems.append(f"{name}: {vllm_name} serves on --port {flag(vargv, '--port')}")
        served = flag(vargv, "--served-model-name")
        model = by_endpoint.get(name)
        if flag(argv, "--model") != served:
            problems.append(f"{name}: --model {flag(argv, '--model')} but vLLM serves {served}")
        if model is None:
            problems.append(f"{name}: no model of the routing file uses this sidecar")
        elif (model.engine_model or model.name) != served:
            problems.append(f"{name}: routed as {model.name} but vLLM serves {served}")
        capacity, seqs = flag(argv, "--vllm-capacity"), flag(vargv, "--max-num-seqs")
        if capacity and seqs and capacity != seqs:
            problems.append(f"{name}: --vllm-capacity {capacity} but --max-num-seqs {seqs}")
        context = flag(vargv, "--max-model-len")
        if model is not None and context and model.max_output_tokens >= int(context):
            problems.append(f"{model.name}: max_output_tokens is not below --max-model-len")
        devices = vllm.get("deploy", {}).get("resources", {}).get("reservations", {})
        gpu = any("gpu" in d.get("capabilities", []) for d in devices.get("devices", []))
        if "vllm-cpu" not in str(vllm.get("image")) and not gpu:
            problems.append(f"{vllm_name}: reserves no GPU device")
        if "vllm-cpu" in str(vllm.get("image")) and gpu:
            problems.append(f"{vllm_name}: vLLM for CPU reserves a GPU")
        if "test" not in vllm.get("healthcheck", {}) or "/health" not in str(
            vllm["healthcheck"]["test"]
        ):
            problems.append(f"{vllm_name}: no healthcheck on /health")
    return problems


def metrics_port(service: Mapping[str, Any]) -> int | None:
    """The port a service serves /metrics on, reachable from other containers."""
    argv = command(service)
    listen = flag(argv, "--metrics-listen")
    if listen:
        host = listen.rsplit(":", 1)[0].strip("[]")
        return port_of(listen) if host in ("0.0.0.0", "::", "") else None
    if is_vllm(service):
        return int(flag(argv, "--port") or 8000)  # vLLM: /metrics on its API port
    if "dcgm-exporter" in str(service.get("image", "")):
        return 9400
    return None


def prometheus_config(compose: Compose, root: Path) -> tuple[Mapping[str, Any], Path, str]:
    """Prometheus's config as mounted, its host path and its path in the container."""
    svc = compose["services"]["prometheus"]
    container = "/etc/prometheus/prometheus.yml"
    for arg in command(svc):
        if arg.startswith("--config.file="):
            container = arg.split("=", 1)[1]
    path = host_path(svc, container, root)
    assert path is not None, f"prometheus: {container} is not mounted"
    return yaml.safe_load(path.read_text()), path, container


def scrape_problems(compose: Compose, root: Path) -> list[str]:
    """Prometheus scrapes only ports that services serve /metrics on (bound to all
    interfaces, so another container reaches them), and every one of them; its rule
    files are mounted."""
    services = compose["services"]
    config, _, container = prometheus_config(compose, root)
    problems = []
    scraped: set[tuple[str, int]] = set()
    elsewhere = set(compose.get("x-other-profiles", []))
    for job in config.get("scrape_configs", []):
        targets = [
            (str(t).rsplit(":", 1)[0], int(str(t).rsplit(":", 1)[1]))
            for static in job.get("static_configs", [])
            for t in static.get("targets", [])
        ] + [
            (host, int(sd["port"]))
            for sd in job.get("dns_sd_configs", [])
            for host in sd.get("names", [])
        ]
        for host, port in targets:
            target = f"{host}:{port}"
            scraped.add((host, port))
            if host not in services:
                # A service of another profile resolves to nothing: fine, if it exists.
                if host not in elsewhere:
                    problems.append(f"job {job['job_name']}: {target} is not a compose service")
            elif metrics_port(services[host]) != int(port):
                problems.append(
                    f"job {job['job_name']}: {host} serves no /metrics on {port} "
                    f"reachable from Prometheus (--metrics-listen 0.0.0.0:{port})"
                )
    for name, svc in services.items():
        listen, port = flag(command(svc), "--metrics-listen"), metrics_port(svc)
        if listen and port is None:
            problems.append(
                f"{name}: --metrics-listen {listen} is unreachable from other containers"
            )
        elif listen and (name, port) not in scraped:
            problems.append(f"{name}: serves /metrics (--metrics-listen) but is not scraped")
    prom = services["prometheus"]
    for rule_file in config.get("rule_files", []):
        in_container = PurePosixPath(container).parent / rule_file
        host = host_path(prom, str(in_container), root)
        if host is None or not host.is_file():
            problems.append(f"prometheus: rule file {in_container} is not a mounted file")
    return problems


def grafana_problems(compose: Compose, root: Path) -> list[str]:
    """Grafana's provisioned datasource is a compose service and its dashboard folder
    is mounted with the dashboards in it."""
    svc = compose["services"]["grafana"]
    problems = []
    sources = host_path(svc, "/etc/grafana/provisioning/datasources", root)
    boards = host_path(svc, "/etc/grafana/provisioning/dashboards", root)
    if sources is None or boards is None:
        return ["grafana: provisioning folders are not mounted"]
    for file in sorted(sources.glob("*.yml")):
        for source in yaml.safe_load(file.read_text()).get("datasources", []):
            host = re.sub(r"^\w+://", "", source.get("url", "")).split(":")[0].split("/")[0]
            if host not in compose["services"]:
                problems.append(f"grafana datasource {source['name']}: {host} is no service")
    for file in sorted(boards.glob("*.yml")):
        for provider in yaml.safe_load(file.read_text()).get("providers", []):
            folder = host_path(svc, provider["options"]["path"], root)
            if folder is None or not any(folder.glob("*.json")):
                problems.append(f"grafana provider {provider['name']}: no dashboards mounted")
    return problems


def drain_problems(compose: Compose) -> list[str]:
    """Restarts keep streams: every llmgw process has its drain setting and a
    stop_grace_period that covers it; vLLM has --shutdown-timeout and the stop time for
    it; `down` stops dependents first (shim before gateway before sidecars before vLLM),
    so each drains while what it calls is still up."""
    problems = []
    services = compose["services"]
    for name, svc in services.items():
        argv = command(svc)
        module = python_module(argv)
        grace = stop_grace_s(svc)
        if module in DRAIN_ENV:
            drain = (svc.get("environment") or {}).get(DRAIN_ENV[module])
            if drain is None:
                problems.append(f"{name}: no {DRAIN_ENV[module]}")
            elif grace < float(drain) + STOP_MARGIN_S:
                problems.append(
                    f"{name}: stop_grace_period {grace:g} s does not cover its drain "
                    f"({drain} s + {STOP_MARGIN_S} s)"
                )
        elif is_vllm(svc):
            timeout = flag(vllm_argv(svc), "--shutdown-timeout")
            if timeout is None or int(timeout) <= 0:
                problems.append(f"{name}: vLLM without --shutdown-timeout (aborts requests)")
            elif grace < int(timeout) + STOP_MARGIN_S:
                problems.append(f"{name}: stop_grace_period {grace:g} s < --shutdown-timeout")

    def depends(a: str, b: str) -> bool:
        return b in (services[a].get("depends_on") or {})

    shims, gateways = services_running(compose, "rest_shim"), services_running(compose, "gateway")
    for shim in shims:
        for gateway in gateways:
            if not depends(shim, gateway):
                problems.append(f"{shim} does not depend on {gateway} (stops after it)")
    for sidecar, argv in services_running(compose, "backends").items():
        for gateway in gateways:
            if not depends(gateway, sidecar):
                problems.append(f"{gateway} does not depend on {sidecar} (stops after it)")
        match = re.fullmatch(r"http://([A-Za-z0-9._-]+):\d+/?", flag(argv, "--vllm-url") or "")
        if match and not depends(sidecar, match.group(1)):
            problems.append(f"{sidecar} does not depend on {match.group(1)} (stops after it)")
    return problems


def exposure_problems(compose: Compose, publish: Compose) -> list[str]:
    """Only the REST shim publishes a port by default; the operator's publish file binds
    to loopback only; Grafana's admin password comes from the environment."""
    problems = []
    for name, svc in compose["services"].items():
        argv = command(svc)
        if svc.get("ports") and python_module(argv) != "rest_shim":
            problems.append(f"{name}: publishes {svc['ports']} (only the REST port may be)")
    for name, svc in publish.get("services", {}).items():
        for port in svc.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"publish.yml {name}: {port} is not bound to 127.0.0.1")
    grafana = compose["services"].get("grafana", {})
    password = (grafana.get("environment") or {}).get("GF_SECURITY_ADMIN_PASSWORD")
    if password != REQUIRED_ENV["GRAFANA_ADMIN_PASSWORD"]:
        problems.append(
            "grafana: GF_SECURITY_ADMIN_PASSWORD does not come from GRAFANA_ADMIN_PASSWORD"
        )
    return problems


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        if full:
            keyword, _, rest = full.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def exec_form(arguments: str) -> list[str] | None:
    """A JSON exec-form command; None for the shell form."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return None
    return [str(v) for v in value] if isinstance(value, list) else None


def dockerfile_problems(text: str, root: Path, compose: Compose) -> list[str]:
    """The image: python:3.11 slim pinned to a patch release, dependencies installed from
    the hash-pinned lock, a non-root user, every package of the project copied in (and
    let through .dockerignore), and commands (its own and compose's) that run modules of
    this repository."""
    instructions = dockerfile_instructions(text)
    problems = []
    args = dict(a.split("=", 1) for kw, a in instructions if kw == "ARG" and "=" in a)
    stages = [
        re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), a.split()[0])
        for kw, a in instructions
        if kw == "FROM"
    ]
    if not stages or not re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", stages[-1]):
        problems.append(
            f"final stage is FROM {stages[-1] if stages else None}, not python:3.11.<patch>-slim"
        )
    installs = [a for kw, a in instructions if kw == "RUN" and "pip install" in a]
    if not any("--require-hashes" in a and "requirements.lock" in a for a in installs):
        problems.append("the image does not install its dependencies from requirements.lock")
    if any("--no-deps" not in a for a in installs):
        problems.append("a pip install in the image may resolve dependencies beyond the lock")
    ignore = root / "deploy" / "Dockerfile.dockerignore"
    allowed = {
        line[1:].rstrip("/") for line in ignore.read_text().splitlines() if line.startswith("!")
    }
    users = [args for kw, args in instructions if kw == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the image runs as root (no USER, or USER root)")
    copied: set[str] = set()
    for kw, args in instructions:
        if kw not in ("COPY", "ADD"):
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        if any(p.startswith("--from") for p in args.split()):
            continue
        for source in parts[:-1]:
            copied.add(source.rstrip("/"))
            if not (root / source).exists():
                problems.append(f"COPY {source}: not in the repository")
            if source.rstrip("/") not in allowed:
                problems.append(f"COPY {source}: excluded from the build context (.dockerignore)")
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    packaged = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packaged:
        package = pattern.rstrip("*").rstrip(".")
        if package not in copied:
            problems.append(f"package {package} (pyproject) is not copied into the image")
    commands: dict[str, list[str]] = {}
    for kw, args in instructions:
        if kw in ("CMD", "ENTRYPOINT"):
            argv = exec_form(args)
            if argv is None:
                problems.append(f"Dockerfile {kw} is not in exec form")
            else:
                commands[f"Dockerfile {kw}"] = argv
    dockerfile = DOCKERFILE.relative_to(ROOT).as_posix()
    for name, svc in compose.get("services", {}).items():
        if isinstance(svc.get("build"), dict) and svc["build"].get("dockerfile") == dockerfile:
            commands[f"service {name}"] = command(svc)
    if not any(k.startswith("Dockerfile CMD") for k in commands):
        problems.append("the Dockerfile has no CMD")
    for where, argv in commands.items():
        module = python_module(argv)
        if module is None:
            problems.append(f"{where}: {argv} is not `python -m <module>`")
        elif not module_exists(root, module):
            problems.append(f"{where}: module {module} does not exist in the repository")
        elif not any(fnmatch.fnmatchcase(module, pattern) for pattern in packaged):
            problems.append(f"{where}: module {module} is not packaged (pyproject include)")
    return problems


# --- fixtures ------------------------------------------------------------------------


def read_schema(path: Path = SCHEMA) -> Mapping[str, Any]:
    """The Compose JSON schema; a missing file fails the test (never a skip)."""
    if not path.is_file():
        pytest.fail(
            f"Compose JSON schema not found at {path}: the deployment files cannot be "
            "validated. It is expected in shared/schemas/ beside the repository."
        )
    loaded: Mapping[str, Any] = json.loads(path.read_text())
    return loaded


@pytest.fixture(scope="module")
def schema() -> Mapping[str, Any]:
    return read_schema()


@pytest.fixture(scope="module")
def compose() -> Compose:
    """The gpu profile (the broken-copy tests below edit its vLLM services)."""
    return load_profile("gpu")


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> Compose:
    return load_profile(request.param)


# --- the shipped files -------------------------------------------------------------------


def test_compose_file_matches_the_compose_schema(
    profile: Compose, schema: Mapping[str, Any]
) -> None:
    assert schema_problems(profile, schema) == []


def test_compose_file_matches_the_schema_with_variables_set(schema: Mapping[str, Any]) -> None:
    env = {
        "LLMGW_PUBLISH_ADDR": "0.0.0.0",
        "LLMGW_LARGE_GPU": "1",
        "LLMGW_TENANTS_DIR": str(ROOT / "deploy" / "tenants"),
        "LLMGW_UID": "1000",
        "LLMGW_GID": "1000",
        "HF_TOKEN": "hf_example",
    }
    assert schema_problems(load_profile("gpu", env), schema) == []
    assert schema_problems(load_compose(PUBLISH), schema) == []


def test_compose_needs_a_profile_and_a_grafana_password() -> None:
    with pytest.raises(ValueError, match="required variable COMPOSE_PROFILES"):
        load_compose(env=REQUIRED_ENV)
    with pytest.raises(ValueError, match="required variable GRAFANA_ADMIN_PASSWORD"):
        load_compose(env={"COMPOSE_PROFILES": "sim"})


def test_mounted_files_exist(profile: Compose) -> None:
    assert mount_problems(profile, ROOT) == []


def test_routing_and_tenant_files_pass_the_gateway_validation(profile: Compose) -> None:
    assert routing_problems(profile, ROOT) == []
    _, _, config, tenants = gateway_files(profile, ROOT)
    assert config.parent == ROOT / "deploy" / "compose" / "routing"
    assert tenants is not None
    models = load_config(config).models
    assert len(models) == 2
    assert models[1].fallbacks == [models[0].name]


def test_every_profile_has_its_own_backends() -> None:
    backends = {p: set(services_running(load_profile(p), "backends")) for p in PROFILES}
    assert all(backends.values())
    assert not (backends["sim"] & backends["cpu"]) and not (backends["cpu"] & backends["gpu"])
    assert "dcgm-exporter" in load_profile("gpu")["services"]
    assert "dcgm-exporter" not in load_profile("cpu")["services"]


def test_prometheus_scrapes_every_metrics_port_and_nothing_else(profile: Compose) -> None:
    assert scrape_problems(profile, ROOT) == []


def test_grafana_is_provisioned_from_the_repository(profile: Compose) -> None:
    assert grafana_problems(profile, ROOT) == []


def test_every_process_gets_the_stop_time_its_drain_needs(profile: Compose) -> None:
    assert drain_problems(profile) == []


def test_only_the_rest_port_is_published(profile: Compose) -> None:
    assert exposure_problems(profile, load_compose(PUBLISH)) == []


def test_traces_go_to_the_collector_and_on_to_jaeger(profile: Compose) -> None:
    services = profile["services"]
    for name in (*services_running(profile, "gateway"), *services_running(profile, "backends")):
        assert services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
            "http://otel-collector:4317"
        )
    config_path = host_path(services["otel-collector"], "/etc/otelcol/config.yaml", ROOT)
    assert config_path is not None
    config = yaml.safe_load(config_path.read_text())
    exporter = config["exporters"]["otlp/jaeger"]["endpoint"].split(":")[0]
    assert exporter in services
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["otlp/jaeger"]


def test_dockerfile_runs_modules_that_exist(compose: Compose) -> None:
    assert dockerfile_problems(DOCKERFILE.read_text(), ROOT, compose) == []


def test_no_api_key_is_shipped() -> None:
    shipped = [
        COMPOSE,
        *sorted((ROOT / "deploy").rglob("*")),
        *sorted((ROOT / "loadtest").rglob("*")),
    ]
    demo = "llmgw_00000000de30_demo-only-not-a-secret-local-use"
    for path in shipped:
        if path.is_file():
            for key in re.findall(r"llmgw_[0-9a-f]{12}_[A-Za-z0-9_-]+", path.read_text()):
                assert key == demo, f"{path} contains an API key"
    tenants = yaml.safe_load((ROOT / "deploy" / "tenants" / "tenants.yaml").read_text())
    assert all(t["keys"] == [] for t in tenants["tenants"]) and not tenants["admin_keys"]


def test_prometheus_config_passes_promtool(compose: Compose, tmp_path: Path) -> None:
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make test installs it)")
    config, path, container = prometheus_config(compose, ROOT)
    shutil.copy(path, tmp_path / "prometheus.yml")
    for rule_file in config.get("rule_files", []):
        source = host_path(
            compose["services"]["prometheus"],
            str(PurePosixPath(container).parent / rule_file),
            ROOT,
        )
        assert source is not None
        shutil.copy(source, tmp_path / rule_file)
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- each check can fail ---------------------------------------------------------------


def test_missing_schema_fails_rather_than_skips(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="Compose JSON schema not found at"):
        read_schema(tmp_path / "compose-spec.json")


def test_interpolation_uses_defaults_and_refuses_missing_required() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${UNSET:-d} ${SET:-d} ${EMPTY:-d} ${EMPTY-d} $$HOME $SET", env) == (
        "d x d  $HOME x"
    )
    with pytest.raises(ValueError, match="required variable NEEDED"):
        interpolate("${NEEDED:?set it}", env)


def broken(compose: Compose, change: Callable[[Compose], None]) -> Compose:
    copied = copy.deepcopy(compose)
    change(copied)
    return copied


def test_schema_check_fails_on_an_invalid_file(compose: Compose, schema: Mapping[str, Any]) -> None:
    def change(c: Compose) -> None:
        c["services"]["gateway"]["restart_policy"] = "always"  # not a service key
        del c["services"]["vllm-small"]["deploy"]["resources"]["reservations"]["devices"][0][
            "capabilities"
        ]

    problems = schema_problems(broken(compose, change), schema)
    assert any("restart_policy" in p for p in problems)
    assert any("'capabilities' is a required property" in p for p in problems), problems


def test_mount_check_fails_on_a_missing_file(compose: Compose) -> None:
    def change(c: Compose) -> None:
        c["services"]["prometheus"]["volumes"][0] = (
            "./deploy/absent.yml:/etc/prometheus/prometheus.yml:ro"
        )
        c["services"]["redis"]["volumes"] = ["undeclared:/data"]

    problems = mount_problems(broken(compose, change), ROOT)
    assert any("absent.yml" in p for p in problems)
    assert any("undeclared" in p for p in problems)


def test_routing_check_fails_on_an_invalid_routing_file(compose: Compose, tmp_path: Path) -> None:
    bad = tmp_path / "gpu.yaml"
    bad.write_text(
        (ROOT / "deploy" / "compose" / "routing" / "gpu.yaml")
        .read_text()
        .replace("fallbacks: [qwen2-0.5b-instruct]", "fallbacks: [no-such-model]")
    )

    def change(c: Compose) -> None:
        c["services"]["gateway"]["volumes"][0] = f"{tmp_path}:/etc/llmgw/routing:ro"

    problems = routing_problems(broken(compose, change), ROOT)
    assert any("unknown model 'no-such-model'" in p for p in problems)


def test_routing_check_fails_on_a_demo_tenant_file(compose: Compose) -> None:
    demo = ROOT / "devstack"

    def change(c: Compose) -> None:
        c["services"]["gateway"]["volumes"][1] = f"{demo}:/etc/llmgw/tenants:ro"
        argv = c["services"]["gateway"]["command"]
        argv[argv.index("--tenants") + 1] = "/etc/llmgw/tenants/demo_tenants.yaml"

    problems = routing_problems(broken(compose, change), ROOT)
    assert any("demo" in p and "loopback" in p for p in problems), problems


def test_routing_check_fails_when_services_disagree(compose: Compose) -> None:
    def change(c: Compose) -> None:
        small = c["services"]["sidecar-small"]["command"]
        small[small.index("--listen") + 1] = "0.0.0.0:50070"
        large = c["services"]["sidecar-large"]["command"]
        large[large.index("--model") + 1] = "other-model"
        large[large.index("--vllm-capacity") + 1] = "64"
        del c["services"]["vllm-large"]["deploy"]

    problems = routing_problems(broken(compose, change), ROOT)
    assert any("sidecar-small listens on '0.0.0.0:50070'" in p for p in problems), problems
    assert any("--model other-model" in p for p in problems), problems
    assert any("--max-num-seqs" in p for p in problems), problems
    assert any("reserves no GPU" in p for p in problems), problems


def test_scrape_check_fails_on_an_unexposed_port(compose: Compose) -> None:
    def change(c: Compose) -> None:
        shim = c["services"]["rest-shim"]["command"]
        shim[shim.index("--metrics-listen") + 1] = "127.0.0.1:9102"  # unreachable from Prometheus
        sidecar = c["services"]["sidecar-large"]["command"]
        sidecar[sidecar.index("--metrics-listen") + 1] = "0.0.0.0:9200"  # not scraped

    problems = scrape_problems(broken(compose, change), ROOT)
    assert any("rest-shim serves no /metrics on 9102" in p for p in problems), problems
    assert any("127.0.0.1:9102 is unreachable" in p for p in problems), problems
    assert any("sidecar-large serves no /metrics on 9112" in p for p in problems), problems
    assert any("sidecar-large: serves /metrics" in p for p in problems), problems


def test_dockerfile_check_fails_on_a_missing_module_or_root_user(compose: Compose) -> None:
    text = DOCKERFILE.read_text()
    bad = text.replace('"-m", "gateway"', '"-m", "gatewayx"').replace(
        "USER 10001:10001", "USER root"
    )
    bad = bad.replace("COPY common/ common/\n", "")
    bad = bad.replace("--require-hashes --no-deps -r", "-r").replace("3.11.13-slim", "3.12-slim")
    bad = bad.replace("COPY llmgw/ llmgw/", "COPY llmgw/ llmgw/\nCOPY bench/ bench/")

    def change(c: Compose) -> None:
        c["services"]["rest-shim"]["command"][2] = "rest_shimx"
        c["services"]["gateway"]["command"][2] = "scripts.gen_protos"  # in the repo, not the image

    problems = dockerfile_problems(bad, ROOT, broken(compose, change))
    assert any("module gatewayx does not exist" in p for p in problems), problems
    assert any("module rest_shimx does not exist" in p for p in problems), problems
    assert any("module scripts.gen_protos is not packaged" in p for p in problems), problems
    assert any("runs as root" in p for p in problems), problems
    assert any("package common" in p for p in problems), problems
    assert any("not install its dependencies from requirements.lock" in p for p in problems)
    assert any("beyond the lock" in p for p in problems), problems
    assert any("not python:3.11.<patch>-slim" in p for p in problems), problems
    assert any("COPY bench/: excluded from the build context" in p for p in problems), problems


def test_scrape_and_grafana_checks_fail_on_unknown_hosts(compose: Compose) -> None:
    def rename(old: str, new: str) -> Callable[[Compose], None]:
        return lambda c: c["services"].update({new: c["services"].pop(old)})

    scrape = scrape_problems(broken(compose, rename("gateway", "gateway-2")), ROOT)
    assert any("gateway:9101 is not a compose service" in p for p in scrape), scrape
    assert any("gateway-2: serves /metrics" in p for p in scrape), scrape
    grafana = grafana_problems(broken(compose, rename("prometheus", "prom")), ROOT)
    assert any("prometheus is no service" in p for p in grafana), grafana


def test_vllm_check_fails_on_the_model_flag_or_an_unpinned_revision(compose: Compose) -> None:
    def change(c: Compose) -> None:
        small = c["services"]["vllm-small"]
        small["command"] = ["--model", *small["command"]]
        large = c["services"]["vllm-large"]["command"]
        large[large.index("--revision") + 1] = "main"
        large.remove("--enable-auto-tool-choice")

    problems = routing_problems(broken(compose, change), ROOT)
    assert any("vllm-small: not started as `vllm serve <model>`" in p for p in problems), problems
    assert any("vllm-small: --model (deprecated" in p for p in problems), problems
    assert any("vllm-large: --revision is not a commit hash" in p for p in problems), problems
    assert any("vllm-large: no --tool-call-parser" in p for p in problems), problems


def test_drain_check_fails_on_short_stop_periods_or_wrong_stop_order(compose: Compose) -> None:
    def change(c: Compose) -> None:
        c["services"]["gateway"]["stop_grace_period"] = "30s"
        del c["services"]["sidecar-small"]["environment"]["LLMGW_SIDECAR_SHUTDOWN_GRACE_S"]
        vllm = c["services"]["vllm-large"]["command"]
        at = vllm.index("--shutdown-timeout")
        del vllm[at : at + 2]
        del c["services"]["gateway"]["depends_on"]["sidecar-large"]
        del c["services"]["rest-shim"]["depends_on"]

    problems = drain_problems(broken(compose, change))
    assert any("gateway: stop_grace_period 30 s" in p for p in problems), problems
    assert any("sidecar-small: no LLMGW_SIDECAR_SHUTDOWN_GRACE_S" in p for p in problems), problems
    assert any("vllm-large: vLLM without --shutdown-timeout" in p for p in problems), problems
    assert any("gateway does not depend on sidecar-large" in p for p in problems), problems
    assert any("rest-shim does not depend on gateway" in p for p in problems), problems


def test_exposure_check_fails_on_published_ports_or_a_default_password(compose: Compose) -> None:
    def change(c: Compose) -> None:
        c["services"]["prometheus"]["ports"] = ["9090:9090"]
        c["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] = "admin"

    publish = load_compose(PUBLISH)
    publish["services"]["gateway"]["ports"].append("0.0.0.0:50052:50052")
    problems = exposure_problems(broken(compose, change), publish)
    assert any("prometheus: publishes" in p for p in problems), problems
    assert any("0.0.0.0:50052:50052 is not bound to 127.0.0.1" in p for p in problems), problems
    assert any("GF_SECURITY_ADMIN_PASSWORD" in p for p in problems), problems


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name.lower())


def lock_problems(lock: str, groups: list[list[str]]) -> list[str]:
    """Every dependency of pyproject.toml (the given groups) is pinned with == and hashes."""
    pinned: dict[str, bool] = {}  # name -> has hashes
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock):
        match = re.match(r"([A-Za-z0-9_.-]+)==\S+", block)
        if match:
            pinned[normalized(match.group(1))] = "--hash=sha256:" in block
    problems = []
    for group in groups:
        for requirement in group:
            match = re.match(r"[A-Za-z0-9_.-]+", requirement)
            name = normalized(match.group(0) if match else requirement)
            if name not in pinned:
                problems.append(f"{requirement}: not in the lock (run `make lock`)")
            elif not pinned[name]:
                problems.append(f"{name}: pinned without a hash")
    return problems


def test_lock_files_pin_every_dependency_with_hashes() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = pyproject["dependencies"]
    dev = pyproject["optional-dependencies"]["dev"]
    assert lock_problems((ROOT / "requirements.lock").read_text(), [runtime]) == []
    assert lock_problems((ROOT / "requirements-dev.lock").read_text(), [runtime, dev]) == []
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes --no-deps -r requirements-dev.lock" in makefile
    text = (ROOT / "requirements.lock").read_text()
    broken = text.replace("\ngrpcio==", "\ngrpcio-old==", 1)
    assert any(p.startswith("grpcio>=") for p in lock_problems(broken, [runtime]))
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("orjson=="))
    lines[at] = lines[at].rstrip(" \\")
    while lines[at + 1].lstrip().startswith("--hash="):
        del lines[at + 1]
    unhashed = "\n".join(lines)
    assert "orjson: pinned without a hash" in lock_problems(unhashed, [runtime])
