"""The gateway's domain core: no gRPC, HTTP or Redis imports here."""
