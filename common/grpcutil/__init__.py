"""Helpers shared by every gRPC server of the project (gateway and sidecars)."""
