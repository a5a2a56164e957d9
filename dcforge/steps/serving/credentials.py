"""Secret material of a serving run: the per-run API key and a self-signed TLS certificate, written 0600 into a
0700 directory that is removed afterwards (never under the report directory)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

def new_api_key() -> str:
    return secrets.token_urlsafe(32)


@contextmanager
def private_dir() -> Iterator[Path]:
    """A 0700 directory for the API key and TLS key, removed afterwards (never under the report directory)."""
    path = Path(tempfile.mkdtemp(prefix="dcforge-serving-"))
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_secret(directory: Path, name: str, content: bytes) -> Path:
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    return path


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A one-day certificate for `host` (an IP SAN), so the check can serve and probe HTTPS locally."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path = write_secret(directory, "tls.crt", certificate.public_bytes(serialization.Encoding.PEM))
    key_path = write_secret(directory, "tls.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path
