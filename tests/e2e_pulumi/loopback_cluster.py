"""A throw-away Kubernetes control plane on loopback for the engine tests: etcd, kube-apiserver and (when built)
kube-controller-manager with the namespace, service-account and garbage-collector controllers, so namespaces are
finalized and `default` ServiceAccounts exist. No kubelet: objects are stored and served, no pod ever runs, which is
all the platform stack declares.

The binaries come from `$DCFORGE_KUBE_BIN` (default `$DCFORGE_CLUSTER_CACHE/bin`, ~/.cache/dcforge-cluster/bin,
where `make e2e-cluster` builds them) and etcd from PATH (Debian etcd-server). Everything listens on 127.0.0.1 only, lives in one temporary folder
and is stopped (its process group killed) when the context exits.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

KUBE_BIN = Path(os.environ.get("DCFORGE_KUBE_BIN")
                or Path(os.environ.get("DCFORGE_CLUSTER_CACHE") or "~/.cache/dcforge-cluster") / "bin").expanduser()
READY_TIMEOUT_S = 180  # a busy two-core machine starts kube-apiserver in 20-60 s


def missing_parts() -> list[str]:
    """What a loopback control plane needs and this machine lacks (empty: it can start)."""
    missing = [] if (KUBE_BIN / "kube-apiserver").is_file() else [f"kube-apiserver in {KUBE_BIN}"]
    return missing + ([] if shutil.which("etcd") else ["etcd on PATH (Debian etcd-server)"])


def has_controller_manager() -> bool:
    return (KUBE_BIN / "kube-controller-manager").is_file()


def admin_client(kubeconfig: Path):
    """A Kubernetes ApiClient from `kubeconfig`. The kubernetes package (36.0.0) loads a kubeconfig token under
    api_key['authorization'] while its request signing reads api_key['BearerToken'], so a token user would go out
    anonymous: the token is copied across."""
    from kubernetes import config

    api = config.new_client_from_config(str(kubeconfig))
    keys = api.configuration.api_key
    if "authorization" in keys and "BearerToken" not in keys:
        keys["BearerToken"] = keys["authorization"]
    return api


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def _service_account_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _wait_ready(url: str, token: str, ca: Path, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kube-apiserver exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            context = ssl.create_default_context(cafile=str(ca)) if ca.is_file() else None
            request = urllib.request.Request(f"{url}/readyz", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                if response.status == 200:
                    return
        except OSError as error:
            last = str(error)
        time.sleep(1)
    raise RuntimeError(f"kube-apiserver not ready after {READY_TIMEOUT_S} s ({last}): {log.read_text()[-2000:]}")


@contextmanager
def loopback_cluster(folder: Path) -> Iterator[Path]:
    """Start the control plane in `folder`; yields its admin kubeconfig."""
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    (folder / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
    _service_account_key(folder / "sa.key")
    etcd_port, etcd_peer, api_port = _free_port(), _free_port(), _free_port()
    url = f"https://127.0.0.1:{api_port}"
    certs = folder / "certs"
    with ExitStack() as stack:
        stack.enter_context(_process([
            "etcd", "--data-dir", str(folder / "etcd"), "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}"], folder / "etcd.log"))
        apiserver = stack.enter_context(_process([
            str(KUBE_BIN / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--cert-dir={certs}", f"--token-auth-file={folder / 'tokens.csv'}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={folder / 'sa.key'}",
            f"--service-account-signing-key-file={folder / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/12", "--profiling=false"], folder / "kube-apiserver.log"))
        ca = certs / "apiserver.crt"
        _wait_ready(url, token, ca, apiserver, folder / "kube-apiserver.log")
        kubeconfig = folder / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: loopback\n  cluster: {{server: '{url}', certificate-authority: '{ca}'}}\n"
            f"users:\n- name: admin\n  user: {{token: '{token}'}}\n"
            "contexts:\n- name: loopback\n  context: {cluster: loopback, user: admin}\n"
            "current-context: loopback\n")
        kubeconfig.chmod(0o600)
        if has_controller_manager():
            stack.enter_context(_process([
                str(KUBE_BIN / "kube-controller-manager"), f"--kubeconfig={kubeconfig}",
                "--controllers=namespace,serviceaccount,garbagecollector", "--leader-elect=false",
                "--bind-address=127.0.0.1", f"--secure-port={_free_port()}"], folder / "kube-controller-manager.log"))
        yield kubeconfig
