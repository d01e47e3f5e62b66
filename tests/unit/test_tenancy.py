"""API keys, the tenant file (validation, reload, CLI edits), headers and import boundaries."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
import yaml
from ruamel.yaml import YAML

from gateway.config import ConfigError
from gateway.domain.accounting import estimate_prompt_tokens
from gateway.tenancy import keys, tenant_file
from gateway.tenancy.cli import main as cli
from gateway.tenancy.config import load_tenants
from gateway.tenancy.directory import TenantDirectory
from gateway.transport.ratelimit import format_duration
from tests.tenancy_helpers import tenant, write_tenants

ROOT = Path(__file__).resolve().parents[2]


def test_keys_are_prefixed_high_entropy_and_stored_only_as_hashes() -> None:
    new = keys.generate()
    assert new.secret.startswith("llmgw_") and len(new.secret) >= 60
    assert keys.key_id_of(new.secret) == new.key_id
    assert new.key_hash.startswith("sha256:") and new.secret not in new.key_hash
    assert keys.matches(new.secret, new.key_hash)
    assert not keys.matches(new.secret + "x", new.key_hash)
    assert keys.generate().secret != new.secret


@pytest.mark.parametrize(
    ("key_id", "number"),
    [
        ("1234e5678901", True),  # a float in YAML 1.2 (ruamel.yaml, the CLI)
        ("123456789012", True),
        ("0b0101010101", True),  # an integer in YAML 1.1 (PyYAML, the gateway)
        ("12345678901e", False),
        ("0123456789ab", False),
        ("e12345678901", False),
    ],
)
def test_key_ids_that_yaml_reads_as_numbers_are_never_issued(key_id: str, number: bool) -> None:
    line = f"id: {key_id}\n"
    readers = (YAML(typ="safe").load(line)["id"], yaml.safe_load(line)["id"])
    assert keys.reads_as_number(key_id) == any(not isinstance(v, str) for v in readers)
    assert not any(keys.reads_as_number(keys.generate().key_id) for _ in range(2000))


def test_bearer_parsing() -> None:
    assert keys.bearer_token("Bearer abc") == "abc"
    assert keys.bearer_token("bearer  abc ") == "abc"
    assert keys.bearer_token("Basic abc") is None
    assert keys.bearer_token("Bearer ") is None
    assert keys.bearer_token(None) is None


def directory(path: Path, allow_demo: bool = True) -> TenantDirectory:
    aliases = {
        "small": "sim-small",
        "sim-small": "sim-small",
        "large": "sim-large",
        "sim-large": "sim-large",
    }
    d = TenantDirectory(path, set(aliases), aliases.__getitem__, allow_demo=allow_demo)
    d.load()
    return d


def test_directory_authenticates_keys_and_resolves_model_aliases(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    issued = write_tenants(path, [tenant("acme", models=["small"]), tenant("beta")])
    d = directory(path)
    acme = d.authenticate(issued["acme"])
    assert acme is not None and acme.tenant is not None and acme.tenant.name == "acme"
    assert acme.tenant.may_use("sim-small") and not acme.tenant.may_use("sim-large")
    beta = d.authenticate(issued["beta"])
    assert beta is not None and beta.tenant is not None and beta.tenant.may_use("sim-large")
    admin = d.authenticate(issued["admin"])
    assert admin is not None and admin.admin
    assert d.authenticate(None) is None
    assert d.authenticate("llmgw_000000000000_" + "x" * 43) is None
    forged = issued["acme"][:-1] + ("A" if issued["acme"][-1] != "A" else "B")
    assert d.authenticate(forged) is None  # right key id, wrong secret


def test_a_bad_reload_keeps_the_old_tenants_and_logs_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tenants.yaml"
    issued = write_tenants(path, [tenant("acme")])
    d = directory(path)
    path.write_text("tenants:\n  - name: acme\n    limits: {requests_per_minute: 0}\n")
    assert d.changed()
    with caplog.at_level(logging.ERROR, "llmgw.gateway.tenancy"):
        assert not d.reload()
    assert "tenants.0.limits.requests_per_minute" in caplog.text
    assert "still serving the previous one" in caplog.text
    assert d.authenticate(issued["acme"]) is not None
    assert not d.changed()  # the same bad file is not retried every poll
    write_tenants(path, [tenant("other")])
    assert d.changed() and d.reload()
    assert d.authenticate(issued["acme"]) is None and "other" in d.tenants


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "tenants: [{name: Bad Name, limits: {requests_per_minute: 1, tokens_per_minute: 1}}]",
            "tenants.0.name",
        ),
        (
            "tenants: [{name: a, limits: {requests_per_minute: 1}}]",
            "tenants.0.limits.tokens_per_minute",
        ),
        (
            "tenants: [{name: a, limits: {requests_per_minute: 1, tokens_per_minute: 1}, keys: [{id: 0123456789ab, hash: llmgw_0123456789ab_secretsecretsecret}]}]",
            "plaintext key",
        ),
        (
            "tenants: [{name: a, limits: {requests_per_minute: 1, tokens_per_minute: 1}, priority: urgent}]",
            "tenants.0.priority",
        ),
        (
            "tenants: [{name: a, limits: {requests_per_minute: 1, tokens_per_minute: 1}}, {name: a, limits: {requests_per_minute: 1, tokens_per_minute: 1}}]",
            "declared twice",
        ),
        (
            "tenants: [{name: a, models: [nope], limits: {requests_per_minute: 1, tokens_per_minute: 1}}]",
            "tenants.0.models.0: unknown model 'nope'",
        ),
        (
            "tenants: [{name: a, limits: {requests_per_minute: 1, tokens_per_minute: 1}, extra: 1}]",
            "tenants.0.extra",
        ),
        ("tenants: [", "not valid YAML"),
    ],
)
def test_tenant_file_errors_are_named_by_their_path(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_tenants(path, {"small"})
    assert expected in str(caught.value)


def test_demo_tenants_are_refused_off_loopback(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": [{**tenant("demo"), "demo": True}]}))
    directory(path, allow_demo=True)
    with pytest.raises(ConfigError, match="loopback"):
        directory(path, allow_demo=False)


def test_the_shipped_demo_file_is_valid_and_its_key_works() -> None:
    from devstack.__main__ import DEMO_KEY, DEMO_TENANTS

    d = directory(DEMO_TENANTS)
    principal = d.authenticate(DEMO_KEY)
    assert principal is not None and principal.tenant is not None and principal.tenant.demo


def test_the_load_test_key_in_the_makefile_is_the_loadtest_tenants() -> None:
    from devstack.__main__ import DEMO_TENANTS

    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    key = makefile.split("LLMGW_API_KEY:-", 1)[1].split("}", 1)[0]
    principal = directory(DEMO_TENANTS).authenticate(key)
    assert principal is not None and principal.tenant is not None
    assert principal.tenant.name == "loadtest" and principal.tenant.demo
    # 100 Locust users, each at most a few requests a second, never all refused by a limit
    limits = principal.tenant.limits
    assert limits.requests_per_minute is not None and limits.requests_per_minute >= 100 * 60 * 4
    assert limits.max_concurrent is not None and limits.max_concurrent >= 100


def test_cli_creates_lists_and_revokes_keys_keeping_comments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tenants.yaml"
    assert (
        cli(
            [
                "tenants",
                "add",
                "acme",
                "--rpm",
                "60",
                "--tpm",
                "1000",
                "--models",
                "small",
                "--tenants",
                str(path),
            ]
        )
        == 0
    )
    text = path.read_text()
    path.write_text(text.replace("tenants:", "# our customers\ntenants:"))
    capsys.readouterr()
    assert cli(["keys", "create", "--tenant", "acme", "--label", "ci", "--tenants", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("llmgw_")
    stored = path.read_text()
    assert key not in stored and keys.hash_key(key) in stored and "# our customers" in stored
    assert cli(["keys", "list", "--tenants", str(path)]) == 0
    listing = capsys.readouterr().out
    key_id = keys.key_id_of(key)
    assert key_id is not None and key_id in listing and key not in listing and "acme" in listing
    d = directory(path)
    assert d.authenticate(key) is not None
    assert cli(["keys", "revoke", key_id, "--tenants", str(path)]) == 0
    assert d.changed() and d.reload() and d.authenticate(key) is None


def test_cli_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tenants.yaml"
    assert cli(["keys", "create", "--tenant", "ghost", "--tenants", str(path)]) == 2
    assert "no tenant named 'ghost'" in capsys.readouterr().err
    assert cli(["tenants", "add", "x", "--rpm", "0", "--tpm", "1", "--tenants", str(path)]) == 2
    assert "requests_per_minute" in capsys.readouterr().err
    assert not path.exists() or "x" not in tenant_file.read(path).model_dump_json()


def test_reset_durations_read_like_openai() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(0.0201) == "21ms"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(360) == "6m0s"
    assert format_duration(3725) == "1h2m5s"


def test_prompt_estimate_grows_with_text_and_messages() -> None:
    assert estimate_prompt_tokens([0]) == 7
    assert estimate_prompt_tokens([400]) == 107
    assert estimate_prompt_tokens([40, 40]) > estimate_prompt_tokens([80])


DOMAIN = (
    "gateway/domain",
    "gateway/routing",
    "gateway/tenancy",
    "gateway/limits",
    "gateway/metering",
)
FORBIDDEN = ("grpc", "fastapi", "starlette", "redis", "llmgw")
# Composition and command-line modules that live beside their concern but wire
# it to the outside world (Redis stores, the usage RPC): not domain code.
WIRING = {"gateway/tenancy/runtime.py", "gateway/tenancy/cli.py"}


@pytest.mark.parametrize("package", DOMAIN)
def test_the_domain_imports_no_transport_or_redis(package: str) -> None:
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        if str(path.relative_to(ROOT)) in WIRING:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
