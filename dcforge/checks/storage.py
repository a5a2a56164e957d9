"""`storage`: fio measurements of every declared storage class, and a verify pass that catches corrupted data.

Per class (`dcforge:storage.classes`), in a scratch directory on that class's storage (locally: the directory in
`settings.storage.paths.<class>`, e.g. where the class is mounted; default a directory under the report dir):

- sequential write and read GB/s: 1 MiB blocks, direct I/O when the filesystem accepts O_DIRECT (probed; the
  report says which was used) with `sequentialIodepth` requests in flight (a checkpoint writer's write-back keeps
  several in flight too; depth 1 would measure the round-trip latency), GB/s = bytes moved / fio's job runtime
  (decimal GB);
- random 4 KiB read and write IOPS on the same file (libaio at `randomIodepth` with direct I/O, else psync);
- fsync p99 (ms): 4 KiB writes each followed by fsync (fio `fsync=1`), p99 of fio's `sync.lat_ns` percentiles;
- metadata ops/s: create, stat and delete of many empty files in one directory, timed by our own loop
  ((creates + stats + deletes) / total seconds), so it measures the filesystem rather than fio's file layout;
- aggregate sequential write GB/s with `clients` concurrent fio processes (numjobs, one file each, summed);
- data verification: a file written with fio's `verify=crc32c` headers is re-read by a verify-only pass; any block
  that differs fails the check.

Every fio job is bounded by `phaseSeconds` and every file size by the class's free space. Metric names are
`<class>.<figure>`, so SLO keys read `storage.<class>.<figure>` (e.g. `storage.checkpoints.seq_write_gbps`).
On the Kubernetes target the same measurement (`measure_class`) runs in a pod of the acceptance image on a claim of
each class (`python -m dcforge.checks.storage`, one pod per class, one after the other), and its figures come back
as a StorageClassResult record judged here exactly as a local measurement.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from dcforge.steps.fio import (FioError, FioJob, FioJobResult, FioNotFound, FioVerifyFailed, fio_executable,
                                fio_version, run_fio)
from dcforge.harness.check import CheckConfig, CheckContext, settings_error
from dcforge.harness.metrics import MetricSpec
from dcforge.harness.result import CheckResult, CheckSkipped, Plot, Series
from dcforge.placement.scope import single_node

MIB = 2**20
# Below this a class cannot hold the sequential file with any meaning (a few 1 MiB blocks per client).
MIN_SEQUENTIAL_MIB = 16
FSYNC_FILE_MIB = 16
# fio's start-up and file layout on top of a job's runtime bound, before we call it hung.
FIO_TIMEOUT_MARGIN_S = 60.0


class StorageError(Exception):
    """A class's storage cannot be measured (unwritable, full); the message names the path."""


