"""The batching engine in a process of its own, fed by the HTTP replica over a socket pair.

Why: in one process the engine thread and the HTTP/asyncio thread take turns on the GIL, and every turn the HTTP
side takes is a pause of the forward passes (benchmarks/README.md, "Serving efficiency"). Here the replica's
process does HTTP, SSE and metrics, and the engine process does nothing but batch and run the model: each has a
GIL and a core of its own.

Wire: length-prefixed pickles over a Unix socket pair that only these two processes hold.

- replica -> engine: ("start", ModelSettings, EngineSettings, device) once; then ("submit", id, prompt_ids,
  SamplingParams) and ("cancel", id). Closing its end asks the engine to stop.
- engine -> replica: ("ready", max_context) or ("failed", message) once; then after every forward pass one
  ("step", events, (queue depth, active sequences), observations, submits received) -- the step's token events
  as (id, text, completion_tokens, finish_reason), its (phase, batch, seconds) for the forward-pass metrics. One
  message per step, not one per token.

Lifetime: the engine process dies with its replica (PR_SET_PDEATHSIG, `dcforge.process_lifetime`, set from the
replica's main thread, which lives as long as the replica), exits on its own when the replica's end of the socket
closes, and stays in the replica's process group (a SIGKILL to the group reaches it; terminal and termination
signals it ignores, so a group-wide SIGTERM lets the replica finish its requests before the engine goes). A
replica whose engine process dies answers 503 and is told to exit (`on_lost`), so gunicorn replaces the pair.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from workloads.model import ByteTokenizer
from workloads.serving.engine import (IDLE, EngineLoad, EngineOverloaded, GenerationHandle, LoadObserver,
                                      SamplingParams, StepObserver, TokenEvent, check_prompt)
from workloads.serving.settings import EngineSettings, ModelSettings

log = logging.getLogger("dcforge.serve")

_HEADER = struct.Struct("!I")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The directory holding the `workloads` package: put on the engine process's path whatever the replica's cwd."""


def _frame(message: object) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class EngineUnavailable(Exception):
    """The engine process is gone; the API answers 503."""


class RemoteHandle(GenerationHandle):
    """One request of this replica, generated in the engine process; events arrive on the event loop's thread."""

    def __init__(self, engine: "EngineProcess", request_id: int, prompt_ids: list[int], params: SamplingParams):
        super().__init__(prompt_ids, params, asyncio.get_running_loop())
        self.request_id = request_id
        self._engine = engine

    def cancel(self) -> None:
        self.cancelled = True
        self._engine._cancel(self)


