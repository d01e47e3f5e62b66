"""TLS and mutual TLS for every gRPC hop (gateway, sidecars, their clients).

Servers use grpc's *dynamic* SSL credentials: for each new handshake grpc
asks ``_CertificateFiles.fetch`` whether the certificate changed, and it
re-reads the files when their size or modification time did. A renewed
certificate (cert-manager, ``make certs`` again) is so served to new
connections without a restart; one that does not load is logged and the
previous pair keeps serving. With ``client_ca`` set the server requires a
client certificate signed by that CA (mutual TLS): sidecars use it so that
only the gateway can call them.

Client credentials are read when a channel is created (a restart picks up a
renewed client certificate).
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("llmgw.tls")


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate and key, and the CA its clients' certificates must chain to."""

    cert: Path
    key: Path
    client_ca: Path | None = None  # set: mutual TLS, a client certificate is required


@dataclass(frozen=True)
class ClientTls:
    """The CA a server's certificate must chain to, and an optional client certificate."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    # The name to verify the server's certificate against, when the address dialled is
    # not in it (the gateway dials sidecars by resolved IP addresses).
    server_name: str | None = None


def server_tls(cert: Path | None, key: Path | None, client_ca: Path | None) -> ServerTls | None:
    """ServerTls from optional settings (None: plaintext); ValueError if half given."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("a client CA (mutual TLS) needs a server certificate and key")
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both a certificate and its key")
    return ServerTls(cert, key, client_ca)


def client_tls(
    ca: Path | None, cert: Path | None, key: Path | None, server_name: str | None = None
) -> ClientTls | None:
    """ClientTls from optional settings (None: plaintext); ValueError if inconsistent."""
    if ca is None:
        if cert is not None or key is not None:
            raise ValueError("a client certificate needs the server's CA too")
        return None
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both the certificate and its key")
    return ClientTls(ca, cert, key, server_name or None)


def _stamp(*paths: Path | None) -> tuple[tuple[int, int], ...]:
    stamps = []
    for path in paths:
        if path is not None:
            st = os.stat(path)
            stamps.append((st.st_size, st.st_mtime_ns))
    return tuple(stamps)


class _CertificateFiles:
    """Reads a server's certificate files, again whenever they change."""

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._stamp = _stamp(tls.cert, tls.key, tls.client_ca)
        self.initial = self._configuration()

    def _configuration(self) -> Any:
        tls = self._tls
        # Load through ssl first: a mismatched or half-written pair fails here, not in
        # every handshake.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls.cert, tls.key)
        return grpc.ssl_server_certificate_configuration(
            [(tls.key.read_bytes(), tls.cert.read_bytes())],
            root_certificates=tls.client_ca.read_bytes() if tls.client_ca else None,
        )

    def fetch(self) -> Any:
        """grpc's per-handshake question: a new configuration, or None to keep the current one."""
        tls = self._tls
        try:
            stamp = _stamp(tls.cert, tls.key, tls.client_ca)
            if stamp == self._stamp:
                return None
            configuration = self._configuration()
        except (OSError, ssl.SSLError) as error:
            log.error("TLS certificate %s not reloaded, still serving the previous one: %s",
                      tls.cert, error)  # fmt: skip
            return None
        self._stamp = stamp
        log.info("TLS certificate %s reloaded", tls.cert)
        return configuration


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """Credentials that serve ``tls`` and reload its files when they change."""
    files = _CertificateFiles(tls)
    return grpc.dynamic_ssl_server_credentials(
        files.initial, files.fetch, require_client_authentication=tls.client_ca is not None
    )


def add_port(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> int:
    """Bind ``address`` with TLS when ``tls`` is given; the port bound (0 on failure)."""
    if tls is None:
        return int(server.add_insecure_port(address))
    return int(server.add_secure_port(address, server_credentials(tls)))


def channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    """Credentials verifying the server against ``tls.ca`` (and presenting a client cert)."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=tls.key.read_bytes() if tls.key else None,
        certificate_chain=tls.cert.read_bytes() if tls.cert else None,
    )


def open_channel(
    target: str, tls: ClientTls | None, options: Any = (), interceptors: Any = None
) -> grpc.aio.Channel:
    """An aio channel to ``target``: TLS when ``tls`` is given, plaintext otherwise."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    if tls.server_name:
        options = (*options, ("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(
        target, channel_credentials(tls), options=options, interceptors=interceptors
    )