class StorageCheckConfig(CheckConfig):
    classes: list[str] | None = None
    """Classes to measure (names from dcforge:storage.classes); default every declared class."""
    paths: dict[str, str] = Field(default_factory=dict)
    """Class name -> directory on that class's storage (a mounted volume); default a directory under the report."""
    file_size_mib: int = Field(default=256, ge=MIN_SEQUENTIAL_MIB)
    """Sequential file per class (also split across the clients of the aggregate); capped by free space."""
    max_free_fraction: float = Field(default=0.1, gt=0, le=0.9)
    """At most this fraction of the class's free space is written at any time."""
    phase_seconds: float = Field(default=2.0, gt=0, le=600)
    """Upper bound on each fio job's run time (a job also ends when its file is done)."""
    clients: int = Field(default=4, ge=1, le=1024)
    """Concurrent fio processes for the aggregate sequential write."""
    sequential_iodepth: int = Field(default=8, ge=1, le=1024)
    """Outstanding 1 MiB requests per client for sequential I/O (libaio with direct I/O; buffered runs at 1)."""
    random_iodepth: int = Field(default=16, ge=1, le=1024)
    """Outstanding 4 KiB requests for random I/O (libaio with direct I/O; buffered I/O runs at depth 1)."""
    metadata_files: int = Field(default=2000, ge=10)
    """Files created, stat'ed and deleted for the metadata rate (fewer when phaseSeconds runs out)."""
    verify_size_mib: int = Field(default=32, ge=1)
    """File written with checksummed blocks and read back by the verify pass."""
    direct_io: Literal["auto", "on", "off"] = "auto"
    """auto: direct I/O where the filesystem accepts O_DIRECT; on: require it; off: buffered (page cache)."""
    pvc_size_gi: int = Field(default=20, ge=1)
    """Size of each class's test PVC on the Kubernetes target."""

    moved_keys: ClassVar[dict[str, str]] = {
        "image": "dcforge:acceptance.image (the acceptance image holds fio; the pods run in it)",
    }

    def environment_problems(self, env) -> list[tuple[str, str]]:
        """(key, message) for classes and paths naming classes the environment does not declare."""
        declared = [cls.name for cls in env.storage.classes]
        problems = []
        for key, names in (("classes", self.classes or []), ("paths", list(self.paths))):
            problems += [(f"{key}.{name}" if key == "paths" else key,
                          f"unknown storage class {name!r}; declared: {', '.join(declared) or 'none'}")
                         for name in names if name not in declared]
        return problems

    @field_validator("paths")
    @classmethod
    def _absolute(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not os.path.isabs(path):
                raise ValueError(f"paths.{name}: expected an absolute directory, got {path!r}")
        return value


CLASS_PLACEHOLDER = "<class>"
"""Stands for a storage class's name in the declared metric names (`<class>.seq_write_gbps`); each run declares
the names with its classes filled in (`class_metrics`)."""


def _figure(name: str, unit: str, better: str, formula: str, meaning: str) -> MetricSpec:
    return MetricSpec(f"{CLASS_PLACEHOLDER}.{name}", unit, better, formula, meaning)  # type: ignore[arg-type]


FIGURES: tuple[MetricSpec, ...] = (
    _figure("seq_write_gbps", "GB/s", "higher", "bytes written / fio job runtime, 1 MiB blocks, one client",
            "sequential write bandwidth of one client (checkpoint saves, dataset staging)"),
    _figure("seq_read_gbps", "GB/s", "higher", "bytes read / fio job runtime, 1 MiB blocks, one client",
            "sequential read bandwidth of one client (checkpoint loads, data loaders)"),
    _figure("rand_read_iops", "IOPS", "higher", "4 KiB random reads / fio job runtime",
            "small random reads per second (shuffled samples, metadata-heavy formats)"),
    _figure("rand_write_iops", "IOPS", "higher", "4 KiB random writes / fio job runtime",
            "small random writes per second"),
    _figure("fsync_p99_ms", "ms", "lower", "p99 of fsync latency after each 4 KiB write (fio sync.lat_ns)",
            "how long a durable commit (checkpoint marker, journal) waits in the slow tail"),
    _figure("metadata_ops_per_s", "ops/s", "higher", "(creates + stats + deletes of empty files) / their seconds",
            "file-system metadata rate for many small files"),
    _figure("aggregate_seq_write_gbps", "GB/s", "higher",
            "sum over concurrent clients of bytes written / fio group runtime, 1 MiB blocks",
            "sequential write bandwidth with `clients` writers at once: a shared store must not collapse"),
    _figure("data_verified", "bool", "higher", "fio verify=crc32c: every block read back matches what was written",
            "integrity: 1 when the storage returned every written block intact"),
)


def figure_name(spec: MetricSpec) -> str:
    """`seq_write_gbps` for the `<class>.seq_write_gbps` declaration."""
    return spec.name.removeprefix(f"{CLASS_PLACEHOLDER}.")


def class_metrics(class_names: list[str]) -> tuple[MetricSpec, ...]:
    """The declarations of one run: every figure once per measured class."""
    return tuple(replace(spec, name=f"{name}.{figure_name(spec)}") for name in class_names for spec in FIGURES)


@dataclass
class MetadataRates:
    files: int
    create_per_s: float
    stat_per_s: float
    delete_per_s: float
    ops_per_s: float


@dataclass
class ClassMeasurement:
    """Everything measured on one class."""

    name: str
    directory: str
    direct_io: bool
    sequential_bytes: int
    figures: dict[str, float] = field(default_factory=dict)
    fsync_percentiles_ms: dict[str, float] = field(default_factory=dict)
    metadata: MetadataRates | None = None
    verify_failure: str | None = None


def supports_direct_io(directory: Path) -> bool:
    """Whether files in `directory` accept O_DIRECT: open and write one aligned 4 KiB block (tmpfs refuses)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = directory / f".direct-probe-{os.getpid()}"
    buffer = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT requires
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600)
        try:
            os.write(fd, buffer)
        finally:
            os.close(fd)
        return True
    except OSError as error:
        if error.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    finally:
        buffer.close()
        probe.unlink(missing_ok=True)


def prepare_directory(base: Path) -> Path:
    """A fresh scratch directory under `base` (created if needed), proven writable; StorageError otherwise."""
    try:
        base.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="dcforge-storage-", dir=base))
        (scratch / ".write-probe").write_bytes(b"ok")
        (scratch / ".write-probe").unlink()
    except OSError as error:
        raise StorageError(f"{base}: not writable: {error.strerror or error}") from None
    return scratch


def sequential_size(directory: Path, config: StorageCheckConfig, shown: Path | None = None) -> int:
    """Bytes of the sequential file: the setting, capped so that what one class holds at once (the sequential
    file, the aggregate clients' files and the verify file) stays within maxFreeFraction of the free space."""
    free = shutil.disk_usage(directory).free
    allowed = int(free * config.max_free_fraction) - config.verify_size_mib * MIB - FSYNC_FILE_MIB * MIB
    size = min(config.file_size_mib * MIB, allowed // 2)
    size -= size % MIB
    if size < MIN_SEQUENTIAL_MIB * MIB:
        raise StorageError(f"{shown or directory}: filesystem nearly full ({free / MIB:.0f} MiB free); the storage "
                           f"check needs {MIN_SEQUENTIAL_MIB * 2 + config.verify_size_mib + FSYNC_FILE_MIB} MiB within "
                           f"maxFreeFraction {config.max_free_fraction:g} of it")
    return size


def measure_metadata(directory: Path, files: int, seconds: float) -> MetadataRates:
    """Create (O_CREAT|O_EXCL), stat and delete up to `files` empty files; creation stops early after `seconds`."""
    target = directory / "metadata"
    target.mkdir()
    names = []
    started = time.perf_counter()
    deadline = started + seconds
    for index in range(files):
        path = str(target / f"f{index:07d}")
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        names.append(path)
        if time.perf_counter() > deadline:
            break
    created = time.perf_counter()
    for path in names:
        os.stat(path)
    stated = time.perf_counter()
    for path in names:
        os.unlink(path)
    deleted = time.perf_counter()
    target.rmdir()
    count = len(names)
    return MetadataRates(files=count, create_per_s=count / (created - started), stat_per_s=count / (stated - created),
                         delete_per_s=count / (deleted - stated), ops_per_s=3 * count / (deleted - started))


@dataclass(frozen=True)
class ClassPlan:
    """The fio jobs for one class, in run order; built once so the Kubernetes pods run the very same jobs."""

    seq_write: FioJob
    seq_read: FioJob
    rand_read: FioJob
    rand_write: FioJob
    fsync: FioJob
    aggregate: FioJob
    verify_write: FioJob
    verify_read: FioJob


def class_plan(directory: str, sequential_bytes: int, direct: bool, config: StorageCheckConfig) -> ClassPlan:
    seconds = config.phase_seconds
    size = f"{sequential_bytes // MIB}M"
    # Asynchronous submission needs direct I/O: buffered libaio completes synchronously, at depth 1.
    sequential_engine = {"ioengine": "libaio", "iodepth": config.sequential_iodepth} if direct else {}
    random_engine = {"ioengine": "libaio", "iodepth": config.random_iodepth} if direct else {}
    per_client = max(1, sequential_bytes // MIB // config.clients)
    verify = dict(filename="verify.dat", rw="write", bs="1M", size=f"{config.verify_size_mib}M", direct=direct,
                  verify="crc32c", end_fsync=True)
    return ClassPlan(
        seq_write=FioJob("seq-write", directory, "write", "1M", size, filename="sequential.dat", direct=direct,
                         end_fsync=True, runtime_s=seconds, **sequential_engine),
        seq_read=FioJob("seq-read", directory, "read", "1M", size, filename="sequential.dat", direct=direct,
                        runtime_s=seconds, **sequential_engine),
        rand_read=FioJob("rand-read", directory, "randread", "4k", size, filename="sequential.dat", direct=direct,
                         runtime_s=seconds, **random_engine),
        rand_write=FioJob("rand-write", directory, "randwrite", "4k", size, filename="sequential.dat",
                          direct=direct, end_fsync=True, runtime_s=seconds, **random_engine),
        fsync=FioJob("fsync", directory, "write", "4k", f"{FSYNC_FILE_MIB}M", filename="fsync.dat", fsync=1,
                     runtime_s=seconds),
        aggregate=FioJob("aggregate", directory, "write", "1M", f"{per_client}M", direct=direct,
                         numjobs=config.clients, end_fsync=True, runtime_s=seconds, **sequential_engine),
        verify_write=FioJob("verify", directory, **verify, do_verify=False),
        verify_read=FioJob("verify", directory, **verify, verify_only=True),
    )


def with_size(job: FioJob, nbytes: int) -> FioJob:
    return replace(job, size=f"{max(1, nbytes // MIB)}M")


def measure_class(name: str, base: Path, config: StorageCheckConfig, fio: str, budget_s: float,
                  log=print) -> ClassMeasurement:
    """Run every phase on one class; the scratch directory is removed whatever happens."""
    scratch = prepare_directory(base)
    try:
        direct = {"on": True, "off": False}.get(config.direct_io)
        probed = supports_direct_io(scratch)
        if direct and not probed:
            raise StorageError(f"{base}: the filesystem refuses O_DIRECT and directIo is 'on'")
        direct = probed if direct is None else direct
        size = sequential_size(scratch, config, shown=base)
        plan = class_plan(str(scratch), size, direct, config)
        measured = ClassMeasurement(name, str(base), direct, size)
        timeout = min(config.phase_seconds + FIO_TIMEOUT_MARGIN_S, max(budget_s, 1.0))

        def run(job: FioJob) -> FioJobResult:
            phase = f"{job.name} (verify-only pass)" if job.verify_only else f"{job.name} ({job.rw}"
            log(f"{name}: fio {phase}, bs {job.bs}, {job.size} x {job.numjobs} client(s))" if not job.verify_only
                else f"{name}: fio {phase}")
            try:
                return run_fio(job, timeout, fio)
            except FioVerifyFailed:
                raise
            except FioError as error:
                raise StorageError(str(error)) from None

        written = run(plan.seq_write)
        measured.figures["seq_write_gbps"] = written.write.gbps
        # A runtime-bounded write may stop short of the size: later jobs use what is there, so fio never lays
        # the rest of the file out (untimed writing) before it reads.
        on_disk = (scratch / "sequential.dat").stat().st_size
        measured.figures["seq_read_gbps"] = run(with_size(plan.seq_read, on_disk)).read.gbps
        measured.figures["rand_read_iops"] = run(with_size(plan.rand_read, on_disk)).read.iops
        measured.figures["rand_write_iops"] = run(with_size(plan.rand_write, on_disk)).write.iops
        (scratch / "sequential.dat").unlink()
        synced = run(plan.fsync)
        measured.fsync_percentiles_ms = {key: value / 1e6 for key, value in synced.sync_lat_percentiles_ns.items()}
        if synced.sync_p99_ms is None:
            raise StorageError(f"{base}: fio reported no fsync latencies (sync.lat_ns) for the fsync job")
        measured.figures["fsync_p99_ms"] = synced.sync_p99_ms
        (scratch / "fsync.dat").unlink()
        log(f"{name}: metadata, up to {config.metadata_files} files")
        measured.metadata = measure_metadata(scratch, config.metadata_files, config.phase_seconds)
        measured.figures["metadata_ops_per_s"] = measured.metadata.ops_per_s
        measured.figures["aggregate_seq_write_gbps"] = run(plan.aggregate).write.gbps
        for client_file in scratch.glob("aggregate.*"):
            client_file.unlink()
        run(plan.verify_write)
        try:
            run(plan.verify_read)
            measured.figures["data_verified"] = 1.0
        except FioVerifyFailed as failure:
            measured.figures["data_verified"] = 0.0
            measured.verify_failure = str(failure)
        return measured
    except OSError as error:  # ENOSPC, EACCES, ... from our own file operations
        raise StorageError(f"{error.filename or base}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def add_class_results(result: CheckResult, measured: ClassMeasurement) -> None:
    mode = "direct I/O" if measured.direct_io else "buffered I/O: the filesystem refuses O_DIRECT"
    for figure in map(figure_name, FIGURES):
        if figure in measured.figures:
            result.add_metric(f"{measured.name}.{figure}", measured.figures[figure], mode)
    if measured.verify_failure:
        result.fail(f"class {measured.name}: data read back differs from what was written ({measured.verify_failure})")
    figures = measured.figures
    result.plots.append(Plot(
        f"Storage class {measured.name}: sequential GB/s ({'direct' if measured.direct_io else 'buffered'} I/O)",
        "operation", "GB/s",
        [Series("GB/s", [0.0, 1.0, 2.0], [figures["seq_write_gbps"], figures["seq_read_gbps"],
                                          figures["aggregate_seq_write_gbps"]])],
        kind="bar", markers=[{"x": 0.0, "label": "write, 1 client"}, {"x": 1.0, "label": "read, 1 client"},
                             {"x": 2.0, "label": "write, all clients"}]))
    percentiles = sorted((float(key), value) for key, value in measured.fsync_percentiles_ms.items())
    result.plots.append(Plot(f"Storage class {measured.name}: fsync latency after 4 KiB writes", "percentile",
                             "ms", [Series("fsync", [p for p, _ in percentiles], [v for _, v in percentiles])]))


def measurement_record(measured: ClassMeasurement, fio_version_text: str):
    """A class's measurement as the typed record a pod hands back (workloads/records.py)."""
    from workloads.records import StorageClassResult

    return StorageClassResult(name=measured.name, directory=measured.directory, direct_io=measured.direct_io,
                              sequential_bytes=measured.sequential_bytes, figures=measured.figures,
                              fsync_percentiles_ms=measured.fsync_percentiles_ms,
                              metadata=vars(measured.metadata) if measured.metadata else None,
                              verify_failure=measured.verify_failure, fio=fio_version_text)


def measurement_of(record) -> ClassMeasurement:
    return ClassMeasurement(record.name, record.directory, record.direct_io, record.sequential_bytes,
                            dict(record.figures), dict(record.fsync_percentiles_ms),
                            MetadataRates(**record.metadata) if record.metadata else None, record.verify_failure)


def class_details(measured: ClassMeasurement, config: StorageCheckConfig) -> dict:
    return {"directory": measured.directory, "direct_io": measured.direct_io,
            "sequential_mib": measured.sequential_bytes // MIB, "clients": config.clients,
            "figures": measured.figures, "fsync_percentiles_ms": measured.fsync_percentiles_ms,
            "metadata": vars(measured.metadata) if measured.metadata else None,
            "verify_failure": measured.verify_failure}


class StorageCheck:
    name = "storage"
    description = ("fio per storage class: sequential and random I/O, fsync p99, metadata rate, several clients "
                   "at once, data verified.")
    Config = StorageCheckConfig
    metrics = FIGURES
    requires_declared_gpus = False  # measures storage, whether or not this node's GPUs are visible
    on_pool = True  # target kubernetes: a pod per class on a claim of it (`_kubernetes`)

    def run(self, ctx: CheckContext, config: StorageCheckConfig) -> CheckResult:
        spec = ctx.env.spec
        for key, message in config.environment_problems(spec):  # refused by validation; kept for direct callers
            raise settings_error(ctx, self.name, key, message)
        names = config.classes or [cls.name for cls in spec.storage.classes]
        if not names:
            raise CheckSkipped("no storage classes declared (dcforge:storage.classes)")
        return single_node(ctx, self, here=lambda: self.here(ctx, config, names),
                           pool=lambda: self._kubernetes(ctx, config, names))

    def here(self, ctx: CheckContext, config: StorageCheckConfig, names: list[str]) -> CheckResult:
        """fio on this machine, in each class's path (default: a scratch folder of the run)."""
        try:
            fio = fio_executable()
        except FioNotFound as missing:
            raise CheckSkipped(str(missing)) from None
        result = CheckResult(self.name, declared=class_metrics(names))
        scratch_root = ctx.artefact_dir(self.name) / "scratch"
        details: dict[str, dict] = {}
        result.details = {"fio": fio_version(fio), "classes": details}
        try:
            for name in names:
                base = Path(config.paths[name]) if name in config.paths else scratch_root / name
                measured = measure_class(name, base, config, fio, ctx.remaining_s(), ctx.log)
                add_class_results(result, measured)
                details[name] = class_details(measured, config)
        except StorageError as error:
            raise StorageError(f"class {name}: {error}") from None
        finally:
            shutil.rmtree(scratch_root, ignore_errors=True)
        return result

    def _kubernetes(self, ctx: CheckContext, config: StorageCheckConfig, names: list[str]) -> CheckResult:
        """One pod per class on a claim of it (pvcSizeGi), in the acceptance image, one class after the other."""
        from dcforge.placement.nodes import OpenExecutions, run_step
        from dcforge.placement.targets import kubernetes_executor, live_view
        from dcforge.steps.step import CLAIM_VOLUMES, Step
        from dcforge.executors.base import ExecutorError, literal
        from dcforge.harness.result import Status
        from workloads.records import STORAGE_CLASS_FILE, StorageClassResult, read_result

        if config.paths:
            raise settings_error(ctx, self.name, "paths", "target kubernetes measures a claim of each class in a "
                                 "pod (pvcSizeGi); directories on this machine mean nothing there: remove paths")
        executor = kubernetes_executor(ctx)
        result = CheckResult(self.name, declared=class_metrics(names))
        details: dict[str, dict] = {}
        result.details = {"executor": executor.name, "classes": details}
        settings = literal(config.model_dump_json(by_alias=True, exclude={"paths", "classes"}))  # one argument

        def judge(data: bytes) -> CheckResult:
            record = read_result(data.decode().splitlines(), StorageClassResult, "the storage pod's result")
            measured = measurement_of(record)
            add_class_results(result, measured)
            details[record.name] = {**class_details(measured, config), "fio": record.fio}
            return result

        for position, name in enumerate(names):
            budget_s = max(1.0, ctx.remaining_s() / (len(names) - position))
            step = Step(f"storage-{name}", (
                "{python}", "-m", "dcforge.checks.storage", "--class", name, "--directory",
                "{volume[checkpoints]}/storage", "--settings", settings, "--budget-s", f"{budget_s:.0f}",
                "--output", "{volume[results]}/" + STORAGE_CLASS_FILE), STORAGE_CLASS_FILE, judge,
                volumes=CLAIM_VOLUMES, claim_class=name, claim_size_gi=config.pvc_size_gi)
            ctx.log(f"{name}: fio in a pod on a {config.pvc_size_gi} Gi claim of the class")
            try:
                outcome, data = run_step(OpenExecutions(), executor, step, ctx.artefact_dir(self.name) / name,
                                         budget_s, live_view(ctx))
            except ExecutorError as error:
                result.status, result.reason = Status.ERROR, f"class {name}: {error}"
                return result
            if data is None:
                result.fail(f"class {name}: pod {outcome['host']} {outcome['state']}: {outcome['reason']}")
                if outcome["platform_failure"]:
                    result.status = Status.ERROR
            else:
                step.judge(data)
            details.setdefault(name, {}).update(pod=outcome["host"], kubernetes_node=outcome["kubernetes_node"],
                                                pods_started_s=outcome["pods_started_s"],
                                                cleanup_s=outcome["cleanup_s"])
        return result


def main(argv: list[str] | None = None) -> int:
    """One class measured where this runs (a pod on a claim of the class): the StorageClassResult line."""
    import argparse
    import sys

    from workloads.records import emit_result

    parser = argparse.ArgumentParser(prog="python -m dcforge.checks.storage")
    parser.add_argument("--class", dest="name", required=True)
    parser.add_argument("--directory", type=Path, required=True)
    parser.add_argument("--settings", required=True, help="the check's settings as JSON")
    parser.add_argument("--budget-s", type=float, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    config = StorageCheckConfig.model_validate_json(args.settings)
    try:
        fio = fio_executable()
        measured = measure_class(args.name, args.directory, config, fio, args.budget_s,
                                 lambda line: print(line, flush=True))
    except (FioNotFound, StorageError) as error:
        print(f"error: class {args.name}: {error}", file=sys.stderr)
        return 1
    emit_result(measurement_record(measured, fio_version(fio)), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
