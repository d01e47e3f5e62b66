"""The gateway: tenancy, limits, routing and resilience in front of the sidecars."""
