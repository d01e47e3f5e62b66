"""Adapters of the domain's ports to outside systems (Redis)."""