class EngineProcess:
    """The replica's side: what the app needs of an engine (`submit`, `tokenizer`, `max_context`,
    `queue_depth`, `active_sequences`), with the engine itself in a child process."""

    def __init__(self, model: ModelSettings, settings: EngineSettings, device: str, *, max_pending: int,
                 observer: StepObserver | None = None, load_observer: LoadObserver | None = None,
                 on_lost: Callable[[], None] | None = None):
        self.tokenizer = ByteTokenizer()
        self.max_context = 0
        self.max_pending = max_pending
        self._start_message = ("start", model, settings, device)
        self._observer = observer
        self._load_observer = load_observer
        self._on_lost = on_lost
        self._process: subprocess.Popen | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._handles: dict[int, RemoteHandle] = {}
        self._next_id = 0
        self._submitted = 0
        self._received = 0
        self._load = IDLE
        self._stopping = False
        self.lost = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn the engine process and wait until its model is loaded and warmed up. Must run on the thread that
        lives as long as the replica (its event loop's): the kernel ties PR_SET_PDEATHSIG to the forking thread."""
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                         os.environ.get("PYTHONPATH")]))}
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "workloads.serving.engine_process", str(os.getpid()), str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        self._reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        self._send(self._start_message)
        try:
            reply = await self._receive()
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await asyncio.to_thread(self._process.wait)
            raise RuntimeError(f"the engine process exited with code {code} before it was ready "
                               "(its error is in the server log)") from None
        if reply[0] == "failed":
            await self.stop()
            raise RuntimeError(f"the engine process could not start: {reply[1]}")
        self.max_context = reply[1]
        self._reader_task = asyncio.create_task(self._read(), name="engine-process-reader")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Close the socket (the engine finishes its step and exits); kill it if it has not within `timeout_s`."""
        self._stopping = True
        if self._writer is not None:
            self._writer.close()
        if self._process is not None:
            deadline = time.monotonic() + timeout_s
            while self._process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if self._process.poll() is None:
                self._process.kill()
                await asyncio.to_thread(self._process.wait)
        if self._reader_task is not None:
            self._reader_task.cancel()
        self._fail_all()

    # -- requests -----------------------------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams) -> RemoteHandle:
        if self.lost or self._stopping:
            raise EngineUnavailable("the engine process of this replica is gone")
        check_prompt(prompt_ids, self.max_context)
        if self.queue_depth >= self.max_pending:
            raise EngineOverloaded(f"{self.queue_depth} requests are already waiting")
        self._next_id += 1
        handle = RemoteHandle(self, self._next_id, list(prompt_ids), params)
        self._handles[handle.request_id] = handle
        self._submitted += 1
        self._send(("submit", handle.request_id, handle.prompt_ids, params))
        return handle

    @property
    def queue_depth(self) -> int:
        """Waiting in the engine at its last report, plus submitted since that report was taken."""
        return self._load.waiting + self._submitted - self._received

    @property
    def active_sequences(self) -> int:
        return self._load.running

    def _cancel(self, handle: RemoteHandle) -> None:
        """A finished request is already forgotten: only a live one costs a message."""
        if self._handles.pop(handle.request_id, None) is not None and not self.lost and not self._stopping:
            self._send(("cancel", handle.request_id))

    # -- wire ---------------------------------------------------------------------------------------------------
    def _send(self, message: object) -> None:
        assert self._writer is not None
        self._writer.write(_frame(message))

    async def _receive(self) -> tuple:
        assert self._reader is not None
        (size,) = _HEADER.unpack(await self._reader.readexactly(_HEADER.size))
        return pickle.loads(await self._reader.readexactly(size))

    async def _read(self) -> None:
        try:
            while True:
                _, events, load, observations, received = await self._receive()
                self._on_step(events, load, observations, received)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        if not self._stopping:
            self._engine_lost()

    def _on_step(self, events: list[tuple], load: EngineLoad, observations: list[tuple],
                 received: int) -> None:
        handles = self._handles
        for request_id, text, completion_tokens, finish_reason, cached_tokens in events:
            handle = handles.get(request_id)
            if handle is None:  # cancelled here meanwhile
                continue
            handle._queue.put_nowait(TokenEvent(text, completion_tokens, finish_reason, cached_tokens))
            if finish_reason is not None:
                del handles[request_id]
        self._received = received
        if self._observer:
            for phase, batch, seconds in observations:
                self._observer(phase, batch, seconds)
        if load != self._load:
            self._load = load
            if self._load_observer:
                self._load_observer(load)

    def _engine_lost(self) -> None:
        self.lost = True
        code = self._process.poll() if self._process else None
        log.error("the engine process %s died (exit code %s); ending %d requests", self.pid, code,
                  len(self._handles))
        self._fail_all()
        if self._load_observer:
            self._load_observer(IDLE)
        if self._on_lost:
            self._on_lost()

    def _fail_all(self) -> None:
        for handle in self._handles.values():
            handle._queue.put_nowait(TokenEvent("", 0, "error"))
        self._handles.clear()


# -- the engine process ----------------------------------------------------------------------------------------

class _Request:
    """The engine process's stand-in for a request of the replica (`workloads.serving.engine.Handle`)."""

    __slots__ = ("request_id", "prompt_ids", "params", "cancelled", "outbox")

    def __init__(self, request_id: int, prompt_ids: list[int], params: SamplingParams):
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.params = params
        self.cancelled = False
        self.outbox: deque[TokenEvent] = deque()

    def publish(self, event: TokenEvent) -> None:
        self.outbox.append(event)


