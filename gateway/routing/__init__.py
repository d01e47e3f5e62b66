"""Model registry and endpoint pools."""
