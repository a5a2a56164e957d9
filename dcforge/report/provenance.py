"""Provenance of a report: sha256 of every artefact, of the environment file and of the code, and an optional
Ed25519 signature over the report.

What is hashed (the `provenance` block of report.json):

- `artefacts`: every regular file under `<report dir>/artefacts/`, by its path relative to the report directory
  (logs, request logs, findings, synthesized manifests, tracebacks, ...). junit.xml and report.html are not
  hashed: they are rendered from report.json (`dcforge report DIR` rewrites them).
- `env_file`: the environment file the run read, at the path recorded in `metadata.env_file`.
- `code`: every file of the `dcforge`, `workloads` and `loadtests` packages as this Python imports them (the
  checkout for an editable install, site-packages otherwise), `__pycache__` and `*.pyc` excepted. Each file's
  sha256 is listed by `<package>/<relative path>`, and `tree_sha256` is the sha256 of the `sha256sum`-style
  listing (`<sha256>  <path>\\n`, sorted by path), so one value names the code and the list names what changed.

The signature (`report.json.sig`, written by `dcforge accept --sign-key KEY`) is the raw 64-byte Ed25519
signature, base64-encoded, over the canonical bytes of report.json: the parsed document serialised as JSON with
sorted keys, `(",", ":")` separators and UTF-8 (`canonical_bytes`), so re-indenting the file does not break it
but any change of a value does.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcforge.errors import DcforgeError
from dcforge.paths import REPO_ROOT

ALGORITHM = "sha256"
CODE_PACKAGES = ("dcforge", "workloads", "loadtests")
SIGNATURE_FILE = "report.json.sig"
ARTEFACTS_DIR = "artefacts"
_CHUNK = 1 << 20

# (path, size, mtime_ns) -> sha256: the report is rewritten after every check; files already hashed and not
# touched since are not read again.
_digest_cache: dict[tuple[str, int, int], str] = {}


@functools.lru_cache(maxsize=None)
def git_commit(repo: Path = REPO_ROOT) -> str:
    """The checkout's commit (`-dirty` with uncommitted changes); asked once per process, since the report that
    records it is rewritten after every check."""
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{commit}{'-dirty' if dirty else ''}" if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digest_cache:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
        _digest_cache[key] = digest.hexdigest()
    return _digest_cache[key]


def tree_sha256(files: dict[str, str]) -> str:
    """One digest over a {path: sha256} listing, in `sha256sum` format sorted by path."""
    listing = "".join(f"{digest}  {path}\n" for path, digest in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def _files_under(root: Path, prefix: str) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if "__pycache__" in relative.parts or path.suffix == ".pyc" or not path.is_file() or path.is_symlink():
            continue
        found[f"{prefix}{relative.as_posix()}"] = file_sha256(path)
    return found


def artefact_digests(report_dir: Path) -> dict[str, str]:
    """Every file under the report's artefacts folder: path relative to the report directory -> sha256."""
    root = Path(report_dir) / ARTEFACTS_DIR
    return _files_under(root, f"{ARTEFACTS_DIR}/") if root.is_dir() else {}


def package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def code_digests() -> dict[str, str]:
    """`<package>/<path>` -> sha256 of every source and data file of the dcforge, workloads and loadtests
    packages as imported by this interpreter."""
    files: dict[str, str] = {}
    for package in CODE_PACKAGES:
        directory = package_dir(package)
        if directory is not None:
            files.update(_files_under(directory, f"{package}/"))
    return files


def provenance(report_dir: Path, env_file: Path) -> dict[str, Any]:
    """The `provenance` block of report.json."""
    code = code_digests()
    env_path = Path(env_file)
    return {
        "algorithm": ALGORITHM,
        "artefacts": artefact_digests(report_dir),
        "env_file": {"path": str(env_path), "sha256": file_sha256(env_path) if env_path.is_file() else None},
        "code": {"packages": list(CODE_PACKAGES), "tree_sha256": tree_sha256(code), "files": code},
    }


# --- signing ----------------------------------------------------------------------------------------------------

