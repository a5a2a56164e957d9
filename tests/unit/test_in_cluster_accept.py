"""`dcforge accept` as the scheduled CronJob runs it: no kubeconfig anywhere, the in-cluster configuration (the
Kubernetes service's environment variables, the ServiceAccount's token and CA files) chosen by the official client.

The in-cluster configuration only speaks HTTPS, so the fake API (kmock, tests/kube_fake.py) is reached through a
TLS terminator on loopback with a certificate made here for 127.0.0.1; the ServiceAccount files are written to a
temporary directory and the client's paths of them pointed there."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading

import pytest

pytest.importorskip("kmock", reason="kmock (the fake Kubernetes API) needs Python 3.11+")

from tests.kube_fake import FakeCluster  # noqa: E402
from tests.unit.test_remediation import noderows_on_the_fake  # noqa: E402

TOKEN = "in-cluster-token-of-the-acceptance-account"


def self_signed(tmp_path):
    """A certificate for 127.0.0.1 and its key (PEM files); the certificate is its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "ca.crt", tmp_path / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class TlsTerminator:
    """Accepts TLS on a loopback port and forwards each connection's plain bytes to `backend_port`."""

    def __init__(self, cert_file, key_file, backend_port: int):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_file, key_file)
        self.backend_port = backend_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.headers_seen: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        backend = socket.create_connection(("127.0.0.1", self.backend_port))
        threading.Thread(target=self._pump, args=(backend, client, False), daemon=True).start()
        self._pump(client, backend, True)

    def _pump(self, source: socket.socket, target: socket.socket, record: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if record:
                    self.headers_seen.append(chunk[:4096])
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_accept_marks_nodes_with_the_in_cluster_configuration(tmp_path, monkeypatch):
    from kubernetes import client
    from typer.testing import CliRunner

    from dcforge.cli import app
    from dcforge.node_health import CONDITION

    with FakeCluster() as cluster:
        core = client.CoreV1Api(cluster.api_client("test-setup"))
        for name in ("gpu-1", "gpu-2"):
            core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {},
                              "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                             _preload_content=False)
        env_file = noderows_on_the_fake(cluster, tmp_path, monkeypatch)
        # ... and then no kubeconfig at all: what a pod has instead
        monkeypatch.delenv("KUBECONFIG")
        monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
        cert_file, key_file = self_signed(tmp_path)
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN)
        monkeypatch.setattr("kubernetes.config.incluster_config.SERVICE_TOKEN_FILENAME", str(token_file))
        monkeypatch.setattr("kubernetes.config.incluster_config.SERVICE_CERT_FILENAME", str(cert_file))
        terminator = TlsTerminator(cert_file, key_file, int(cluster.url.rsplit(":", 1)[1]))
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(terminator.port))
        try:
            run = CliRunner().invoke(app, ["accept", "--env-file", str(env_file), "--mark-nodes",
                                           "--reports", str(tmp_path / "reports")])
        finally:
            terminator.close()
        assert run.exit_code == 0, run.output
        nodes = {o["metadata"]["name"]: o for o in cluster.objects() if o.get("kind") == "Node"}
    assert [c["reason"] for c in nodes["gpu-1"]["status"]["conditions"] if c["type"] == CONDITION] == \
        ["NoderowsFailed"]
    # every request went through TLS with the ServiceAccount's token (kubernetes 36's loaders alone send none:
    # kubernetes-client/python#2585, worked around in client_from_kubeconfig)
    requests = [h for h in terminator.headers_seen if h.split(b" ", 1)[0] in (b"GET", b"PATCH", b"POST")]
    missing = [h.split(b"\r\n", 1)[0] for h in requests if f"bearer {TOKEN}".encode() not in h.lower()]
    assert requests and not missing, missing
    assert json.loads((next((tmp_path / "reports").glob("*/*/report.json"))).read_text())["remediation"]["marks"]
