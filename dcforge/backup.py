"""Backup stores for checkpoints: a second directory (another volume or storage class) or an S3-compatible
object store (boto3). A checkpoint is a folder of files; a store keeps it under a key (`<prefix>/<step dir>/`) and
gives it back file by file. Integrity is judged outside the store, by the sha256 of every file and, after the
restore, by every tensor's checksum recorded at save time.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dcforge.report.provenance import file_sha256


class BackupStore(Protocol):
    description: str

    def put(self, source: Path, key: str) -> int:
        """Copy every file under `source` to `key`; returns the bytes copied."""
        ...

    def get(self, key: str, destination: Path) -> int:
        """Copy every file stored under `key` into `destination` (created); returns the bytes copied."""
        ...

    def delete(self, key: str) -> None:
        ...


def checkpoint_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def file_digests(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file of a checkpoint folder."""
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in checkpoint_files(folder)}


def _copy_durably(source: Path, destination: Path) -> int:
    destination.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as reader, destination.open("wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
        writer.flush()
        os.fsync(writer.fileno())  # a backup that is still in the page cache is not a backup yet
    return destination.stat().st_size


class DirectoryStore:
    """A second directory: another mounted volume or storage class (another PVC on Kubernetes)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.description = f"directory {self.root}"

    def put(self, source: Path, key: str) -> int:
        return sum(_copy_durably(path, self.root / key / path.relative_to(source))
                   for path in checkpoint_files(source))

    def get(self, key: str, destination: Path) -> int:
        stored = self.root / key
        if not stored.is_dir():
            raise FileNotFoundError(f"{self.description}: nothing stored under {key}")
        return sum(_copy_durably(path, destination / path.relative_to(stored)) for path in checkpoint_files(stored))

    def delete(self, key: str) -> None:
        shutil.rmtree(self.root / key, ignore_errors=True)


@dataclass(frozen=True)
class S3Location:
    endpoint_url: str | None
    bucket: str
    prefix: str
    region: str


class S3Store:
    """An S3-compatible bucket (AWS S3, Ceph RGW, MinIO, ...). Credentials come from boto3's usual chain
    (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile, instance role): never from the environment file."""

    def __init__(self, location: S3Location):
        import boto3

        self.location = location
        self.client = boto3.client("s3", endpoint_url=location.endpoint_url, region_name=location.region)
        where = location.endpoint_url or "AWS"
        self.description = f"s3://{location.bucket}/{location.prefix} at {where}"

    def _object_key(self, key: str, relative: str = "") -> str:
        return "/".join(part.strip("/") for part in (self.location.prefix, key, relative) if part.strip("/"))

    def put(self, source: Path, key: str) -> int:
        total = 0
        for path in checkpoint_files(source):
            self.client.upload_file(str(path), self.location.bucket,
                                    self._object_key(key, path.relative_to(source).as_posix()))
            total += path.stat().st_size
        return total

    def _keys(self, key: str) -> list[str]:
        prefix = self._object_key(key) + "/"
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def get(self, key: str, destination: Path) -> int:
        prefix = self._object_key(key) + "/"
        keys = self._keys(key)
        if not keys:
            raise FileNotFoundError(f"{self.description}: nothing stored under {key}")
        total = 0
        for object_key in keys:
            target = destination / object_key[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.location.bucket, object_key, str(target))
            total += target.stat().st_size
        return total

    def delete(self, key: str) -> None:
        for object_key in self._keys(key):
            self.client.delete_object(Bucket=self.location.bucket, Key=object_key)
