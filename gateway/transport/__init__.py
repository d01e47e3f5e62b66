"""gRPC transport of the gateway: servicers, conversions, the backend client."""
