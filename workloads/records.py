"""Every record a workload writes and a check reads, and the names both sides share.

A workload (under torchrun, gunicorn or Locust, on this machine or later in a pod) and the check that judges it
meet only here: the writer builds one of these dataclasses and calls `to_json()`; the reader gets the same type
back from `read_records(lines)` / `read_result(lines, Type)`, where `lines` is any iterable of text lines -- an
open file, a list, or a pod's log stream. Every line is one JSON object whose first key `"record"` names its type
(the discriminator), so a reader never guesses a record's kind from which keys it has, and a record line is found
even behind a prefix that a log collector adds (timestamps, `[rank0]:`).

Each workload ends with its *result line*: one record of its result type, printed on stdout (so it is in the
pod log) and written to the file given with `--output` (the same single line, so the file is valid JSON).

Standard library only: workloads, the load generator and the checks all import this module, and a workload image
has nothing of dcforge but its own directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, TypeVar

# --- Names both sides use -----------------------------------------------------------------------------------------

RECORD_KEY = "record"
"""The discriminator: the first key of every line, naming the record type."""

HOLD_LINE = "train.py: holding after step"
"""What rank 0 prints (with the step) when the training waits to be killed from outside (`hold_at_step`)."""
TRAIN_METRICS_FILE = "metrics.jsonl"
"""`train`: per-step and event records of workloads/train.py (rank 0 appends; restarts add to it)."""
ALLREDUCE_RESULT_FILE = "sweep.json"
"""`allreduce`: the AllreduceResult line of workloads/allreduce.py."""
CHECKPOINT_RESULT_FILE = "checkpoint.json"
"""`checkpoint`: the CheckpointResult line of workloads/train_checkpoint_bench.py."""
LOAD_POD_RESULT_FILE = "load.json"
"""`inference` on Kubernetes: the LoadPodResult line of `python -m dcforge.steps.serving.load_pod`."""
LOAD_POD_REQUESTS_FILE = "requests.jsonl"
"""`inference` on Kubernetes: every RequestRecord the load pod's Locust processes logged, merged."""
STORAGE_CLASS_FILE = "storage.json"
"""`storage` on Kubernetes: the StorageClassResult line of `python -m dcforge.checks.storage` in a pod."""
GPU_HEALTH_FILE = "gpu_health.json"
"""`gpu_health` on Kubernetes: the GpuHealthResult line of `python -m dcforge.checks.gpu_health` on a node."""
SYSTEM_FACTS_FILE = "system.json"
"""`node_level`: the SystemFacts line of `python -m dcforge.steps.system` run on a node."""
READY_FILE_PREFIX = "ready-"
"""A serving replica writes `<state dir>/ready-<pid>` (a ReplicaReady line) once its model is loaded."""
REQUEST_LOG_TEMPLATE = "requests-{pid}.jsonl"
"""The per-request log of one Locust process; `{pid}` is replaced by the writer."""

REPLICA_HEADER = "x-dcforge-replica"
REQUEST_ID_HEADER = "x-request-id"
"""Sent with every request: its RequestRecord.request_id (vLLM and most servers take it as the request's id), so a
server-side count can be matched to the merged request log."""
"""Response header naming the server process (pid) that answered; the failover check counts on it."""


