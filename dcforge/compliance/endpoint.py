"""Dynamic compliance of a live inference endpoint: requests without a valid API key are refused with 401, and,
when the endpoint speaks TLS, handshakes below TLS 1.2 are refused while TLS 1.2+ works.

Each rule is one function returning an `EndpointFinding`; `check_endpoint` runs the ones that apply.
"""

from __future__ import annotations

import socket
import ssl
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

MINIMUM_TLS = "TLSv1.2"


@dataclass(frozen=True)
class EndpointFinding:
    rule: str
    passed: bool
    detail: str


def unauthenticated_requests_refused(base_url: str, model: str, *, verify: bool | str = False,
                                     timeout_s: float = 10.0) -> EndpointFinding:
    """No key, a wrong key and a wrong scheme must each get 401 on listing models and on a completion."""
    attempts = {"no key": {}, "wrong key": {"Authorization": "Bearer not-the-key"},
                "basic scheme": {"Authorization": "Basic bm90OnRoZWtleQ=="}}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    wrong = []
    with httpx.Client(base_url=base_url, verify=verify, timeout=timeout_s) as client:
        for label, headers in attempts.items():
            for method, path, payload in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", body)):
                status = client.request(method, path, headers=headers, json=payload).status_code
                if status != 401:
                    wrong.append(f"{method} {path} with {label} -> {status}")
    if wrong:
        return EndpointFinding("api-key-required", False, "expected 401: " + "; ".join(wrong))
    return EndpointFinding("api-key-required", True, f"{len(attempts) * 2} unauthenticated requests got 401")


def _handshake(host: str, port: int, minimum: ssl.TLSVersion, maximum: ssl.TLSVersion,
               timeout_s: float) -> str:
    """The negotiated version, or 'refused: <reason>'."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # this probe tests protocol versions, not the certificate chain
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # naming TLS 1.0/1.1 is the point of the probe
        context.minimum_version = minimum
        context.maximum_version = maximum
    # Security level 0 lets this client offer legacy versions, so a refusal is the server's doing.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            return tls.version() or "unknown"
    except (ssl.SSLError, OSError) as error:
        return f"refused: {error}"


def legacy_tls_refused(base_url: str, *, timeout_s: float = 10.0) -> EndpointFinding:
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        legacy = _handshake(host, port, ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1, timeout_s)
    modern = _handshake(host, port, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED, timeout_s)
    if not legacy.startswith("refused"):
        return EndpointFinding("tls-minimum-version", False, f"a {legacy} handshake succeeded; "
                                                             f"the floor must be {MINIMUM_TLS}")
    if modern.startswith("refused"):
        return EndpointFinding("tls-minimum-version", False, f"TLS 1.2+ handshake failed too ({modern}): "
                                                             "the probe proves nothing")
    return EndpointFinding("tls-minimum-version", True, f"TLS 1.0/1.1 refused, {modern} negotiated")


def check_endpoint(base_url: str, model: str, *, verify: bool | str = False) -> list[EndpointFinding]:
    findings = [unauthenticated_requests_refused(base_url, model, verify=verify)]
    if base_url.startswith("https://"):
        findings.append(legacy_tls_refused(base_url))
    return findings
