"""Continuous batching over the GPT's slot-based KV cache.

One engine thread owns the model. Between decode steps it admits waiting requests into free cache slots and
prefills all of them in one forward pass (prompts right-padded to the longest); then one forward pass decodes
the next token of every active sequence (B=active, T=1). Requests join and leave the batch at token granularity,
so a long generation never holds up short ones. Tokens travel to the asyncio side through a per-request queue
(`GenerationHandle`), or, when the engine runs in a process of its own (`workloads.serving.engine_process`, the
default), over a socket: the engine reports each step's events to whatever `deliver` it was given.

Slots are handed out first-freed-first-reused, so the active sequences stay in runs of consecutive slots ordered
by age (hence by length); the model then reads their keys straight from the cache and attends each run only up to
its own longest sequence (see `workloads.model.CachedBatch`).

Prefix caching: a freed slot keeps the keys and values of the tokens it held until it is reused. A new request
whose prompt starts with at least `PREFIX_MIN_TOKENS` of a free slot's tokens takes that slot and prefills only the
rest of its prompt (the next turn of a chat carries the previous turn's prompt and answer). The engine counts, as
vLLM does, prompt tokens looked up (`prefix_queries`) and prompt tokens found (`prefix_hits`); it never preempts
a running sequence (a request waits for a slot instead), so its preemption count is 0 by construction.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import torch

from workloads.model import GPT, ByteTokenizer, GPTConfig, KVCache, StreamDecoder, get_preset, quantize_int8
from workloads.serving.settings import EngineSettings, ModelSettings

log = logging.getLogger("dcforge.serve")


class EngineOverloaded(Exception):
    """More requests are waiting than `max_pending` allows; the API answers 429."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    """Tokens to generate at most (finish_reason "length" when reached)."""
    temperature: float = 1.0
    """0 is greedy decoding; otherwise logits are divided by it before sampling."""
    seed: int | None = None
    """Seeds this request's sampler, so the same request gives the same tokens."""
    stop: tuple[str, ...] = ()
    """Generation ends before the first occurrence of any of these strings (finish_reason "stop")."""
    ignore_eos: bool = False
    """Never sample EOS (vLLM's extension): load tests use it so every answer has exactly max_tokens tokens."""


@dataclass(frozen=True)
class TokenEvent:
    text: str
    """Text added since the previous event (may be empty on the final event)."""
    completion_tokens: int
    """Tokens generated so far."""
    finish_reason: str | None = None
    """None while generating; then "stop", "length" or "error"."""
    cached_tokens: int = 0
    """On the final event: prompt tokens served from the prefix cache (OpenAI's usage.prompt_tokens_details)."""


class Handle(Protocol):
    """What the engine needs of a request: a `GenerationHandle` in the serving process, or the engine process's
    stand-in for a request of the HTTP process (`workloads.serving.engine_process`)."""

    prompt_ids: list[int]
    params: SamplingParams
    cancelled: bool

    def publish(self, event: TokenEvent) -> None: ...


Deliver = Callable[[list["Handle"]], None]
"""Called by the engine thread after every step with the handles that published events in it."""
Receive = Callable[[float | None], None]
"""Reads the engine's own input for up to the given seconds (0: only what has arrived; None: until something does)
and queues what it brings with `enqueue`: the engine process's loop (`workloads.serving.engine_process`) reads its
socket itself, in the engine's thread, instead of waiting for another thread to submit."""


def check_prompt(prompt_ids: list[int], max_context: int) -> None:
    """ValueError unless the prompt leaves room for at least one generated token."""
    if not prompt_ids:
        raise ValueError("the prompt must have at least one token")
    if len(prompt_ids) + 1 > max_context:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context holds {max_context}")


