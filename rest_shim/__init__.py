"""OpenAI-compatible REST shim: translates HTTP+SSE to the gateway's gRPC API and back."""
