"""Real targets for the Ansible tests: a debootstrap'd Debian 12 chroot and a signed local package mirror.

- The base rootfs is built once with debootstrap from the Debian mirror this machine's apt uses and cached under
  `.dcforge-cache/ansible/` (gitignored); each test module gets its own copy, so converges start clean.
- NVIDIA's repositories are unreachable here, so the tests exercise the air-gapped path for real: a local mirror
  with NVIDIA's flat layout, signed with a throw-away GPG key, served over HTTP on 127.0.0.1. Its packages are
  empty (metadata only) but carry NVIDIA's names and exact version strings, plus newer decoys, so apt's resolver
  proves the roles pin exactly what the environment declares.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gzip
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import yaml

from dcforge.paths import REPO_ROOT

CACHE_DIR = Path(os.environ.get("DCFORGE_CACHE_DIR", REPO_ROOT / ".dcforge-cache")) / "ansible"
SUITE = "bookworm"
# python3 + python3-apt: Ansible's apt modules; pciutils, kmod, procps: what preflight and tuning call.
ROOTFS_PACKAGES = ["python3", "python3-apt", "pciutils", "kmod", "procps", "ca-certificates"]
FALLBACK_MIRROR = "http://deb.debian.org/debian"


def skip_unless_chroot_targets_possible() -> None:
    """Chroot targets need root, debootstrap, gpg and dpkg-deb (`make system-deps` installs the tools)."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("chroot targets need root")
    missing = [tool for tool in ("debootstrap", "gpg", "dpkg-deb")
               if not (shutil.which(tool) or Path("/usr/sbin", tool).exists())]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: run `make system-deps` as root")


def host_debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), `$DCFORGE_DEBIAN_MIRROR` first."""
    if override := os.environ.get("DCFORGE_DEBIAN_MIRROR"):
        return override.rstrip("/")
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    sources += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            if uris and re.search(rf"^Suites:.*\b{SUITE}\b", stanza, re.M) and "security" not in uris.group(1):
                return uris.group(1).rstrip("/")
        for line in text.splitlines():
            match = re.match(rf"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+{SUITE}\s", line)
            if match and "security" not in match.group(1):
                return match.group(1).rstrip("/")
    return FALLBACK_MIRROR


def base_rootfs() -> Path:
    """The cached Debian 12 rootfs, built with debootstrap on first use (~45 s). Safe against parallel builders."""
    mirror = host_debian_mirror()
    key = hashlib.sha256(f"{SUITE} {mirror} {' '.join(ROOTFS_PACKAGES)}".encode()).hexdigest()[:12]
    target = CACHE_DIR / f"rootfs-{SUITE}-{key}"
    if (target / ".complete").exists():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        building = CACHE_DIR / f"building-{key}-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        subprocess.run([debootstrap, "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}", SUITE,
                        str(building), mirror], check=True, timeout=600, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
        # Downloaded .debs are not part of a clean base image; the package lists stay (apt works offline).
        for deb in (building / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        (building / ".complete").write_text(mirror + "\n")
        shutil.rmtree(target, ignore_errors=True)
        building.rename(target)
    return target


def fresh_rootfs(destination: Path) -> Path:
    """A private copy of the cached rootfs (device nodes and ownership kept)."""
    subprocess.run(["cp", "-a", str(base_rootfs()), str(destination)], check=True, timeout=300)
    return destination


# ---------------------------------------------------------------------------------------------------------------
# The local NVIDIA mirror.

def _stub_deb(work: Path, name: str, version: str, output: Path) -> None:
    """An empty .deb carrying only its name and version (what apt resolves and dpkg records)."""
    root = work / f"{name}_{version.replace(':', '%3a')}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: dcforge tests <tests@dcforge>\n"
        f"Description: metadata-only stand-in for {name} {version}\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(output)],
                   check=True, timeout=60, stdout=subprocess.DEVNULL)


def _package_index(repo: Path) -> str:
    stanzas = []
    for deb in sorted(repo.glob("*.deb")):
        control = subprocess.run(["dpkg-deb", "--field", str(deb)], check=True, timeout=60, capture_output=True,
                                 text=True).stdout.strip()
        data = deb.read_bytes()
        stanzas.append(f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                       f"MD5sum: {hashlib.md5(data).hexdigest()}\nSHA256: {hashlib.sha256(data).hexdigest()}\n")
    return "\n".join(stanzas)


def _sign_flat_repository(repo: Path, gnupg_home: Path) -> None:
    index = _package_index(repo).encode()
    (repo / "Packages").write_bytes(index)
    (repo / "Packages.gz").write_bytes(gzip.compress(index, mtime=0))
    lines = ["Origin: dcforge-test-mirror", "Label: dcforge-test-mirror", "Suite: ./", "Codename: ./",
             "Date: Mon, 23 Nov 2026 00:00:00 UTC", "Architectures: all amd64 arm64", "SHA256:"]
    for name in ("Packages", "Packages.gz"):
        data = (repo / name).read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
    (repo / "Release").write_text("\n".join(lines) + "\n")
    subprocess.run(["gpg", "--homedir", str(gnupg_home), "--batch", "--yes", "--clearsign", "--output",
                    str(repo / "InRelease"), str(repo / "Release")], check=True, timeout=60, capture_output=True)


def build_test_mirror(root: Path, packages: dict[str, list[tuple[str, str]]]) -> Path:
    """Signed flat repositories under `root/<repo>/` from {repo: [(name, version), ...]}; the armored public
    key is written into each repository as `key.asc` (what `*_key_url` variables point at)."""
    gnupg_home = root / ".gnupg"
    gnupg_home.mkdir(parents=True, mode=0o700)
    subprocess.run(["gpg", "--homedir", str(gnupg_home), "--batch", "--passphrase", "", "--quick-gen-key",
                    "dcforge test mirror <mirror@dcforge.test>", "ed25519", "sign", "never"],
                   check=True, timeout=60, capture_output=True)
    public_key = subprocess.run(["gpg", "--homedir", str(gnupg_home), "--armor", "--export"], check=True,
                                timeout=60, capture_output=True).stdout
    for repo_name, repo_packages in packages.items():
        repo = root / repo_name
        repo.mkdir(parents=True)
        for name, version in repo_packages:
            _stub_deb(root / ".work", name, version, repo / f"{name}_{version.replace(':', '%3a')}_all.deb")
        _sign_flat_repository(repo, gnupg_home)
        (repo / "key.asc").write_bytes(public_key)
    shutil.rmtree(root / ".work", ignore_errors=True)
    # gpg-agent was started by --quick-gen-key; stop it so no process outlives the tests.
    subprocess.run(["gpgconf", "--homedir", str(gnupg_home), "--kill", "all"], timeout=30, check=False)
    return root


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve a directory over HTTP on 127.0.0.1 (a thread of the test process); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def write_inventory(path: Path, hosts: dict[str, dict], group_vars: dict | None = None) -> Path:
    """A YAML inventory with every host in `gpu_nodes`."""
    document = {"all": {"children": {"gpu_nodes": {"hosts": hosts, "vars": group_vars or {}}}}}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def chroot_host(rootfs: Path) -> dict:
    """Connection variables of a chroot host (no sudo inside: the chroot connection already runs as root)."""
    return {"ansible_connection": "community.general.chroot", "ansible_host": str(rootfs),
            "ansible_python_interpreter": "/usr/bin/python3", "ansible_become": False}
