"""Dynamic endpoint compliance: the TLS-floor probe passes a TLS 1.2+ server and fails one that accepts TLS 1.0."""

from __future__ import annotations

import socket
import ssl
import threading
import warnings

import pytest

from dcforge.steps.serving.credentials import self_signed_certificate
from dcforge.compliance.endpoint import legacy_tls_refused


@pytest.fixture
def tls_server(tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    listeners = []

    def start(minimum: ssl.TLSVersion) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = minimum
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10)
        listeners.append(listener)

        def accept_all() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                try:
                    with context.wrap_socket(conn, server_side=True):
                        pass
                except (ssl.SSLError, OSError):
                    pass

        threading.Thread(target=accept_all, daemon=True).start()
        return f"https://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    for listener in listeners:
        listener.close()


def test_a_tls12_floor_passes(tls_server):
    finding = legacy_tls_refused(tls_server(ssl.TLSVersion.TLSv1_2))
    assert finding.passed, finding.detail


def test_a_server_accepting_tls10_fails(tls_server):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        url = tls_server(ssl.TLSVersion.TLSv1)
    finding = legacy_tls_refused(url)
    if "refused" in finding.detail and finding.passed:
        pytest.skip("this OpenSSL build cannot negotiate TLS 1.0/1.1 even at security level 0")
    assert not finding.passed and "succeeded" in finding.detail


def test_nothing_listening_is_not_a_pass():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    finding = legacy_tls_refused(f"https://127.0.0.1:{port}")
    assert not finding.passed and "proves nothing" in finding.detail