class LoadEnv:
    """Environment variables that configure loadtests/locustfile.py (each is also a `--llm-...` option).
    The server's own variables (API key, key file) are in workloads/serving/settings.py."""

    MODEL = "LLM_MODEL"
    ENDPOINT = "LLM_ENDPOINT"
    API_KEY_FILE = "LLM_API_KEY_FILE"
    PROMPT_TOKENS = "LLM_PROMPT_TOKENS"
    PROMPT_TOKENS_SPREAD = "LLM_PROMPT_TOKENS_SPREAD"
    MAX_TOKENS = "LLM_MAX_TOKENS"
    TEMPERATURE = "LLM_TEMPERATURE"
    NO_STREAM = "LLM_NO_STREAM"
    ARRIVAL = "LLM_ARRIVAL"
    RATE = "LLM_RATE"
    BURSTINESS = "LLM_BURSTINESS"
    """Gamma shape of Poisson-mode gaps (loadtests/arrivals.py); 1 is a Poisson process."""
    MAX_INFLIGHT = "LLM_MAX_INFLIGHT"
    TIMEOUT = "LLM_TIMEOUT"
    REQUEST_LOG = "LLM_REQUEST_LOG"
    THINK_TIME = "LLM_THINK_TIME"
    THINK_DISTRIBUTION = "LLM_THINK_DISTRIBUTION"
    START_JITTER = "LLM_START_JITTER"
    WINDOW_FILE = "LLM_WINDOW_FILE"
    """The per-process measurement-window file (loadtests/pacing.py), `{pid}` replaced."""
    MAX_TOKENS_SPREAD = "LLM_MAX_TOKENS_SPREAD"
    PROMPT_FILE = "LLM_PROMPT_FILE"
    SHARED_PREFIXES = "LLM_SHARED_PREFIXES"
    SHARED_PREFIX_TOKENS = "LLM_SHARED_PREFIX_TOKENS"
    WARMUP_PER_REPLICA = "LLM_WARMUP_PER_REPLICA"
    WARMUP_REPLICAS = "LLM_WARMUP_REPLICAS"
    TURNS = "LLM_TURNS"
    """Turns per conversation (multi-turn chat, loadtests/conversation.py); 1: single-turn requests."""
    CONVERSATION_TOKENS = "LLM_CONVERSATION_TOKENS"
    """Most prompt + answer tokens one turn may need; a conversation that would pass it starts anew (0: no limit)."""
    DURATION = "LLM_DURATION"
    """Seconds measured after the warm-up; the process ends the run then (Locust's -t stays the hard limit)."""


LOAD_API_KEY_ENV = "OPENAI_API_KEY"
"""The load generator's API key when no LoadEnv.API_KEY_FILE is given (the variable OpenAI clients read)."""


@dataclass(frozen=True)
class LoadDefaults:
    """Defaults of the LLM load, read by the locustfile's options and by the inference checks' settings alike."""

    endpoint: str = "chat"
    prompt_tokens: int = 64
    """Mean prompt length in tokens."""
    prompt_tokens_spread: float = 0.25
    """Prompt length is uniform in prompt_tokens * (1 +/- spread)."""
    max_tokens: int = 32
    arrival: str = "closed"
    rate: float = 10.0
    """Open-loop arrivals per second, all users together (the inference checks' long-standing default)."""
    request_timeout_s: float = 30.0
    """A request slower than this counts as failed (the inference checks' long-standing default)."""
    warmup_per_replica: int = 2
    """Warm-up requests per replica before measuring (loadtests/warmup.py)."""


LOAD_DEFAULTS = LoadDefaults()


# --- The record machinery -----------------------------------------------------------------------------------------

class RecordError(ValueError):
    """A line that claims to be a record but is not a valid one (unknown type, missing or unknown fields)."""


_RECORD_TYPES: dict[str, type["Record"]] = {}


@dataclass
class Record:
    """Base of every record; a subclass sets `kind`, its discriminator value."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            if cls.kind in _RECORD_TYPES:
                raise TypeError(f"record kind {cls.kind!r} defined twice")
            _RECORD_TYPES[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        return {RECORD_KEY: self.kind, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return _compact_json(self.to_dict())

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        kind = data.get(RECORD_KEY)
        if kind != cls.kind:
            raise RecordError(f"expected a {cls.kind!r} record, got {kind!r}")
        values = {key: value for key, value in data.items() if key != RECORD_KEY}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise RecordError(f"{kind} record: unknown fields {', '.join(unknown)}")
        try:
            return cls(**cls._decode_fields(values))
        except TypeError as error:  # a missing required field
            raise RecordError(f"{kind} record: {error}") from None

    @classmethod
    def _decode_fields(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Turn nested JSON back into the field types (only records with nested dataclasses override this)."""
        return values

    @classmethod
    def from_json(cls: type[R], line: str) -> R:
        return cls.from_dict(json.loads(line))


R = TypeVar("R", bound=Record)

_compact_json = json.JSONEncoder(separators=(",", ":")).encode
"""One encoder for every line: `json.dumps(..., separators=...)` builds a new encoder per call."""

_RECORD_START = '{"' + RECORD_KEY + '":'


def parse_record(line: str) -> Record | None:
    """The record on this line, or None for a line that holds none (log noise, a blank line, a torn last line of a
    killed writer). Raises RecordError for a well-formed line of an unknown type or with wrong fields."""
    start = line.find(_RECORD_START)
    if start < 0:
        return None
    try:
        data = json.loads(line[start:])
    except ValueError:
        return None  # torn: the writer died mid-line
    kind = data.get(RECORD_KEY)
    record_type = _RECORD_TYPES.get(kind)
    if record_type is None:
        raise RecordError(f"unknown record type {kind!r}; known: {', '.join(sorted(_RECORD_TYPES))}")
    return record_type.from_dict(data)


