"""Tenant and key administration, and usage reports: ``python -m gateway keys|tenants|usage``.

    python -m gateway tenants add acme --rpm 600 --tpm 100000 --models small,large
    python -m gateway keys create --tenant acme      # prints the key once
    python -m gateway keys list
    python -m gateway keys revoke 3f9a0c41d2e7
    python -m gateway usage --key "$KEY"              # this tenant's usage, as a table
    python -m gateway usage events --tenant acme --redis-url redis://127.0.0.1:6379

The tenant file is ``--tenants`` or ``LLMGW_GATEWAY_TENANTS``. A running
gateway picks up edits within a second (or at once on SIGHUP).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import grpc
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.config import ConfigError
from gateway.tenancy import tenant_file
from gateway.tenancy.config import Priority
from llmgw.v1 import usage_pb2 as pb
from llmgw.v1 import usage_pb2_grpc as pb_grpc


class CliSettings(BaseSettings):
    """What the commands take from the environment when no flag says otherwise: the
    same variable names the gateway and the clients use. Read once, in ``main``."""

    model_config = SettingsConfigDict(extra="ignore")

    tenants: Path | None = Field(default=None, validation_alias="LLMGW_GATEWAY_TENANTS")
    redis_url: str = Field(
        default="redis://127.0.0.1:6379", validation_alias="LLMGW_GATEWAY_REDIS_URL"
    )
    api_key: SecretStr | None = Field(default=None, validation_alias="LLMGW_API_KEY")
    gateway: str = Field(default="127.0.0.1:50051", validation_alias="LLMGW_GATEWAY")


def _tenants_path(args: argparse.Namespace) -> Path:
    value = args.tenants or args.env.tenants
    if not value:
        raise ConfigError("no tenant file: pass --tenants FILE or set LLMGW_GATEWAY_TENANTS")
    return Path(value)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if c.isdigit() else c.ljust(w) for c, w in zip(cells, widths, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _cmd_keys_create(args: argparse.Namespace) -> int:
    if bool(args.tenant) == bool(args.admin):
        raise ConfigError("give --tenant NAME or --admin")
    path = _tenants_path(args)
    new = tenant_file.create_key(path, None if args.admin else args.tenant, args.label or "")
    whose = "an admin key" if args.admin else f"a key for tenant {args.tenant}"
    print(f"Created {whose}, id {new.key_id}, in {path}.", file=sys.stderr)
    print("This is the only time the key is shown; only its hash is stored:", file=sys.stderr)
    print(new.secret)
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    parsed = tenant_file.read(_tenants_path(args))
    rows = [
        [k.id, t.name, k.created or "", k.label]
        for t in parsed.tenants
        if not args.tenant or t.name == args.tenant
        for k in t.keys
    ]
    if not args.tenant:
        rows += [[k.id, "(admin)", k.created or "", k.label] for k in parsed.admin_keys]
    print(_table(["key id", "tenant", "created", "label"], rows))
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    owner = tenant_file.revoke_key(_tenants_path(args), args.key_id)
    print(f"Revoked key {args.key_id} ({owner}).")
    return 0


def _cmd_tenants_add(args: argparse.Namespace) -> int:
    limits: dict[str, int] = {
        "requests_per_minute": args.rpm,
        "tokens_per_minute": args.tpm,
        "max_concurrent": args.max_concurrent,
    }
    if args.monthly_tokens:
        limits["monthly_tokens"] = args.monthly_tokens
    tenant = {
        "name": args.name,
        "priority": args.priority,
        "models": [m.strip() for m in args.models.split(",") if m.strip()],
        "limits": limits,
        "keys": [],
    }
    tenant_file.add_tenant(_tenants_path(args), tenant)
    print(f"Added tenant {args.name}. Create a key with:")
    print(f"  python -m gateway keys create --tenant {args.name}")
    return 0


def _cmd_tenants_list(args: argparse.Namespace) -> int:
    parsed = tenant_file.read(_tenants_path(args))
    rows = [
        [
            t.name,
            t.priority.value,
            ",".join(t.models),
            str(t.limits.requests_per_minute),
            str(t.limits.tokens_per_minute),
            str(t.limits.max_concurrent),
            str(t.limits.monthly_tokens or "-"),
            str(len(t.keys)),
        ]
        for t in parsed.tenants
    ]
    print(
        _table(
            ["tenant", "priority", "models", "rpm", "tpm", "concurrent", "monthly", "keys"], rows
        )
    )
    return 0


async def _get_usage(args: argparse.Namespace) -> pb.GetUsageResponse:
    key = args.key or (args.env.api_key.get_secret_value() if args.env.api_key else None)
    if not key:
        raise ConfigError("no API key: pass --key or set LLMGW_API_KEY")
    end = int(time.time())
    request = pb.GetUsageRequest(
        tenant=args.tenant or "",
        granularity=pb.GRANULARITY_HOUR if args.granularity == "hour" else pb.GRANULARITY_DAY,
        start_time=end - int(args.days * 86400),
        end_time=end,
        model=args.model or "",
    )
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        answer: pb.GetUsageResponse = await pb_grpc.UsageServiceStub(channel).GetUsage(
            request, metadata=(("authorization", f"Bearer {key}"),), timeout=30
        )
        return answer


def _cmd_usage(args: argparse.Namespace) -> int:
    try:
        answer = asyncio.run(_get_usage(args))
    except grpc.aio.AioRpcError as error:
        print(f"usage: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    fmt = "%Y-%m-%d %H:00" if args.granularity == "hour" else "%Y-%m-%d"
    rows = [
        [
            r.tenant,
            r.model,
            time.strftime(fmt, time.gmtime(r.period_start)),
            str(r.requests),
            str(r.prompt_tokens),
            str(r.completion_tokens),
            str(r.total_tokens),
            str(r.errors),
            str(r.cancelled),
        ]
        for r in answer.records
    ]
    headers = [
        "tenant",
        "model",
        f"{args.granularity} (UTC)",
        "requests",
        "prompt",
        "completion",
        "total",
        "errors",
        "cancelled",
    ]
    print(_table(headers, rows))
    return 0


async def _events(args: argparse.Namespace) -> int:
    from gateway.adapters.redis_conn import connect
    from gateway.adapters.redis_metering import RedisUsageStore

    client = connect(args.redis_url, args.redis_cluster, timeout_s=5.0)
    store = RedisUsageStore(client, timeout_s=30.0)
    after = args.after
    try:
        while True:
            batch = await store.events(args.tenant, after, count=1000)
            for event in batch:
                print(json.dumps(event))
            if len(batch) < 1000:
                return 0
            after = batch[-1]["id"]
    finally:
        await client.aclose()


def _cmd_usage_events(args: argparse.Namespace) -> int:
    return asyncio.run(_events(args))


def parser() -> argparse.ArgumentParser:
    """The command line of the keys, tenants and usage commands."""
    root = argparse.ArgumentParser(
        prog="python -m gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = root.add_subparsers(dest="command", required=True)
    file_opt = argparse.ArgumentParser(add_help=False)
    file_opt.add_argument("--tenants", help="tenant file (default: $LLMGW_GATEWAY_TENANTS)")

    keys = commands.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="sub", required=True
    )
    create = keys.add_parser("create", parents=[file_opt], help="create a key (printed once)")
    create.add_argument("--tenant")
    create.add_argument(
        "--admin", action="store_true", help="a key that reads every tenant's usage"
    )
    create.add_argument("--label", help="a note shown by `keys list`")
    create.set_defaults(run=_cmd_keys_create)
    listing = keys.add_parser("list", parents=[file_opt], help="key ids (never keys)")
    listing.add_argument("--tenant")
    listing.set_defaults(run=_cmd_keys_list)
    revoke = keys.add_parser("revoke", parents=[file_opt], help="remove a key by id")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_cmd_keys_revoke)

    tenants = commands.add_parser("tenants", help="add and list tenants").add_subparsers(
        dest="sub", required=True
    )
    add = tenants.add_parser("add", parents=[file_opt], help="add a tenant")
    add.add_argument("name")
    add.add_argument("--rpm", type=int, required=True, help="requests per minute")
    add.add_argument(
        "--tpm", type=int, required=True, help="tokens per minute (prompt + completion)"
    )
    add.add_argument("--max-concurrent", type=int, default=32)
    add.add_argument("--models", default="*", help="comma-separated names or aliases; * for all")
    add.add_argument("--priority", choices=[p.value for p in Priority], default="standard")
    add.add_argument("--monthly-tokens", type=int)
    add.set_defaults(run=_cmd_tenants_add)
    tlist = tenants.add_parser("list", parents=[file_opt], help="tenants and their limits")
    tlist.set_defaults(run=_cmd_tenants_list)

    usage = commands.add_parser("usage", help="a tenant's usage as a table (through the gateway)")
    usage.add_argument("--gateway", help="the gateway's address (default: $LLMGW_GATEWAY)")
    usage.add_argument("--key", help="API key (default: $LLMGW_API_KEY); an admin key sees all")
    usage.add_argument("--tenant", help="with an admin key: one tenant")
    usage.add_argument("--granularity", choices=("hour", "day"), default="day")
    usage.add_argument("--days", type=float, default=7)
    usage.add_argument("--model")
    usage.set_defaults(run=_cmd_usage)
    usage_sub = usage.add_subparsers(dest="sub")
    events = usage_sub.add_parser(
        "events", help="export a tenant's usage events (JSON lines) from Redis"
    )
    events.add_argument("--tenant", required=True)
    events.add_argument("--redis-url", help="default: $LLMGW_GATEWAY_REDIS_URL")
    events.add_argument("--redis-cluster", action="store_true")
    events.add_argument("--after", default="-", help="stream entry id to resume after")
    events.set_defaults(run=_cmd_usage_events)
    return root


def main(argv: list[str]) -> int:
    """Run one command; a bad file or argument is one line on stderr and exit status 2."""
    args = parser().parse_args(argv)
    args.env = CliSettings()
    for name in ("gateway", "redis_url"):
        if getattr(args, name, "") is None:
            setattr(args, name, getattr(args.env, name))
    try:
        return int(args.run(args))
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
