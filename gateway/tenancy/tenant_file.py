"""Edits of the tenant file that keep its comments and layout (ruamel.yaml round trip).

Every edit takes a lock beside the file, validates the result as the
gateway would, and replaces the file atomically, so a gateway watching it
never reads half a file and two CLI runs never lose each other's edit.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from gateway.config import ConfigError
from gateway.tenancy import keys
from gateway.tenancy.config import TenantsFile, parse_tenants

_HEADER = """\
# Tenants of the llmgw gateway: API key hashes, models, limits, priority.
# Edit by hand or with `python -m gateway tenants|keys ...`; the gateway reloads it on change.
"""


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    return y


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read(path: Path) -> TenantsFile:
    """The validated file (an empty one if it does not exist yet)."""
    if not path.exists():
        return TenantsFile()
    data = _yaml().load(path.read_text())
    return parse_tenants(_plain(data), str(path))


def _plain(data: Any) -> Any:
    if isinstance(data, dict):
        return {str(k): _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data


def edit(path: Path, change: Callable[[CommentedMap], None]) -> TenantsFile:
    """Apply ``change`` to the document, validate, and write it back atomically."""
    y = _yaml()
    with _locked(path):
        if path.exists():
            data = y.load(path.read_text())
        else:
            data = y.load(_HEADER + "tenants: []\nadmin_keys: []\n")
        if data is None:
            data = CommentedMap()
        change(data)
        parsed = parse_tenants(_plain(data), str(path))
        out = io.StringIO()
        y.dump(data, out)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(out.getvalue())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return parsed


def _tenant(data: CommentedMap, name: str) -> CommentedMap:
    for tenant in data.get("tenants") or ():
        if tenant.get("name") == name:
            return tenant  # type: ignore[no-any-return]
    raise ConfigError(f"no tenant named {name!r}")


def _seq(data: CommentedMap, key: str) -> CommentedSeq:
    seq = data.get(key)
    if seq is None:
        seq = data[key] = CommentedSeq()
    return seq  # type: ignore[no-any-return]


def add_tenant(path: Path, tenant: dict[str, Any]) -> TenantsFile:
    """Append a tenant (validated like the rest of the file)."""

    def change(data: CommentedMap) -> None:
        tenants = _seq(data, "tenants")
        if any(t.get("name") == tenant["name"] for t in tenants):
            raise ConfigError(f"tenant {tenant['name']!r} already exists")
        tenants.append(CommentedMap(tenant))

    return edit(path, change)


def create_key(path: Path, tenant: str | None, label: str = "") -> keys.NewKey:
    """A new key for ``tenant`` (None: an admin key); only its hash is written."""
    new = keys.generate()
    entry = CommentedMap(
        id=new.key_id,
        hash=new.key_hash,
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    if label:
        entry["label"] = label

    def change(data: CommentedMap) -> None:
        if tenant is None:
            _seq(data, "admin_keys").append(entry)
        else:
            _seq(_tenant(data, tenant), "keys").append(entry)

    edit(path, change)
    return new


def revoke_key(path: Path, key_id: str) -> str:
    """Remove a key by id; returns whose it was ("admin" or the tenant's name)."""
    owner: list[str] = []

    def change(data: CommentedMap) -> None:
        holders = [(t.get("name"), t.get("keys")) for t in data.get("tenants") or ()]
        holders.append(("admin", data.get("admin_keys")))
        for name, entries in holders:
            for i, entry in enumerate(entries or ()):
                if entry.get("id") == key_id:
                    del entries[i]
                    owner.append(str(name))
                    return
        raise ConfigError(f"no key with id {key_id!r}")

    edit(path, change)
    return owner[0]
