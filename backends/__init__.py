"""Sidecars: thin gRPC servers that put one inference engine behind the backend contract."""
