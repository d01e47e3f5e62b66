"""Tenants, API keys and admission: who is calling, what they may use, how much.

No gRPC, HTTP or Redis here: transports call ``TenantGate`` and stores sit
behind the protocols of ``gateway.limits`` and ``gateway.metering``.
"""
