"""The embedded default stack: two sim sidecars, the gateway and the shim, in one command."""
