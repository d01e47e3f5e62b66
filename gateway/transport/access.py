"""Who may call which RPC: one explicit entry per method, deny by default.

The authentication interceptor consults this table and nothing else. A
method that is not listed here is refused, with or without a key, so a new
RPC cannot be served unauthenticated by omission; ``tests/unit`` walks every
method of every service the gateway registers and fails when one is missing.
What an authenticated caller may then do (which models, how much) is the
domain's decision, not this table's.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import ModuleType

from llmgw.admin.v1 import admin_pb2
from llmgw.v1 import chat_pb2, completions_pb2, embeddings_pb2, usage_pb2


class Access(enum.Enum):
    """What a call must present."""

    PUBLIC = "public"  # nothing: served to anyone (none of the API today)
    KEY = "key"  # a valid API key, a tenant's or an admin's
    ADMIN = "admin"  # an admin key


# Infrastructure every gRPC server carries: probes and tooling call them without keys.
EXEMPT_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


def method(module: ModuleType, service: str, name: str) -> str:
    """The full path of an RPC (``/pkg.Service/Method``), checked against the proto."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    return f"/{descriptor.full_name}/{descriptor.methods_by_name[name].name}"


METHOD_ACCESS: Mapping[str, Access] = {
    method(chat_pb2, "ChatService", "CreateChatCompletion"): Access.KEY,
    method(chat_pb2, "ChatService", "StreamChatCompletion"): Access.KEY,
    method(chat_pb2, "ModelService", "ListModels"): Access.KEY,
    method(chat_pb2, "ModelService", "GetModel"): Access.KEY,
    method(completions_pb2, "CompletionService", "CreateCompletion"): Access.KEY,
    method(completions_pb2, "CompletionService", "StreamCompletion"): Access.KEY,
    method(embeddings_pb2, "EmbeddingService", "CreateEmbedding"): Access.KEY,
    method(usage_pb2, "UsageService", "GetUsage"): Access.KEY,
    method(admin_pb2, "AdminService", "ListModels"): Access.ADMIN,
}


def service_of(path: str) -> str:
    """``pkg.Service`` of a method path ``/pkg.Service/Method``."""
    return path.split("/")[1] if path.count("/") == 2 else ""
