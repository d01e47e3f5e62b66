"""One settings object per process: command-line flags over environment variables over
the defaults written once, in the pydantic-settings class.

Each process (gateway, shim, sidecar) declares a ``BaseSettings`` subclass
with an env prefix. ``load_settings`` derives its command-line flags from
the class's fields (``listen`` -> ``--listen``, help text from the field's
description, default shown from the field), so a default is written in one
place and no flag can drift from the setting it sets. The object is built
once in ``__main__`` and passed down; nothing reads ``os.environ`` later and
nothing writes settings back into it (worker processes get the object as an
argument).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def _is_flag(info: FieldInfo) -> bool:
    """A boolean field becomes a switch (``--redis-cluster``), not ``--x true``."""
    annotation = info.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    return annotation is bool


def _help(info: FieldInfo) -> str:
    text = info.description or ""
    if info.default is not None and not info.is_required():
        shown = info.default if info.default != "" else "''"
        text = f"{text} (default: {shown})" if text else f"default: {shown}"
    return text.replace("%", "%%")


def settings_parser(
    cls: type[BaseSettings], prog: str, description: str | None = None
) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of ``cls`` and no defaults of its own
    (an unset flag leaves the field to the environment or the class default)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    env_prefix = str(cls.model_config.get("env_prefix", ""))
    for name, info in cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"{env_prefix}{name}".upper()
        if _is_flag(info):
            parser.add_argument(
                flag,
                dest=name,
                action="store_const",
                const=True,
                help=f"{_help(info)} [env {env}]",
            )
        else:
            parser.add_argument(flag, dest=name, help=f"{_help(info)} [env {env}]")
    return parser


def validation_message(error: ValidationError) -> str:
    """Every problem of a settings error on one line each, named by its flag."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(p) for p in problem["loc"])
        message = str(problem["msg"]).removeprefix("Value error, ")
        lines.append(f"--{where.replace('_', '-')}: {message}" if where else message)
    return "\n".join(lines)


def load_settings(
    cls: type[S],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    description: str | None = None,
) -> S:
    """Build ``cls`` from flags (``argv``, default ``sys.argv[1:]``) over its environment
    variables over its defaults; exit with status 2 and a readable message when invalid."""
    parser = settings_parser(cls, prog or cls.__name__, description)
    namespace = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    given: dict[str, Any] = {k: v for k, v in vars(namespace).items() if v is not None}
    try:
        return cls(**given)
    except ValidationError as error:
        parser.exit(2, f"{parser.prog}: invalid settings\n{validation_message(error)}\n")