def read_records(lines: Iterable[str], *types: type[R]) -> list[R]:
    """Every record in `lines` (of the given types only, when given), in order."""
    records = []
    for line in lines:
        record = parse_record(line)
        if record is not None and (not types or isinstance(record, types)):
            records.append(record)
    return records  # type: ignore[return-value]


def read_records_file(path: str | os.PathLike[str], *types: type[R]) -> list[R]:
    with open(path) as handle:
        return read_records(handle, *types)


def read_result(lines: Iterable[str], result_type: type[R], source: str = "the output") -> R:
    """The last `result_type` line in `lines` (a result file or a workload's log). RecordError when there is none."""
    found = read_records(lines, result_type)
    if not found:
        raise RecordError(f"no {result_type.kind!r} result line in {source}")
    return found[-1]


def read_result_file(path: str | os.PathLike[str], result_type: type[R]) -> R:
    with open(path) as handle:
        return read_result(handle, result_type, source=str(path))


def emit_result(record: Record, output: str | os.PathLike[str] | None = None) -> str:
    """A workload's final result: one line on stdout (the pod log) and, when given, the same line in `output`."""
    line = record.to_json()
    print(line, flush=True)
    if output:
        Path(output).write_text(line + "\n")
    return line


class JsonlAppender:
    """Appends records to a JSONL file, one short `open(..., "a")` write per line: whole lines, even when several
    processes (a dying rank and rank 0) append to the same file."""

    def __init__(self, path: str | os.PathLike[str] | None):
        self.path = path

    def write(self, record: Record) -> None:
        if self.path:
            with open(self.path, "a") as handle:
                handle.write(record.to_json() + "\n")


# --- Training: workloads/train.py -> dcforge/checks/train.py, train_failover.py ----------------------------------

def _now() -> float:
    return time.time()


@dataclass
class TrainStart(Record):
    """A worker group (attempt) started, and whether it resumed from a checkpoint."""

    kind: ClassVar[str] = "train.start"
    attempt: int
    """torchrun's restart count: 0 for the first worker group."""
    resumed_from_step: int | None
    """The checkpoint step this attempt loaded; None when it started from scratch."""
    world_size: int
    device: str
    preset: str
    time: float = field(default_factory=_now)


@dataclass
class TrainStep(Record):
    """One optimizer step (rank 0's view; the loss is the mean over ranks)."""

    kind: ClassVar[str] = "train.step"
    step: int
    attempt: int
    loss: float
    step_time_s: float
    tokens_per_s: float
    """Tokens per second per device in this step."""
    tokens_per_s_total: float
    mfu: float | None
    """None when no peak FLOP/s is known for the device."""
    lr: float
    time: float = field(default_factory=_now)


@dataclass
class TrainCheckpointSaved(Record):
    kind: ClassVar[str] = "train.checkpoint"
    step: int
    bytes: int
    save_s: float
    time: float = field(default_factory=_now)


@dataclass
class TrainCheckpointCorrupt(Record):
    """A checkpoint failed verification on resume; the next older one is tried."""

    kind: ClassVar[str] = "train.checkpoint_corrupt"
    step: int
    error: str
    time: float = field(default_factory=_now)


@dataclass
class TrainFault(Record):
    """Fault injection: written by the rank that is about to SIGKILL itself (train_failover), or by the check that
    isolated a whole node (train_failover_multinode)."""

    kind: ClassVar[str] = "train.fault"
    step: int
    """The step in progress when the fault hit."""
    rank: int | None
    """The rank that killed itself; None when a whole node was lost (its ranks are whatever the rendezvous gave)."""
    time: float = field(default_factory=_now)
    node: str | None = None
    """The host that was isolated (train_failover_multinode)."""


@dataclass
class TrainFinal(Record):
    """The training run reached its last step: the result line of workloads/train.py."""

    kind: ClassVar[str] = "train.final"
    step: int
    attempt: int
    params_sha256: str | None
    """SHA-256 of every final parameter (DDP only: FSDP ranks hold shards)."""
    time: float = field(default_factory=_now)


TRAIN_RECORDS = (TrainStart, TrainStep, TrainCheckpointSaved, TrainCheckpointCorrupt, TrainFault, TrainFinal)


