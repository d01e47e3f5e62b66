"""A local CA and the certificates llmgw's processes need for TLS and mutual TLS.

``make certs`` (or ``python scripts/make_certs.py --out certs``) writes:

* ``ca.pem`` / ``ca-key.pem``: the CA every other certificate chains to;
* ``server.pem`` / ``server-key.pem``: served by the shim (HTTPS), the
  gateway and the sidecars (gRPC), valid for localhost, 127.0.0.1, ::1 and
  every ``--san`` given (a host name or an IP address);
* ``client.pem`` / ``client-key.pem``: what the gateway presents to the
  sidecars (mutual TLS), and what the shim can present to the gateway.

For local use and tests. A deployment uses certificates from its own CA
(cert-manager, a corporate PKI) under the same flags.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "llmgw local"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alt_names(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    path.write_bytes(data)
    if secret:
        path.chmod(0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(out: Path, days: int = 365) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA; writes ca.pem and ca-key.pem."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("llmgw local CA"))
        .issuer_name(_name("llmgw local CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(out / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca-key.pem", _key_pem(key), secret=True)
    return cert, key


def issue(
    out: Path,
    stem: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    names: Sequence[str],
    client: bool,
    days: int = 365,
) -> None:
    """A certificate signed by ``ca``; writes <stem>.pem and <stem>-key.pem."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(_alt_names(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(out / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / f"{stem}-key.pem", _key_pem(key), secret=True)


def make_all(out: Path, extra_names: Sequence[str] = (), days: int = 365) -> None:
    """The CA, the server certificate and the client certificate, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca(out, days)
    issue(out, "server", ca, [*DEFAULT_NAMES, *extra_names], client=False, days=days)
    issue(out, "client", ca, ["llmgw-gateway"], client=True, days=days)


def main(argv: list[str] | None = None) -> None:
    """Command line of ``make certs``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("certs"), help="folder (default certs/)")
    parser.add_argument(
        "--san", action="append", default=[], help="another host name or IP (repeatable)"
    )
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    make_all(args.out, args.san, args.days)
    print(f"wrote ca.pem, server.pem, client.pem and their keys to {args.out}/")


if __name__ == "__main__":
    main()
