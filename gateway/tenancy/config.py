"""The tenant file (YAML): tenants, their key hashes, models, limits and priority.

Validated with pydantic; a bad file is refused with every problem named by
its path in the file (``tenants.1.limits.tokens_per_minute: ...``). Keys
appear only as ``sha256:`` hashes; a plaintext key in the file is an error.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.config import ConfigError, invalid, read_yaml
from gateway.tenancy.keys import KEY_ID, PREFIX, is_hash

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
ALL_MODELS = "*"


class Priority(enum.Enum):
    """Priority class of a tenant; the routing layer serves higher classes first."""

    LOW = "low"
    STANDARD = "standard"
    HIGH = "high"

    @property
    def rank(self) -> int:
        """Larger is served first (the fair queue's order)."""
        return {"low": 0, "standard": 1, "high": 2}[self.value]


class KeyEntry(BaseModel):
    """One API key, by id and hash; the key itself is never stored."""

    model_config = ConfigDict(extra="forbid")

    id: str
    hash: str
    created: str | None = None
    label: str = ""

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not KEY_ID.match(value):
            raise ValueError("key id must be 12 lowercase hex digits")
        return value

    @field_validator("hash")
    @classmethod
    def _hash(cls, value: str) -> str:
        if value.startswith(PREFIX):
            raise ValueError("this is a plaintext key: store only its hash (use `keys create`)")
        if not is_hash(value):
            raise ValueError("hash must be 'sha256:' followed by 64 hex digits")
        return value


class LimitsConfig(BaseModel):
    """A tenant's limits. Bursts default to one minute's worth."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int = Field(ge=1)
    tokens_per_minute: int = Field(ge=1, description="Prompt plus completion tokens.")
    max_concurrent: int = Field(default=32, ge=1, description="Requests in flight at once.")
    requests_burst: int | None = Field(default=None, ge=1)
    tokens_burst: int | None = Field(default=None, ge=1)
    monthly_tokens: int | None = Field(
        default=None, ge=1, description="Token quota per calendar month (UTC); none if unset."
    )
    reserve_completion_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Completion tokens reserved when the client sets no max_tokens "
        "(default: the model's default_max_tokens, else its reserve_completion_tokens).",
    )


class TenantConfig(BaseModel):
    """One tenant."""

    model_config = ConfigDict(extra="forbid")

    name: str
    keys: list[KeyEntry] = Field(default_factory=list)
    models: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: ["*"])
    limits: LimitsConfig
    priority: Priority = Priority.STANDARD
    demo: bool = Field(
        default=False, description="A demo tenant with a published key: loopback only."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not TENANT_NAME.match(value):
            raise ValueError(
                "tenant name must be 1-63 characters of a-z, 0-9, '_', '.', '-', "
                "starting with a letter or digit"
            )
        return value


class TenantsFile(BaseModel):
    """The whole tenant file."""

    model_config = ConfigDict(extra="forbid")

    tenants: list[TenantConfig] = Field(default_factory=list)
    admin_keys: list[KeyEntry] = Field(
        default_factory=list, description="Keys that read every tenant's usage."
    )

    @model_validator(mode="after")
    def _unique(self) -> TenantsFile:
        names: set[str] = set()
        ids: set[str] = set()
        for tenant in self.tenants:
            if tenant.name in names:
                raise ValueError(f"tenant {tenant.name!r} is declared twice")
            names.add(tenant.name)
        for entry in [k for t in self.tenants for k in t.keys] + self.admin_keys:
            if entry.id in ids:
                raise ValueError(f"key id {entry.id!r} is used twice")
            ids.add(entry.id)
        return self

    def check_models(self, known: Collection[str]) -> None:
        """Raise ConfigError if a tenant allows a model the gateway does not serve."""
        problems = [
            f"  tenants.{i}.models.{j}: unknown model {name!r}"
            for i, tenant in enumerate(self.tenants)
            for j, name in enumerate(tenant.models)
            if name != ALL_MODELS and name not in known
        ]
        if problems:
            raise ConfigError("tenant file lists unknown models:\n" + "\n".join(problems))


def parse_tenants(raw: object, source: str) -> TenantsFile:
    """Validate already-parsed YAML; ConfigError names every problem by its path."""
    try:
        return TenantsFile.model_validate(raw if raw is not None else {})
    except ValidationError as error:
        raise invalid("tenant file", source, error) from error


def load_tenants(path: Path, known_models: Collection[str] | None = None) -> TenantsFile:
    """Read and validate a tenant file; raise ConfigError with a readable message."""
    tenants = parse_tenants(read_yaml(path, "tenant file"), str(path))
    if known_models is not None:
        tenants.check_models(known_models)
    return tenants