# --- All-reduce: workloads/allreduce.py -> dcforge/checks/allreduce.py -------------------------------------------

@dataclass
class AllreduceRow:
    """One message size of the sweep."""

    bytes: int
    elements: int
    time_s: float
    """Mean time of one all-reduce on the slowest rank."""
    algbw_gbps: float
    busbw_gbps: float
    correct: bool


@dataclass
class AllreduceResult(Record):
    kind: ClassVar[str] = "allreduce.result"
    environment: dict[str, Any]
    """backend, world_size, device, torch, nccl_env, gloo_env (+ nccl_version, gpu on CUDA)."""
    dtype: str
    warmup: int
    iterations: int
    formulas: list[str]
    results: list[AllreduceRow]
    """Smallest size first."""

    @classmethod
    def _decode_fields(cls, values: dict[str, Any]) -> dict[str, Any]:
        return {**values, "results": [row if isinstance(row, AllreduceRow) else AllreduceRow(**row)
                                      for row in values.get("results", [])]}


# --- Checkpoint: workloads/train_checkpoint_bench.py -> dcforge/checks/checkpoint.py -----------------------------

@dataclass
class CheckpointResult(Record):
    kind: ClassVar[str] = "checkpoint.result"
    preset: str
    with_optimizer: bool
    world_size: int
    bytes: int
    """Bytes in the checkpoint's data files, all ranks."""
    tensor_bytes_per_replica: int
    tensors: int
    rounds: int
    save_s: float
    load_s: float
    raw_write_s: float
    verify_s: float
    save_times_s: list[float]
    raw_write_times_s: list[float]
    save_gbps: float
    load_gbps: float
    raw_write_gbps: float
    save_ratio_to_raw: float
    checksum_match: bool
    corruption_detected: bool | None
    """None when the corruption test was not run."""
    directory: str


# --- System facts: `python -m dcforge.steps.system` on a node -> dcforge/checks/node_level.py ------------------

@dataclass
class SystemFacts(Record):
    """What the `system` check reports about the machine it runs on, gathered on a node of the pool."""

    kind: ClassVar[str] = "system.facts"
    hostname: str
    cpu_count: int
    memory_gi: float
    """MemTotal of /proc/meminfo in GiB."""
    cpu_model: str
    kernel: str
    os: str
    python: str
    versions: dict[str, str]
    """torch, torch_cuda (+ nccl where CUDA is available)."""
    gpus: list[dict[str, Any]]
    """One {name, memory_mib, driver} per visible GPU."""


# --- Storage: `python -m dcforge.checks.storage` in a pod -> dcforge/checks/storage.py ----------------------------

@dataclass
class StorageClassResult(Record):
    """Everything the storage check measured on one class, in a pod on a claim of that class (target kubernetes):
    the fields of the check's ClassMeasurement."""

    kind: ClassVar[str] = "storage.class"
    name: str
    directory: str
    direct_io: bool
    sequential_bytes: int
    figures: dict[str, float]
    fsync_percentiles_ms: dict[str, float]
    metadata: dict[str, float] | None
    """files, create_per_s, stat_per_s, delete_per_s, ops_per_s."""
    verify_failure: str | None
    fio: str
    """fio's version in the pod."""


# --- GPU health: `python -m dcforge.checks.gpu_health` on a node -> dcforge/checks/gpu_health.py -----------------

@dataclass
class GpuHealthResult(Record):
    """What the gpu_health readers saw on one node (target kubernetes: in a pod holding every GPU of the node)."""

    kind: ClassVar[str] = "gpu.health"
    hostname: str
    dcgm_level: int
    health: dict[str, Any]
    """dcforge.gpu.readings.NodeHealth as `dataclasses.asdict` gives it (GPUs, XIDs, DCGM diagnostics, notes)."""


# --- Serving: workloads/serving -> dcforge/steps/serving/ --------------------------------------------------------

@dataclass
class ReplicaReady(Record):
    """The content of `ready-<pid>`: this replica loaded its model and serves."""

    kind: ClassVar[str] = "serve.ready"
    pid: int
    time: float = field(default_factory=_now)


