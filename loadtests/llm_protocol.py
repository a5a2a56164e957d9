"""The parts of the LLM Locust user that do not need Locust: prompts, request bodies, SSE parsing and the
per-request JSONL log (its record type, RequestRecord, is defined with every other workload record in
workloads/records.py). Kept apart so they are unit-tested without gevent's monkey-patching."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

try:
    from workloads.records import RequestRecord, read_records_file
except ImportError:  # `locust -f path/to/loadtests/locustfile.py` from a checkout that is not installed
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from workloads.records import RequestRecord, read_records_file

_WORDS = ("data centre GPU training serving token latency cluster network storage model batch cache kernel "
          "memory bandwidth throughput replica request stream").split()


@dataclass(frozen=True)
class Stage:
    until_s: float
    """The stage lasts until this many seconds after the start of the run."""
    users: int
    spawn_rate: float


def parse_stages(text: str) -> list[Stage]:
    """`"10:4:2,30:16:8"` -> stages: until 10 s 4 users (spawned 2/s), until 30 s 16 users (8/s)."""
    stages = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        fields = part.split(":")
        if len(fields) not in (2, 3):
            raise ValueError(f"stage {part!r}: expected until_s:users[:spawn_rate]")
        try:
            stage = Stage(float(fields[0]), int(fields[1]), float(fields[2]) if len(fields) == 3 else float(fields[1]))
        except ValueError:
            raise ValueError(f"stage {part!r}: numbers expected") from None
        if stage.users < 0 or stage.spawn_rate <= 0 or (stages and stage.until_s <= stages[-1].until_s):
            raise ValueError(f"stage {part!r}: users >= 0, spawn rate > 0 and increasing times required")
        stages.append(stage)
    if not stages:
        raise ValueError("no stages given")
    return stages


def make_prompt(rng: random.Random, approx_tokens: int) -> str:
    """Text of about `approx_tokens` tokens for byte tokenizers (one token per byte); subword tokenizers see
    fewer, and the log records the server's own count from `usage`."""
    words: list[str] = []
    length = 0
    while length < approx_tokens:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:max(1, approx_tokens)]


