"""Tenants, API keys and admission: who is calling, what they may use, how much.

No gRPC, HTTP or Redis here: the chat service calls ``TenantAdmission``; stores sit
behind the protocols of ``gateway.limits`` and ``gateway.metering``.
"""