@dataclass
class LoadPodResult(Record):
    """What the load pod of `inference` on Kubernetes saw besides the request log (`LOAD_POD_REQUESTS_FILE`):
    the server's readiness, the endpoint rules, Locust's exit, its measurement windows and the server's metrics."""

    kind: ClassVar[str] = "serve.load_pod"
    ready_s: float
    """Seconds from the load pod's start until every replica answered /ready (the server pod starts with it)."""
    replicas_ready: int
    endpoint_findings: list[dict[str, Any]]
    """One {rule, passed, detail} per dynamic endpoint rule (dcforge/compliance/endpoint.py)."""
    locust_exit: int
    windows: list[dict[str, Any]]
    """Each Locust process's measurement window (loadtests/pacing.py MeasurementWindow fields)."""
    locust_started: float = 0.0
    """When Locust started, epoch seconds of the load pod's clock (the request log's)."""
    server_metrics: str = ""
    """The server's Prometheus exposition after the load ("" when it could not be read)."""


def ready_file(state_dir: str | os.PathLike[str], pid: int) -> Path:
    return Path(state_dir) / f"{READY_FILE_PREFIX}{pid}"


def mark_ready(state_dir: str | os.PathLike[str], pid: int | None = None) -> Path:
    """Written by a replica once it serves; removed again (`unlink`) when it stops."""
    record = ReplicaReady(pid=os.getpid() if pid is None else pid)
    path = ready_file(state_dir, record.pid)
    path.write_text(record.to_json() + "\n")
    return path


def ready_replicas(state_dir: str | os.PathLike[str]) -> dict[int, ReplicaReady]:
    """The replicas that announced readiness, by pid (a file caught mid-write counts once it is whole)."""
    ready = {}
    for path in Path(state_dir).glob(f"{READY_FILE_PREFIX}*"):
        try:
            records = read_records(path.read_text().splitlines(), ReplicaReady)
        except OSError:  # removed by a stopping replica meanwhile
            continue
        if records:
            ready[records[-1].pid] = records[-1]
    return ready


# --- The per-request log: loadtests/locustfile.py -> loadtests/metrics.py, dcforge/checks/inference* -------------

_REQUEST_PREFIX = '{"' + RECORD_KEY + '":"llm.request",'


@dataclass
class RequestRecord(Record):
    """One line of the per-request log: everything the metric formulas (docs/metrics.md#inference) need."""

    kind: ClassVar[str] = "llm.request"
    start: float
    """Send time, seconds since the epoch (comparable across Locust processes and with the kill time)."""
    end: float
    ok: bool
    status: int = 0
    """HTTP status; 0 when no response arrived (connection refused/reset, timeout)."""
    error: str = ""
    ttft_s: float | None = None
    """First non-empty token time - send time; None without a streamed token."""
    e2e_s: float = 0.0
    token_times_s: list[float] = field(default_factory=list)
    """Arrival time (s after send) of every non-empty chunk; ITL = gaps between consecutive ones."""
    output_tokens: int = 0
    """The server's `usage.completion_tokens` when given, else the count of non-empty chunks."""
    prompt_tokens: int | None = None
    replica: str = ""
    """The REPLICA_HEADER of the answer (which server process answered), when the server sends it."""
    stream: bool = True
    warmup: bool = False
    """Sent in the warm-up before measuring: kept in the log, excluded from every statistic (the measured set is
    the records without it)."""
    turn: int = 0
    """Turn of a multi-turn conversation (1 = its first request, loadtests/conversation.py); 0: single-turn load."""
    cached_tokens: int | None = None
    """The server's `usage.prompt_tokens_details.cached_tokens` (prompt tokens served from its prefix cache) when
    it returned one."""
    request_id: str = ""
    """Unique across every load-generator process of a run: `<host>-<pid>-<n>` (loadtests/locustfile.py), also sent
    as REQUEST_ID_HEADER; merging the per-process logs refuses an id seen twice. Empty in logs written before."""

    def to_json(self) -> str:
        # Written per request by Locust, under a lock: the fields are flat, so a shallow copy of __dict__ gives
        # what dataclasses.asdict would without its recursive deep copy (a quarter of the line's cost), and the
        # discriminator is prepended as text instead of building a second dict.
        data = dict(self.__dict__)
        data["token_times_s"] = [round(t, 6) for t in self.token_times_s]
        return _REQUEST_PREFIX + _compact_json(data)[1:]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RequestRecord":
        if data.get(RECORD_KEY) != cls.kind:
            raise RecordError(f"expected a {cls.kind!r} record, got {data.get(RECORD_KEY)!r}")
        data = dict(data)
        del data[RECORD_KEY]
        try:
            return cls(**data)  # the reader's hot path: thousands of lines per run, no per-field checks
        except TypeError as error:
            raise RecordError(f"{cls.kind} record: {error}") from None