class _Link:
    """The engine process's end of the socket. One thread does everything: the engine loop reads the replica's
    messages between steps and while idle (`receive`, the engine's `Receive`) and sends each step's (`deliver`),
    so nothing in this process competes with the forward passes for the GIL."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buffer = bytearray()
        self.requests: dict[int, _Request] = {}
        self.received = 0
        self.observations: list[tuple[str, int, float]] = []
        self.engine = None

    def _frames(self) -> list[tuple]:
        """The whole messages in the buffer, removed from it."""
        messages = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            if len(self._buffer) < _HEADER.size + size:
                break
            messages.append(pickle.loads(self._buffer[_HEADER.size:_HEADER.size + size]))
            del self._buffer[:_HEADER.size + size]
        return messages

    def _read(self, timeout_s: float | None) -> list[tuple] | None:
        """Messages that arrived within `timeout_s` (possibly none); None once the replica has closed its end."""
        if select.select([self._sock], [], [], timeout_s)[0]:
            try:
                data = self._sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                return None
            self._buffer += data
        return self._frames()

    def first(self) -> tuple | None:
        """The replica's first message, waiting for it; None if the replica went away first."""
        while (messages := self._read(None)) is not None:
            if messages:
                assert len(messages) == 1, "the replica sends nothing before the engine is ready"
                return messages[0]
        return None

    def receive(self, timeout_s: float | None) -> None:
        """Submissions and cancellations that arrive within `timeout_s`, handed to the engine."""
        messages = self._read(timeout_s)
        if messages is None:
            self.engine.request_stop()
            return
        for message in messages:
            if message[0] == "submit":
                _, request_id, prompt_ids, params = message
                request = _Request(request_id, prompt_ids, params)
                self.requests[request_id] = request
                self.engine.enqueue(request)
                self.received += 1
            elif message[0] == "cancel" and (request := self.requests.pop(message[1], None)) is not None:
                request.cancelled = True

    def send(self, message: object) -> None:
        self._sock.sendall(_frame(message))

    def observe(self, phase: str, batch: int, seconds: float) -> None:
        self.observations.append((phase, batch, seconds))

    def deliver(self, handles: list[_Request]) -> None:
        """One message per engine step: the step's events, the load, the forward-pass timings."""
        events = []
        for request in handles:
            while request.outbox:
                event = request.outbox.popleft()
                events.append((request.request_id, event.text, event.completion_tokens, event.finish_reason,
                               event.cached_tokens))
                if event.finish_reason is not None:
                    self.requests.pop(request.request_id, None)
        observations, self.observations = self.observations, []
        load = self.engine.load
        try:
            self.send(("step", events, load, observations, self.received))
        except OSError:  # the replica is gone; the next `receive` sees the end of the socket and stops the loop
            pass


def _start_engine(link: _Link, model_settings: ModelSettings, settings: EngineSettings, device: str):
    import torch

    from workloads.serving.engine import BatchingEngine, load_model

    torch.set_num_threads(settings.torch_threads)
    model, config = load_model(model_settings)
    model = model.to(torch.device(device))
    engine = BatchingEngine(model, config, settings, max_pending=sys.maxsize, observer=link.observe,
                            deliver=link.deliver, receive=link.receive)  # the replica enforces max_pending (429)
    engine.warm_up()
    return engine


def main(argv: list[str]) -> int:
    parent_pid, fd = int(argv[0]), int(argv[1])
    from dcforge.process_lifetime import die_with_parent

    die_with_parent(parent_pid)
    # A Ctrl-C, or a supervisor's SIGTERM to the whole process group, reaches this process too: the replica
    # decides when its engine stops (after its graceful shutdown has finished the requests in flight), and it
    # cannot be orphaned -- it dies with the replica (above) and exits when the replica closes the socket.
    for ignored in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(ignored, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=f"[{os.getpid()}] [engine] %(levelname)s %(message)s")
    link = _Link(socket.socket(fileno=fd))
    if (start := link.first()) is None:
        return 0
    _, model_settings, settings, device = start
    try:
        engine = _start_engine(link, model_settings, settings, device)
    except Exception as error:  # reported to the replica, which fails its start with this line
        log.exception("the engine could not start")
        link.send(("failed", f"{type(error).__name__}: {error}"))
        return 1
    link.engine = engine
    link.send(("ready", engine.max_context))
    engine.run()  # in this thread, until the replica closes the socket
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
