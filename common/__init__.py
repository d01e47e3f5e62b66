"""Helpers shared by the three services (gateway, REST shim, sidecar): gRPC server
set-up and status details, stream batching, logs, metrics and traces."""