def canonical_bytes(report: dict[str, Any]) -> bytes:
    return json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def load_private_key(path: Path):
    """An Ed25519 private key in PEM (PKCS#8, unencrypted), e.g. `openssl genpkey -algorithm ed25519`.
    Errors name the file, never its contents."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key_file(path, "--sign-key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise DcforgeError(f"{path}: --sign-key: expected an unencrypted Ed25519 private key in PEM "
                           f"(openssl genpkey -algorithm ed25519)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise DcforgeError(f"{path}: --sign-key: expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_public_key(path: Path):
    """An Ed25519 public key in PEM (SubjectPublicKeyInfo), e.g. `openssl pkey -in key.pem -pubout`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read_key_file(path, "--public-key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise DcforgeError(f"{path}: --public-key: expected an Ed25519 public key in PEM "
                           f"(openssl pkey -in key.pem -pubout)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise DcforgeError(f"{path}: --public-key: expected an Ed25519 public key, got {type(key).__name__}")
    return key


def _read_key_file(path: Path, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DcforgeError(f"{path}: {option}: cannot read the key file ({error.strerror})") from None


def sign_report(report_dir: Path, private_key) -> Path:
    """Write `report.json.sig` beside report.json: base64 of the Ed25519 signature of its canonical bytes."""
    from dcforge.report.files import load_report, write_atomic

    report = load_report(report_dir)
    signature = private_key.sign(canonical_bytes(report))
    path = Path(report_dir) / SIGNATURE_FILE
    write_atomic(path, base64.b64encode(signature).decode("ascii") + "\n")
    return path


# --- verification -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """What `dcforge report verify` found: `problems` is one line per changed, missing or unexpected item."""

    report_dir: Path
    problems: list[str]
    checked: list[str]
    """What was recomputed and matched, for the summary line."""

    @property
    def ok(self) -> bool:
        return not self.problems


def _compare(kind: str, recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    lines = []
    for path in sorted(recorded.keys() | current.keys()):
        if path not in current:
            lines.append(f"{kind} missing: {path}")
        elif path not in recorded:
            lines.append(f"{kind} added (not in the report): {path}")
        elif recorded[path] != current[path]:
            lines.append(f"{kind} changed: {path} (sha256 {recorded[path][:12]}… recorded, {current[path][:12]}… now)")
    return lines


def verify_report(directory: Path, public_key_path: Path | None = None) -> Verdict:
    """Recompute every digest in the report's provenance block and, with a public key, check the signature.
    Bad input (no report.json, no provenance block, unreadable key) raises DcforgeError (exit 2)."""
    from dcforge.report.files import load_report

    directory = Path(directory)
    if not directory.is_dir():
        raise DcforgeError(f"{directory}: not a report directory (expected a folder holding report.json)")
    if not (directory / "report.json").is_file():
        raise DcforgeError(f"{directory}: no report.json in this folder (expected a dcforge report directory)")
    public_key = load_public_key(public_key_path) if public_key_path is not None else None
    report = load_report(directory)
    recorded = report.get("provenance")
    if not isinstance(recorded, dict) or not {"artefacts", "env_file", "code"} <= recorded.keys():
        raise DcforgeError(f"{directory / 'report.json'}: provenance: missing (the report was written by a dcforge "
                           f"without provenance; nothing to verify)")
    problems: list[str] = []
    checked: list[str] = []

    artefact_problems = _compare("artefact", recorded["artefacts"], artefact_digests(directory))
    problems += artefact_problems
    if not artefact_problems:
        checked.append(f"{len(recorded['artefacts'])} artefacts")

    env = recorded["env_file"]
    env_path = Path(env["path"])
    if not env_path.is_file():
        problems.append(f"env file missing: {env_path}")
    elif env["sha256"] != file_sha256(env_path):
        problems.append(f"env file changed: {env_path}")
    else:
        checked.append("env file")

    code_problems = _compare("code file", recorded["code"]["files"], code_digests())
    problems += code_problems
    if not code_problems:
        checked.append(f"code ({recorded['code']['tree_sha256'][:12]}…)")

    if public_key is not None:
        signature_path = directory / SIGNATURE_FILE
        if not signature_path.is_file():
            problems.append(f"signature missing: {signature_path}")
        else:
            signature_problems = _check_signature(public_key, report, signature_path)
            problems += signature_problems
            if not signature_problems:
                checked.append("signature")
    return Verdict(directory, problems, checked)


def _check_signature(public_key, report: dict[str, Any], signature_path: Path) -> list[str]:
    from cryptography.exceptions import InvalidSignature

    try:
        signature = base64.b64decode(signature_path.read_text(encoding="ascii").strip(), validate=True)
    except (ValueError, UnicodeDecodeError):
        return [f"signature unreadable: {signature_path} (expected one base64 line)"]
    try:
        public_key.verify(signature, canonical_bytes(report))
    except InvalidSignature:
        return [f"signature does not match: {signature_path} (report.json changed after signing, or another key)"]
    return []
