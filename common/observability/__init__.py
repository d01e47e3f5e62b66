"""Metrics, traces and logs shared by the gateway, the shim and the sidecars."""