def request_body(endpoint: str, model: str, prompt: str, max_tokens: int, stream: bool, temperature: float,
                 ignore_eos: bool = True, system: str = "", history: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """An OpenAI request; `system` (a shared prefix) is the system message of a chat, the text's start otherwise;
    `history` (a chat's earlier user and assistant messages) goes between the system message and the prompt."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": temperature, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        # vLLM extension: generate exactly max_tokens so every request has the same output length; servers
        # that do not know the field ignore it.
        body["ignore_eos"] = True
    if endpoint == "chat":
        body["messages"] = ([{"role": "system", "content": system}] if system else []) + list(history) \
            + [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = f"{system}\n\n{prompt}" if system else prompt
    return body


# --- Workload shapes: prompt and output lengths, prompts from a file, shared prefixes -------------------------------

@dataclass(frozen=True)
class Prompt:
    """One request's input: its text, the answer length asked for, and the shared prefix it starts with."""

    text: str
    max_tokens: int
    system: str = ""


class PromptFileError(ValueError):
    """A prompt file line that is not a prompt; the message names the file and line."""


def read_prompt_file(path: str | os.PathLike[str]) -> list[tuple[str, int | None]]:
    """(text, output tokens or None) of every line of a JSONL prompt file: `{"prompt": "..."}` or AIPerf's
    `{"text": "..."}`, optionally `"max_tokens"` / `"output_tokens"` (vLLM's custom dataset); blank lines skipped."""
    prompts: list[tuple[str, int | None]] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PromptFileError(f"{path}: cannot read: {error}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            raise PromptFileError(f"{path}: line {number}: not JSON") from None
        text = data.get("prompt", data.get("text")) if isinstance(data, dict) else None
        length = data.get("max_tokens", data.get("output_tokens")) if isinstance(data, dict) else None
        if not isinstance(text, str) or not text:
            raise PromptFileError(f"{path}: line {number}: expected an object with a non-empty \"prompt\" (or "
                                  "\"text\") string")
        if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
            raise PromptFileError(f"{path}: line {number}: \"max_tokens\"/\"output_tokens\" must be an integer >= 1")
        prompts.append((text, length))
    if not prompts:
        raise PromptFileError(f"{path}: no prompts")
    return prompts


def uniform_length(rng: random.Random, mean: int, spread: float) -> int:
    """A length uniform in mean x (1 +/- spread), at least 1 (vLLM's --random-range-ratio); `mean` when spread is 0."""
    return max(1, round(mean * rng.uniform(1 - spread, 1 + spread))) if spread > 0 else mean


def shared_prefixes(count: int, tokens: int) -> list[str]:
    """`count` distinct long system prompts, the same in every process of a run (seeded by their index), so each
    is sent many times and a server with prefix caching can reuse its KV cache."""
    return [f"System prompt {i}. " + make_prompt(random.Random(f"dcforge-shared-prefix-{i}"), tokens)
            for i in range(count)]


@dataclass
class Workload:
    """The request inputs of a load run: generated prompts of uniform (or fixed) length, or prompts from a file, each
    optionally behind one of a few shared prefixes; answer lengths uniform (or fixed) unless the file gives them."""

    prompt_tokens: int
    max_tokens: int
    prompt_tokens_spread: float = 0.0
    max_tokens_spread: float = 0.0
    file_prompts: list[tuple[str, int | None]] | None = None
    prefixes: list[str] = field(default_factory=list)

    def next(self, rng: random.Random) -> Prompt:
        if self.file_prompts:
            text, length = rng.choice(self.file_prompts)
        else:
            text, length = make_prompt(rng, uniform_length(rng, self.prompt_tokens, self.prompt_tokens_spread)), None
        max_tokens = length or uniform_length(rng, self.max_tokens, self.max_tokens_spread)
        return Prompt(text, max_tokens, rng.choice(self.prefixes) if self.prefixes else "")


def time_per_output_token_s(e2e_s: float, ttft_s: float, output_tokens: int) -> float | None:
    """TPOT = (e2e - TTFT) / (output_tokens - 1) (docs/metrics.md#inference); None with fewer than two tokens."""
    return (e2e_s - ttft_s) / (output_tokens - 1) if output_tokens > 1 else None


def endpoint_path(endpoint: str) -> str:
    return "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"


@dataclass
class SseEvent:
    done: bool = False
    """The `[DONE]` sentinel."""
    text: str = ""
    """Generated text carried by this chunk (choice text or delta content)."""
    usage: dict[str, int] | None = None
    error: str | None = None
    finish_reason: str | None = None


def parse_sse_line(line: str) -> SseEvent | None:
    """One line of an OpenAI stream; None for blank lines, comments and non-data fields."""
    line = line.strip()
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == "[DONE]":
        return SseEvent(done=True)
    try:
        chunk = json.loads(payload)
    except ValueError:
        return SseEvent(error=f"malformed SSE payload: {payload[:80]!r}")
    if not isinstance(chunk, dict):
        return SseEvent(error="SSE payload is not an object")
    if chunk.get("error"):
        error = chunk["error"]
        return SseEvent(error=str(error.get("message", error) if isinstance(error, dict) else error))
    event = SseEvent(usage=chunk.get("usage") or None)
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        event.text += choice.get("text") or delta.get("content") or ""
        event.finish_reason = choice.get("finish_reason") or event.finish_reason
    return event


_TEXT_VALUE_KEYS = (b'"content":"', b'"text":"')
"""How OpenAI-style servers (this one, vLLM, TGI) serialize a chunk's text: compact JSON, no space after the colon."""


def chunk_has_text_fast(payload: bytes) -> bool:
    """True only when a chunk certainly carries generated text and nothing else the load test needs.

    The fast path of the stream reader: most chunks of a stream are one token, and this byte scan costs a tenth
    of `json.loads`. It answers True only for an object with no `"usage"` and no `"error"` key and a non-empty
    `"content":"..."` / `"text":"..."` string; anything else (role chunk, empty delta, usage, error, other
    spacing, malformed) answers False and goes through `parse_sse_line`. A quote inside generated text is
    escaped (`\\"`), so text can never fake one of these keys.
    """
    if not (payload.startswith(b"{") and payload.endswith(b"}")) or b'"usage"' in payload or b'"error"' in payload:
        return False
    for key in _TEXT_VALUE_KEYS:
        at = payload.find(key)
        if at >= 0 and payload[at + len(key):at + len(key) + 1] != b'"':
            return True
    return False


class RequestLog:
    """Appends records as JSON lines. `{pid}` in the path is replaced, so `--processes N` workers each write
    their own file and never interleave partial lines.

    Lines are buffered and written in batches (one write call per `flush_every` records, or sooner once the
    oldest buffered line is `flush_after_s` old at the next write), not one write per request. The owner calls
    `flush()` at test stop, on interruption and periodically (the Locust user does all three), and `close()`
    flushes too; only a SIGKILL can lose the lines of the last flush interval.
    """

    def __init__(self, path_template: str | os.PathLike[str], flush_every: int = 256, flush_after_s: float = 1.0):
        self.path = Path(str(path_template).replace("{pid}", str(os.getpid())))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_every = flush_every
        self.flush_after_s = flush_after_s
        self._lock = _non_yielding_lock()
        self._pending: list[str] = []
        self._oldest_pending = 0.0
        self._file: TextIO | None = open(self.path, "a")

    def write(self, record: RequestRecord) -> None:
        line = record.to_json()
        with self._lock:
            if self._file is None:
                raise ValueError(f"request log {self.path} is closed; a record would be lost")
            if not self._pending:
                self._oldest_pending = time.monotonic()
            self._pending.append(line)
            if len(self._pending) >= self.flush_every or time.monotonic() - self._oldest_pending >= self.flush_after_s:
                self._write_pending()

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._write_pending()

    def _write_pending(self) -> None:
        assert self._file is not None
        if self._pending:
            self._file.write("\n".join(self._pending) + "\n")
            self._pending.clear()
        self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._write_pending()
                self._file.close()
                self._file = None


def _non_yielding_lock():
    """An OS lock even where gevent has patched `threading` (inside Locust).

    A gevent lock switches greenlets when contended, so a Locust user could be stopped while waiting for the log's
    flusher, after its request was counted but before its line was buffered. Under gevent every greenlet runs in
    one OS thread and nothing inside this lock yields, so the OS lock is never contended there; across real threads
    it is an ordinary lock.
    """
    try:
        from gevent.monkey import get_original
    except ImportError:
        return threading.Lock()
    return get_original("_thread", "allocate_lock")()


class DuplicateRequestError(ValueError):
    """A request id appears twice in the logs being merged: a request would be counted twice."""


def read_records(paths: list[Path]) -> list[RequestRecord]:
    """Every record of the given request logs (one per load-generator process), merged and sorted by send time; a
    torn last line (killed writer) is skipped. A request id logged twice is refused (DuplicateRequestError naming
    it and the files), so the merged log counts every request once."""
    records: list[RequestRecord] = []
    seen: dict[str, Path] = {}
    for path in paths:
        for record in read_records_file(path, RequestRecord):
            if record.request_id:
                if record.request_id in seen:
                    raise DuplicateRequestError(f"request {record.request_id} is logged twice ({seen[record.request_id]}"
                                                f" and {path}); the merged log would count it twice")
                seen[record.request_id] = path
            records.append(record)
    return sorted(records, key=lambda record: record.start)
