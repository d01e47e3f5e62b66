"""Engines a sidecar can serve."""