class GenerationHandle:
    """The asyncio side of one request: iterate it for TokenEvents; `cancel()` frees its slot early."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop):
        self.prompt_ids = prompt_ids
        self.params = params
        self.cancelled = False
        self.loop = loop
        self._queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._outbox: deque[TokenEvent] = deque()

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def publish(self, event: TokenEvent) -> None:
        """Called from the engine thread; delivered by `deliver` (one wake-up of the event loop per step)."""
        self._outbox.append(event)

    def _drain(self) -> None:
        while self._outbox:
            self._queue.put_nowait(self._outbox.popleft())

    def cancel(self) -> None:
        self.cancelled = True

    async def events(self) -> AsyncIterator[TokenEvent]:
        while True:
            event = await self._queue.get()
            yield event
            if event.finish_reason is not None:
                return


def deliver(handles: list[GenerationHandle]) -> None:
    """Hand the events published in one engine step to their event loops: one thread-safe call per loop,
    not one per token, so a batch of 32 streams costs one wake-up instead of 32."""
    by_loop: dict[asyncio.AbstractEventLoop, list[GenerationHandle]] = {}
    for handle in handles:
        by_loop.setdefault(handle.loop, []).append(handle)
    for loop, group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_drain_all, group)
        except RuntimeError:  # that event loop is gone (worker shutting down): nobody is listening
            for handle in group:
                handle.cancelled = True


def _drain_all(handles: list[GenerationHandle]) -> None:
    for handle in handles:
        handle._drain()


@dataclass
class _Sequence:
    handle: Handle
    slot: int
    generator: torch.Generator
    decoder: StreamDecoder
    length: int = 0
    """Tokens of this sequence already in the KV cache."""
    reused: int = 0
    """Prompt tokens whose keys and values were already in the slot (prefix cache): prefill starts after them."""
    last_token: int = 0
    generated: int = 0
    emitted: str = ""
    pending: str = ""
    """Decoded text held back because it could be the start of a stop string."""


def quantized_on_cuda_error(device: str) -> str:
    """The one-line refusal of int8 serving on a GPU (the CLI and the replica say the same)."""
    return (f"--quantize int8 cannot serve on --device {device}: int8 dynamic quantization (torch quantize_dynamic) "
            "runs on the CPU only; use --device cpu or auto")


def resolve_device(name: str, quantize: str = "none") -> torch.device:
    """The device a replica serves on: `auto` puts replica processes round-robin on the visible GPUs (by process
    id: gunicorn gives replicas no index), or on the CPU when there is none. An int8 model serves on the CPU:
    `auto` means the CPU then, and a CUDA device is a ValueError."""
    if quantize == "int8":
        if name != "auto" and torch.device(name).type != "cpu":
            raise ValueError(quantized_on_cuda_error(name))
        return torch.device("cpu")
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", os.getpid() % torch.cuda.device_count())
    return torch.device("cpu")


def load_model(settings: ModelSettings) -> tuple[GPT, GPTConfig]:
    """Random weights of a preset (seeded: every replica serves the same model) or a training checkpoint, on the
    CPU; its int8 copy (`quantize_int8`) when `settings.quantize` is int8."""
    if settings.checkpoint is not None:
        from workloads.checkpointing import load_for_inference  # the training side owns the checkpoint format

        model, config = load_for_inference(Path(settings.checkpoint))
    else:
        config = get_preset(settings.preset)
        torch.manual_seed(settings.seed)
        model = GPT(config)
    model = model.eval()
    if settings.quantize == "int8":
        model = quantize_int8(model)
    return model, config


StepObserver = Callable[[str, int, float], None]
"""(phase "prefill"|"decode", batch size, seconds) after every forward pass."""

_TINY = torch.finfo(torch.float32).tiny
"""Smallest temperature the sampler divides by (float32's smallest normal number; see `_sample`)."""

PREFIX_MIN_TOKENS = 16
"""Shortest cached prefix worth a slot (vLLM's default KV block size): shorter matches -- every prompt starts with
BOS and most chats with the same role tag -- are neither reused nor counted as hits."""


class EngineLoad(NamedTuple):
    """The engine's state after a step, as the server's metrics publish it (vLLM's names in
    `workloads.serving.metrics`)."""

    waiting: int
    """Requests queued for a slot."""
    running: int
    """Sequences being generated."""
    kv_usage: float
    """Tokens held by running sequences / (slots x context): the share of the KV cache in use, 0-1."""
    prefix_queries: int
    """Prompt tokens looked up in the prefix cache since the engine started."""
    prefix_hits: int
    """Prompt tokens of those found cached (not prefilled again)."""


IDLE = EngineLoad(0, 0, 0.0, 0, 0)

LoadObserver = Callable[[EngineLoad], None]
"""Called with the engine's `EngineLoad` after a step that changed it (in the engine thread)."""


def shared_prefix(cached: list[int], prompt: list[int]) -> int:
    """Length of the longest common prefix of two token lists: a binary search over slice comparisons (C speed),
    not a Python loop over tokens, since it runs for every free slot at every admission."""
    low, high = 0, min(len(cached), len(prompt))
    while low < high:
        middle = (low + high + 1) // 2
        if cached[:middle] == prompt[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


class BatchingEngine:
    def __init__(self, model: GPT, config: GPTConfig, settings: EngineSettings, *, max_pending: int = 256,
                 observer: StepObserver | None = None, load_observer: LoadObserver | None = None,
                 deliver: Deliver = deliver, receive: Receive | None = None):
        self.model = model
        self.config = config
        self.settings = settings
        self.max_context = min(settings.max_context or config.max_seq_len, config.max_seq_len)
        self.max_pending = max_pending
        self.tokenizer = ByteTokenizer()
        self._observer = observer
        self._load_observer = load_observer
        self._deliver = deliver
        self._receive = receive
        self.device = next(model.parameters()).device
        self._cache = KVCache(config, settings.max_batch, self.max_context, device=self.device)
        self._free_slots = deque(range(settings.max_batch))  # FIFO: see the module docstring
        self._slot_tokens: list[list[int]] = [[] for _ in range(settings.max_batch)]
        """The tokens whose keys and values each slot holds, position by position (kept after release)."""
        self._kv_tokens = 0
        self._kv_capacity = settings.max_batch * self.max_context
        self.prefix_queries = 0
        self.prefix_hits = 0
        self._pending: deque[Handle] = deque()
        self._active: list[_Sequence] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- asyncio side -------------------------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams) -> GenerationHandle:
        check_prompt(prompt_ids, self.max_context)
        handle = GenerationHandle(list(prompt_ids), params, asyncio.get_running_loop())
        self.enqueue(handle)
        return handle

    def enqueue(self, handle: Handle) -> None:
        """Queue a request from any thread; its events go out through this engine's `deliver`."""
        with self._cond:
            if len(self._pending) >= self.max_pending:
                raise EngineOverloaded(f"{len(self._pending)} requests are already waiting")
            self._pending.append(handle)
            self._cond.notify()

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def active_sequences(self) -> int:
        return len(self._active)

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="batching-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self.request_stop()
        if self._thread:
            self._thread.join(timeout_s)

    def warm_up(self) -> None:
        """One prefill and one decode, so the first real request does not pay for lazy initialisation."""
        with torch.inference_mode():
            slots = self._tensor([0])
            self.model(self._tensor([[self.tokenizer.bos_id, 65]]), cache=self._cache, slots=slots,
                       positions=self._tensor([[0, 1]]))
            self.model(self._tensor([[66]]), cache=self._cache, slots=slots, positions=self._tensor([[2]]))

    def _tensor(self, data) -> torch.Tensor:
        """Model inputs live on the model's device."""
        return torch.tensor(data, device=self.device)

    # -- engine thread ------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """The loop ends after its current step (callable from the loop's own `receive`)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def run(self) -> None:
        """The engine loop, until stopped: in a thread of its own (`start`), or the engine process's main thread."""
        torch.set_num_threads(self.settings.torch_threads)
        with torch.inference_mode():
            while True:
                admitted = self._admit()
                if admitted is None:
                    return
                if admitted:
                    self._guarded(self._prefill, admitted)
                    self._deliver([sequence.handle for sequence in admitted])  # first tokens out before the next decode
                if self._active:
                    stepped = list(self._active)
                    self._guarded(self._decode_step, stepped)
                    self._deliver([sequence.handle for sequence in stepped])

    def _admit(self) -> list[_Sequence] | None:
        """New sequences for free slots; blocks while idle. None when the engine is stopping."""
        max_wait_s = self.settings.max_wait_ms / 1000
        with self._cond:  # re-entrant: `receive` enqueues from this thread
            if self._receive is not None:
                self._receive(0)
            if not self._active:
                while not self._pending and not self._stopping:
                    self._wait(None)
                # Idle engine: let concurrent arrivals gather for up to max_wait so they share the first batch.
                deadline = time.monotonic() + max_wait_s
                while (len(self._pending) < len(self._free_slots) and not self._stopping
                       and (remaining := deadline - time.monotonic()) > 0):
                    self._wait(remaining)
            if self._stopping:
                for handle in self._pending:
                    handle.publish(TokenEvent("", 0, "error"))
                self._deliver(list(self._pending))
                self._pending.clear()
                return None
            admitted = []
            while self._pending and self._free_slots:
                handle = self._pending.popleft()
                if handle.cancelled:
                    continue
                seed = handle.params.seed if handle.params.seed is not None else random.getrandbits(63)
                slot, reused = self._take_slot(handle.prompt_ids)
                admitted.append(_Sequence(handle, slot, torch.Generator().manual_seed(seed),
                                          self.tokenizer.stream_decoder(), reused=reused))
            return admitted

    def _take_slot(self, prompt_ids: list[int]) -> tuple[int, int]:
        """A free slot for this prompt and how many of its first tokens that slot already holds: the free slot
        with the longest cached prefix of at least PREFIX_MIN_TOKENS (one prompt token is always prefilled, for
        its logits), else the first freed (FIFO)."""
        slot, reused = self._free_slots[0], 0
        if self.settings.prefix_caching:
            self.prefix_queries += len(prompt_ids)
            for candidate in self._free_slots:
                found = shared_prefix(self._slot_tokens[candidate], prompt_ids)
                if found > reused:
                    slot, reused = candidate, found
            reused = min(reused, len(prompt_ids) - 1)
            if reused < PREFIX_MIN_TOKENS:
                slot, reused = self._free_slots[0], 0
            self.prefix_hits += reused
        self._free_slots.remove(slot)
        return slot, reused

    def _wait(self, timeout_s: float | None) -> None:
        if self._receive is not None:
            self._receive(timeout_s)
        else:
            self._cond.wait(timeout_s)

    def _guarded(self, step: Callable[[list[_Sequence]], None], sequences: list[_Sequence]) -> None:
        """A failing forward pass ends the sequences it carried with finish_reason "error", never the engine."""
        try:
            step(sequences)
        except Exception:
            log.exception("forward pass failed; ending %d sequences", len(sequences))
            for sequence in sequences:
                sequence.handle.publish(TokenEvent("", sequence.generated, "error"))
                self._release(sequence)

    def _prefill(self, sequences: list[_Sequence]) -> None:
        """All admitted prompts in one forward, each from its first uncached token (`reused`): rows right-padded
        to the longest. A pad token sits after its row's prompt, so no prompt token attends to it; the junk it
        writes into the cache lies past the sequence's length (its position clamped into the cache) and is
        overwritten by a decode step before anything can attend to it."""
        sequences.sort(key=lambda sequence: sequence.slot)
        for sequence in sequences:  # the slot now holds only the reused prefix; the rest is overwritten below
            del self._slot_tokens[sequence.slot][sequence.reused:]
        new = [len(sequence.handle.prompt_ids) - sequence.reused for sequence in sequences]
        longest = max(new)
        tokens = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            tokens[row, :new[row]] = torch.tensor(sequence.handle.prompt_ids[sequence.reused:])
        offsets = torch.tensor([sequence.reused for sequence in sequences])[:, None]
        positions = (offsets + torch.arange(longest)[None, :]).clamp(max=self.max_context - 1)
        started = time.perf_counter()
        logits = self.model(tokens.to(self.device), cache=self._cache,
                            slots=self._tensor([s.slot for s in sequences]), positions=positions.to(self.device))
        self._observe("prefill", len(sequences), started)
        for sequence in sequences:
            sequence.length = len(sequence.handle.prompt_ids)
            self._slot_tokens[sequence.slot] = list(sequence.handle.prompt_ids)
            self._kv_tokens += sequence.length
            self._active.append(sequence)
        self._load_changed()
        last = logits[torch.arange(len(sequences), device=self.device), self._tensor(new) - 1]
        for sequence, token in zip(sequences, self._sample(last, sequences)):
            self._advance(sequence, token)

    def _decode_step(self, sequences: list[_Sequence]) -> None:
        live = sorted((s for s in sequences if not s.handle.cancelled), key=lambda sequence: sequence.slot)
        for sequence in sequences:
            if sequence.handle.cancelled:
                self._release(sequence)
        if not live:
            return
        started = time.perf_counter()
        logits = self.model(self._tensor([[s.last_token] for s in live]),
                            cache=self._cache, slots=self._tensor([s.slot for s in live]),
                            positions=self._tensor([[s.length] for s in live]))
        self._observe("decode", len(live), started)
        for sequence in live:
            self._slot_tokens[sequence.slot].append(sequence.last_token)
            sequence.length += 1
        self._kv_tokens += len(live)
        self._load_changed()
        for sequence, token in zip(live, self._sample(logits[:, -1], live)):
            self._advance(sequence, token)

    def _sample(self, logits: torch.Tensor, sequences: list[_Sequence]) -> list[int]:
        """The next token of every row of logits [B, vocab]: greedy rows in one argmax over the batch, sampled
        rows each with their own generator (a request's seed fixes its tokens whatever else is in the batch)."""
        no_eos = [row for row, sequence in enumerate(sequences) if sequence.handle.params.ignore_eos]
        if no_eos:
            logits = logits.clone()
            logits[no_eos, self.tokenizer.eos_id] = float("-inf")
        tokens = logits.argmax(dim=-1).tolist()
        for row, sequence in enumerate(sequences):
            temperature = sequence.handle.params.temperature
            if temperature > 0:
                # on the CPU: each request's generator is a CPU generator (its seed fixes its tokens anywhere)
                # Shifted by the row's maximum and divided by at least float32's smallest normal number: the same
                # distribution, but a tiny temperature (1e-300, which the API admits, is 0 in float32) gives the
                # largest logit 0 and the others -inf instead of inf/NaN, which the sampler cannot draw from.
                row_logits = logits[row].float().cpu()
                probabilities = torch.softmax((row_logits - row_logits.max()) / max(temperature, _TINY), dim=-1)
                tokens[row] = int(torch.multinomial(probabilities, 1, generator=sequence.generator))
        return tokens

    def _advance(self, sequence: _Sequence, token: int) -> None:
        """Account one sampled token: stream its text, or finish the sequence."""
        params = sequence.handle.params
        if token == self.tokenizer.eos_id:
            return self._finish(sequence, "stop", sequence.decoder.flush())
        sequence.generated += 1
        sequence.last_token = token
        sequence.pending += sequence.decoder.push(token)
        if params.stop:
            text = sequence.emitted + sequence.pending
            search_from = max(0, len(sequence.emitted) - max(map(len, params.stop)) + 1)
            hits = [i for i in (text.find(stop, search_from) for stop in params.stop) if i >= 0]
            if hits:
                return self._finish(sequence, "stop", text[len(sequence.emitted):min(hits)], flush=False)
        if sequence.generated >= params.max_tokens or sequence.length + 1 >= self.max_context:
            return self._finish(sequence, "length", sequence.decoder.flush())
        # Hold back as many characters as a stop string could still need to complete.
        hold = max(map(len, params.stop)) - 1 if params.stop else 0
        ready = sequence.pending[:len(sequence.pending) - hold] if hold else sequence.pending
        if ready:
            sequence.pending = sequence.pending[len(ready):]
            sequence.emitted += ready
            sequence.handle.publish(TokenEvent(ready, sequence.generated))

    def _finish(self, sequence: _Sequence, reason: str, tail: str, *, flush: bool = True) -> None:
        text = (sequence.pending + tail) if flush else tail
        sequence.handle.publish(TokenEvent(text, sequence.generated, reason, sequence.reused))
        self._release(sequence)

    def _release(self, sequence: _Sequence) -> None:
        if sequence in self._active:
            self._active.remove(sequence)
            self._kv_tokens -= sequence.length
        with self._cond:
            if sequence.slot not in self._free_slots:
                self._free_slots.append(sequence.slot)
        self._load_changed()

    def _observe(self, phase: str, batch: int, started: float) -> None:
        if self._observer:
            self._observer(phase, batch, time.perf_counter() - started)

    @property
    def load(self) -> EngineLoad:
        return EngineLoad(len(self._pending), len(self._active), self._kv_tokens / self._kv_capacity,
                          self.prefix_queries, self.prefix_hits)

    def _load_changed(self) -> None:
        if self._load_observer:
            self._load_observer(self.load)
