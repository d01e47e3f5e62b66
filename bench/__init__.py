"""Streaming throughput and latency benchmark of sidecar, gateway and REST shim."""
