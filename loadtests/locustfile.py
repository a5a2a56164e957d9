"""Locust user for any OpenAI-compatible LLM endpoint (the bundled server, vLLM, TGI, ...).

    OPENAI_API_KEY=... locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --llm-model my-model

Each request streams (unless --llm-no-stream) and is timed as users feel it: time to first token (TTFT), time per
output token (TPOT), inter-token latency (ITL) and end-to-end latency. TTFT and TPOT also get rows of their own
in Locust's statistics ("LLM ttft", "LLM tpot") so the web UI charts them; the exact numbers go to a per-request
JSONL log (--llm-request-log, `{pid}` replaced per process, written in batches and flushed at stop, on SIGTERM/
SIGINT and every second) from which percentiles are computed exactly.

Arrivals: `--llm-arrival closed` (each user sends, waits for the answer, sends again), or open-loop `constant` /
`poisson` at `--llm-rate` requests/s in total: the users of a process take turns in one arrival stream
(loadtests/arrivals.py; `--llm-burstiness` makes Poisson gaps gamma-distributed, as vLLM's `--burstiness`), and
every arrival runs in its own greenlet so slow answers never slow the arrivals. Closed-loop users start at
jittered offsets (--llm-start-jitter) and wait a think time between requests (--llm-think-time, exponential by
default; 0 is the lockstep loop), so their requests do not convoy; in-flight requests at the end of the window complete within Locust's --stop-timeout and
are counted, and a window file (--llm-window-file) records the window and how many were abandoned
(loadtests/pacing.py states the stop semantics). Works with `--processes N`. The API key comes from
OPENAI_API_KEY or the file named by --llm-api-key-file / LLM_API_KEY_FILE, never from the command line.

Warm-up (loadtests/warmup.py): users first send --llm-warmup-per-replica requests per replica (logged with
`"warmup": true`, in no statistic); once they are answered and every user is spawned, Locust's statistics are reset
and the measurement window starts; with --llm-duration the process ends the run that many seconds later (a single
process; with --processes, Locust's -t ends it). Workload shapes: prompt and output lengths fixed or uniform
(--llm-prompt-tokens-spread, --llm-max-tokens-spread), prompts from a JSONL file (--llm-prompt-file), and a few
long shared system prompts (--llm-shared-prefixes) for prefix caching.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path

import gevent
import gevent.event
import greenlet
from locust import FastHttpUser, events, task
from locust.runners import LocalRunner

try:
    from loadtests import arrivals, pacing
    from loadtests.conversation import Conversation
    from loadtests.saturation import LOOP_LAG_PERIOD_S
    from loadtests.llm_protocol import (PromptFileError, RequestLog, RequestRecord, Workload, chunk_has_text_fast,
                                        endpoint_path, parse_sse_line, read_prompt_file, request_body,
                                        shared_prefixes, time_per_output_token_s)
    from loadtests.warmup import WarmupPlan
except ImportError:  # `locust -f path/to/locustfile.py` outside an install: Locust puts this directory on sys.path
    import arrivals  # type: ignore[no-redef]
    from conversation import Conversation  # type: ignore[no-redef]
    from saturation import LOOP_LAG_PERIOD_S  # type: ignore[no-redef]
    import pacing  # type: ignore[no-redef]
    from llm_protocol import (PromptFileError, RequestLog, RequestRecord, Workload,  # type: ignore[no-redef]
                              chunk_has_text_fast, endpoint_path, parse_sse_line, read_prompt_file, request_body,
                              shared_prefixes, time_per_output_token_s)
    from warmup import WarmupPlan  # type: ignore[no-redef]
from workloads.records import LOAD_API_KEY_ENV, LOAD_DEFAULTS, REPLICA_HEADER, REQUEST_ID_HEADER, LoadEnv  # found once llm_protocol is

_request_log: RequestLog | None = None
_workload: Workload | None = None
_warmup: WarmupPlan | None = None
_warmup_over = gevent.event.Event()
"""Set once the warm-up is answered and every user is spawned: the measurement window has started."""
_spawned = gevent.event.Event()
WARMUP_POLL_S = 0.02
_window: dict[str, float] = {}
"""Start and stop of this process's measurement window (epoch seconds)."""
_loop_lags_s: list[float] = []
"""Lateness of every tick of the event-loop timer during the window (client saturation, loadtests/saturation.py)."""
_in_flight = 0
"""Requests sent and not yet logged, over all users of this process: those left at the end are abandoned."""
_sent = 0
"""Requests sent by this process."""
_request_numbers = itertools.count(1)
_HOST = socket.gethostname()


def next_request_id() -> str:
    """`<host>-<pid>-<n>`: unique across the worker processes of a run (a fork copies the counter, not the pid) and
    across load pods (whose pids repeat, their host names do not)."""
    return f"{_HOST}-{os.getpid()}-{next(_request_numbers)}"
DRAIN_TIMEOUT_S = 1.0
"""How long a finished stream waits for the end of its HTTP body so its connection can be reused."""
LOG_FLUSH_INTERVAL_S = 1.0
"""The request log is written in batches; at most this much of it is unwritten when the process is SIGKILLed."""
IN_FLIGHT_POLL_S = 0.01
"""How often the end of the window looks whether the requests in flight have finished."""
_BLANK_LINES = (b"\n", b"\r\n")


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    group = parser.add_argument_group("LLM user")
    group.add_argument("--llm-model", default="", env_var=LoadEnv.MODEL, help="model id; default: first of /v1/models")
    group.add_argument("--llm-endpoint", choices=["chat", "completions"], default=LOAD_DEFAULTS.endpoint,
                       env_var=LoadEnv.ENDPOINT)
    group.add_argument("--llm-api-key-file", default="", env_var=LoadEnv.API_KEY_FILE,
                       help="file whose first line is the API key (else OPENAI_API_KEY)")
    group.add_argument("--llm-prompt-tokens", type=int, default=LOAD_DEFAULTS.prompt_tokens,
                       env_var=LoadEnv.PROMPT_TOKENS)
    group.add_argument("--llm-prompt-tokens-spread", type=float, default=LOAD_DEFAULTS.prompt_tokens_spread,
                       env_var=LoadEnv.PROMPT_TOKENS_SPREAD, help="prompt length is uniform in tokens * (1 +/- spread)")
    group.add_argument("--llm-max-tokens", type=int, default=LOAD_DEFAULTS.max_tokens, env_var=LoadEnv.MAX_TOKENS)
    group.add_argument("--llm-temperature", type=float, default=1.0, env_var=LoadEnv.TEMPERATURE)
    group.add_argument("--llm-no-stream", action="store_true", env_var=LoadEnv.NO_STREAM)
    group.add_argument("--llm-arrival", choices=["closed", "constant", "poisson"], default=LOAD_DEFAULTS.arrival,
                       env_var=LoadEnv.ARRIVAL)
    group.add_argument("--llm-rate", type=float, default=LOAD_DEFAULTS.rate, env_var=LoadEnv.RATE,
                       help="open-loop arrivals per second, all users together")
    group.add_argument("--llm-max-inflight", type=int, default=64, env_var=LoadEnv.MAX_INFLIGHT,
                       help="open loop: in-flight requests per user; arrivals beyond are logged as dropped")
    group.add_argument("--llm-timeout", type=float, default=LOAD_DEFAULTS.request_timeout_s, env_var=LoadEnv.TIMEOUT,
                       help="seconds before a request counts as timed out")
    group.add_argument("--llm-think-time", type=float, default=pacing.THINK_TIME_S, env_var=LoadEnv.THINK_TIME,
                       help="closed loop: mean seconds between an answer and the user's next request; 0: lockstep")
    group.add_argument("--llm-think-distribution", choices=["exponential", "constant"],
                       default=pacing.THINK_DISTRIBUTION, env_var=LoadEnv.THINK_DISTRIBUTION)
    group.add_argument("--llm-start-jitter", type=float, default=pacing.START_JITTER_S, env_var=LoadEnv.START_JITTER,
                       help="closed loop: each user waits uniform(0, this) seconds before its first request")
    group.add_argument("--llm-window-file", default="", env_var=LoadEnv.WINDOW_FILE,
                       help="JSON file of the measurement window and abandoned requests; {pid} is replaced")
    group.add_argument("--llm-request-log", default="", env_var=LoadEnv.REQUEST_LOG,
                       help="per-request JSONL log path; {pid} is replaced by the process id")
    group.add_argument("--llm-max-tokens-spread", type=float, default=0.0, env_var=LoadEnv.MAX_TOKENS_SPREAD,
                       help="output length is uniform in max_tokens * (1 +/- spread); 0: fixed")
    group.add_argument("--llm-prompt-file", default="", env_var=LoadEnv.PROMPT_FILE,
                       help='JSONL of {"prompt" or "text": ..., optional "max_tokens"}: prompts sent in random order')
    group.add_argument("--llm-shared-prefixes", type=int, default=0, env_var=LoadEnv.SHARED_PREFIXES,
                       help="every prompt starts with one of this many shared system prompts (0: none)")
    group.add_argument("--llm-shared-prefix-tokens", type=int, default=128, env_var=LoadEnv.SHARED_PREFIX_TOKENS)
    group.add_argument("--llm-warmup-per-replica", type=int, default=LOAD_DEFAULTS.warmup_per_replica,
                       env_var=LoadEnv.WARMUP_PER_REPLICA,
                       help="warm-up requests per replica before measuring (logged as warm-up, in no statistic)")
    group.add_argument("--llm-warmup-replicas", type=int, default=1, env_var=LoadEnv.WARMUP_REPLICAS,
                       help="replicas the warm-up must reach (by the replica header)")
    group.add_argument("--llm-turns", type=int, default=1, env_var=LoadEnv.TURNS,
                       help="chat turns per conversation, each sending the history with the server's answers; 1: "
                            "single-turn requests")
    group.add_argument("--llm-conversation-tokens", type=int, default=0, env_var=LoadEnv.CONVERSATION_TOKENS,
                       help="a conversation whose next turn would need more tokens (prompt + answer) starts anew")
    group.add_argument("--llm-duration", type=float, default=0.0, env_var=LoadEnv.DURATION,
                       help="seconds measured after the warm-up, then the run ends (single process); 0: Locust's -t")


@events.init.add_listener
def _load_workload(environment, **_kwargs) -> None:
    """The prompts of this run, before any user starts: a bad prompt file ends Locust with one line, exit 2."""
    global _workload
    options = environment.parsed_options
    if options is None or not hasattr(options, "llm_prompt_tokens"):
        return
    try:
        prompts = read_prompt_file(options.llm_prompt_file) if options.llm_prompt_file else None
    except PromptFileError as error:
        print(f"error: --llm-prompt-file: {error}", file=sys.stderr)
        sys.exit(2)
    _workload = Workload(prompt_tokens=options.llm_prompt_tokens, max_tokens=options.llm_max_tokens,
                         prompt_tokens_spread=options.llm_prompt_tokens_spread,
                         max_tokens_spread=options.llm_max_tokens_spread, file_prompts=prompts,
                         prefixes=shared_prefixes(options.llm_shared_prefixes, options.llm_shared_prefix_tokens))


@events.init.add_listener
def _deliver_sigint_between_greenlets(**_kwargs) -> None:
    # Python raises the KeyboardInterrupt of a SIGINT in whatever code runs when the signal arrives; under gevent
    # that is often a user's greenlet, which then dies between logging a request and Locust counting it (one
    # record more than the statistics count). Taken through gevent instead, the signal is handled between
    # greenlets and raised in the main greenlet, where Locust waits for the run and catches KeyboardInterrupt
    # to shut down as it always does. `init` fires in that main greenlet.
    main = greenlet.getcurrent()
    gevent.signal_handler(signal.SIGINT, lambda: gevent.get_hub().loop.run_callback(main.throw, KeyboardInterrupt))


@events.spawning_complete.add_listener
def _ramp_up_over(**_kwargs) -> None:
    _spawned.set()


def _finish_warmup(environment) -> None:
    """Reset Locust's statistics (warm-up and ramp-up out) and start the measurement window; end the run after
    --llm-duration seconds when this process runs the users alone."""
    if _warmup_over.is_set():
        return
    environment.stats.reset_all()
    _window["start"] = time.time()
    _window["cpu_start"] = time.process_time()
    _warmup_over.set()
    duration = environment.parsed_options.llm_duration
    if duration > 0 and isinstance(environment.runner, LocalRunner):
        gevent.spawn_later(duration, environment.runner.quit)  # what Locust's -t does when it expires


@events.test_start.add_listener
def _open_log(environment, **_kwargs) -> None:
    global _request_log, _warmup
    options = environment.parsed_options
    if options is not None and _warmup is None:
        _warmup = WarmupPlan(getattr(options, "llm_warmup_per_replica", 0), getattr(options, "llm_warmup_replicas", 1))
        gevent.spawn(_measure_loop_lag)
    if options is not None and options.llm_request_log and _request_log is None:
        _request_log = RequestLog(options.llm_request_log, flush_after_s=LOG_FLUSH_INTERVAL_S)
        gevent.spawn(_flush_periodically, _request_log)
        atexit.register(_request_log.close)  # an exit Locust does not announce (sys.exit in user code, ...)


def _measure_loop_lag() -> None:
    """How late a timer greenlet wakes during the window: a CPU-starved or overloaded process wakes it late, and
    sends and times its requests just as late."""
    while "stop" not in _window:
        asked = time.perf_counter()
        gevent.sleep(LOOP_LAG_PERIOD_S)
        if "start" in _window and "stop" not in _window:
            _loop_lags_s.append(time.perf_counter() - asked - LOOP_LAG_PERIOD_S)


def _flush_periodically(log: RequestLog) -> None:
    """Bounds what a SIGKILL can lose when requests stop arriving (a stalled server writes no new lines)."""
    while True:
        gevent.sleep(LOG_FLUSH_INTERVAL_S)
        log.flush()


@events.test_stopping.add_listener
def _end_window(environment, **_kwargs) -> None:
    # Fired when the run time is over, before the users stop: requests sent so far may complete in the grace period
    # (--stop-timeout), and none is sent after the window (`generate` checks). The grace is spent here rather than
    # left to Locust's graceful stop, because Locust counts running users by their greenlets' arguments, which gevent
    # may already have cleared: such users are not asked to stop but killed, requests in flight and all.
    _window.setdefault("stop", time.time())
    _window.setdefault("cpu_stop", time.process_time())
    deadline = time.monotonic() + float(environment.stop_timeout or 0)
    while _in_flight > 0 and time.monotonic() < deadline:
        gevent.sleep(IN_FLIGHT_POLL_S)


@events.test_stop.add_listener
def _write_window(environment, **_kwargs) -> None:
    # Fired once the users have stopped, i.e. after the grace period: what is still in flight is abandoned.
    options = environment.parsed_options
    if options is None or not options.llm_window_file or "start" not in _window:
        return
    stop = _window.setdefault("stop", time.time())
    lags = sorted(_loop_lags_s)
    cpu_s = _window.setdefault("cpu_stop", time.process_time()) - _window["cpu_start"]
    window = pacing.MeasurementWindow(start=_window["start"], stop=stop, grace_s=float(environment.stop_timeout or 0),
                                      sent=_sent, abandoned=_in_flight,
                                      cpu_cores=cpu_s / (stop - _window["start"]) if stop > _window["start"] else None,
                                      loop_lag_ms_p99=lags[int(0.99 * (len(lags) - 1))] * 1000 if lags else None)
    window.write(options.llm_window_file.replace("{pid}", str(os.getpid())))


@events.test_stop.add_listener
@events.quitting.add_listener
def _flush_log(**_kwargs) -> None:
    # test_stop: the run ended (-t, web UI stop, shape done); quitting: SIGTERM/SIGINT or end of a headless run.
    # Both come before the users are gone, so the log stays open until `quit`.
    if _request_log is not None:
        _request_log.flush()


@events.quit.add_listener
def _close_log(**_kwargs) -> None:
    if _request_log is not None:
        _request_log.close()


def _api_key(options) -> str:
    if options.llm_api_key_file:
        return Path(options.llm_api_key_file).read_text().splitlines()[0].strip()
    return os.environ.get(LOAD_API_KEY_ENV, "")


class LlmUser(FastHttpUser):
    """One simulated client of an OpenAI-compatible endpoint."""

    abstract = False
    network_timeout = LOAD_DEFAULTS.request_timeout_s
    connection_timeout = 10.0
    insecure = True  # the bundled check serves a self-signed certificate when TLS is on

    def wait_time(self) -> float:
        if self.options.llm_arrival != "closed":
            return 0.0  # open loop: `generate` paces the arrivals itself
        return pacing.think_time_s(self.rng, self.options.llm_think_time, self.options.llm_think_distribution)

    def on_start(self) -> None:
        self.options = self.environment.parsed_options
        self.network_timeout = self.options.llm_timeout
        self.headers = {"Authorization": f"Bearer {_api_key(self.options)}"}
        self.post_headers = {**self.headers, "Content-Type": "application/json"}
        self.rng = random.Random()
        self.model = self.options.llm_model or self._first_model()
        self.inflight = 0
        self.conversation = Conversation(max(1, self.options.llm_turns), self.options.llm_conversation_tokens)
        self._warm_up()
        if self.options.llm_arrival == "closed":
            gevent.sleep(pacing.start_offset_s(self.rng, self.options.llm_start_jitter))

    def _warm_up(self) -> None:
        """Send warm-up requests while the plan wants more, then wait until the warm-up is over for every user."""
        plan = _warmup if _warmup is not None else WarmupPlan(0)
        while not _warmup_over.is_set():
            if plan.take():
                record = self.send_request(warmup=True)
                plan.finish(record.ok, record.replica)
            elif plan.done and _spawned.is_set():
                _finish_warmup(self.environment)
            else:
                _warmup_over.wait(WARMUP_POLL_S)

    def _first_model(self) -> str:
        with self.client.get("/v1/models", headers=self.headers, name="/v1/models", catch_response=True) as resp:
            try:
                return resp.json()["data"][0]["id"]
            except Exception:
                resp.failure("cannot list models; pass --llm-model")
                return "default"

    @task
    def generate(self) -> None:
        if "stop" in _window:
            return  # the window is over: nothing is sent after it, in flight requests finish in the grace period
        if self.options.llm_arrival == "closed":
            self.send_request()
            return
        gevent.sleep(arrival_schedule(self.options).next_delay_s(time.monotonic()))
        if "stop" in _window:
            return  # the window ended while this arrival was pending: nothing is sent after it
        if self.inflight >= self.options.llm_max_inflight:
            now = time.time()
            self._record(RequestRecord(start=now, end=now, ok=False, error="dropped: client at max in-flight",
                                       request_id=next_request_id()))
            return
        self.inflight += 1
        gevent.spawn(self._send_counted)

    def _send_counted(self) -> None:
        try:
            self.send_request()
        finally:
            self.inflight -= 1

    def send_request(self, warmup: bool = False) -> RequestRecord:
        global _in_flight, _sent
        options = self.options
        assert _workload is not None, "the init event builds the workload"
        prompt = _workload.next(self.rng)
        stream = not options.llm_no_stream
        # Multi-turn (closed-loop chat, not the warm-up): the conversation's system prompt and history; the answer
        # is collected for the next turn.
        talking = self.conversation.turns > 1 and not warmup and options.llm_endpoint == "chat" \
            and options.llm_arrival == "closed"
        system, history, turn = self.conversation.start_turn(prompt.system, prompt.text, prompt.max_tokens) \
            if talking else (prompt.system, [], 0)
        answer: list[str] | None = [] if talking else None
        body = request_body(options.llm_endpoint, self.model, prompt.text, prompt.max_tokens, stream,
                            options.llm_temperature, system=system, history=history)
        path = endpoint_path(options.llm_endpoint)
        record = RequestRecord(start=time.time(), end=0.0, ok=False, stream=stream, warmup=warmup, turn=turn,
                               request_id=next_request_id())
        started = time.perf_counter()
        _in_flight += 1
        _sent += 1
        with self.client.post(path, data=json.dumps(body), stream=stream,
                              headers={**self.post_headers, REQUEST_ID_HEADER: record.request_id},
                              catch_response=True, name=path) as resp:
            record.status = resp.status_code or 0
            record.replica = (resp.headers or {}).get(REPLICA_HEADER, "") if record.status else ""
            try:
                if record.status != 200:
                    record.error = getattr(resp, "error", None) and repr(resp.error) or f"HTTP {record.status}: " \
                        f"{(resp.text or '')[:200]}"
                elif stream:
                    self._read_stream(resp, record, started, answer)
                else:
                    data = resp.json()
                    record.output_tokens = int(data["usage"]["completion_tokens"])
                    record.prompt_tokens = int(data["usage"]["prompt_tokens"])
                    record.cached_tokens = cached_tokens(data["usage"])
                    if answer is not None:
                        answer.append(data["choices"][0]["message"]["content"] or "")
                    record.ok = True
            except Exception as error:  # a dropped connection mid-stream is a failed request, not a crash
                record.error = f"{type(error).__name__}: {error}"[:300]
                record.ok = False
            record.e2e_s = record.e2e_s or time.perf_counter() - started
            record.end = record.start + record.e2e_s
            resp.request_meta["response_time"] = record.e2e_s * 1000
            resp.request_meta["response_length"] = record.output_tokens
            if record.ok:
                resp.success()
            else:
                resp.failure(record.error or "failed")
            # Log before leaving the block, where Locust counts the request: nothing between here and that count
            # yields to another greenlet, so a run stopped at any moment has exactly one line per counted request.
            self._record(record)
            _in_flight -= 1
            self._fire_token_events(record)
        if talking and record.ok:
            self.conversation.answered(prompt.text, "".join(answer))
        elif talking:
            self.conversation.reset()
        return record

    def _read_stream(self, resp, record: RequestRecord, started: float, answer: list[str] | None = None) -> None:
        """Time every chunk; `answer` (a multi-turn user's) also collects the text, which the fast path skips."""
        raw = resp._response  # geventhttpclient response: readline returns each SSE line as soon as it arrives
        saw_done = False
        chunks = 0
        token_times = record.token_times_s
        perf_counter = time.perf_counter
        while True:
            line = raw.readline(b"\n")
            if not line:
                break
            if line in _BLANK_LINES:  # the separator after every SSE event: half of all lines
                continue
            now = perf_counter()  # before any parsing, so parsing cost is never part of the measured latency
            # Fast path: a `data: {...}` line that certainly holds a piece of text, or the end of the stream.
            if answer is None and line.startswith(b"data: {") and chunk_has_text_fast(line[6:].rstrip()):
                chunks += 1
                token_times.append(now - started)
                continue
            if line.rstrip() == b"data: [DONE]":
                saw_done = True
                break
            event = parse_sse_line(line.decode("utf-8", errors="replace"))
            if event is None:
                continue
            if event.error:
                raise RuntimeError(f"server error in stream: {event.error}")
            if event.done:
                saw_done = True
                break
            if event.text:
                chunks += 1
                token_times.append(now - started)
                if answer is not None:
                    answer.append(event.text)
            if event.usage:
                record.output_tokens = int(event.usage.get("completion_tokens", 0))
                record.prompt_tokens = event.usage.get("prompt_tokens")
                record.cached_tokens = cached_tokens(event.usage)
        if not saw_done:
            raise ConnectionError("stream ended before [DONE]")
        record.e2e_s = perf_counter() - started  # the answer is complete; the body's closing bytes are not latency
        self._reuse_connection(raw)
        record.output_tokens = record.output_tokens or chunks
        record.ttft_s = token_times[0] if token_times else None
        record.ok = True

    @staticmethod
    def _reuse_connection(raw) -> None:
        """Read the end of the chunked body after `[DONE]` and hand the connection back to the pool.

        Without this, a stream whose terminating chunk had not arrived together with `[DONE]` closed its
        connection, and the next request paid a new TCP connection on both sides (60% of requests against the
        benchmark's server). A server that never ends the body costs at most DRAIN_TIMEOUT_S and its connection.
        """
        try:
            if not raw.message_complete:
                with gevent.Timeout(DRAIN_TIMEOUT_S, False):
                    while raw.readline(b"\n"):
                        pass
            if raw.message_complete:
                raw.release()
        except Exception:  # the answer is complete and measured; this connection is just not reused
            pass

    def _record(self, record: RequestRecord) -> None:
        if _request_log is not None:
            _request_log.write(record)

    def _fire_token_events(self, record: RequestRecord) -> None:
        """TTFT and TPOT rows ("LLM ttft", "LLM tpot") in Locust's statistics, so the web UI charts them.

        Logged straight into their statistics entries instead of firing two more `request` events per request:
        half the cost, and the "Aggregated" row keeps counting HTTP requests only (it counted every request
        three times). The exact values are in the JSONL log either way.
        """
        if not record.ok or record.ttft_s is None:
            return
        stats = self.environment.stats
        stats.get("ttft", "LLM").log(record.ttft_s * 1000, record.output_tokens)
        tpot_s = time_per_output_token_s(record.e2e_s, record.ttft_s, record.output_tokens)
        if tpot_s is not None:
            stats.get("tpot", "LLM").log(tpot_s * 1000, record.output_tokens)


def cached_tokens(usage: dict) -> int | None:
    """OpenAI's `usage.prompt_tokens_details.cached_tokens`, when the server returns it."""
    details = usage.get("prompt_tokens_details")
    value = details.get("cached_tokens") if isinstance(details, dict) else None
    return int(value) if isinstance(value, (int, float)) else None


# --- Open-loop arrivals: one schedule per process, shared by its users (loadtests/arrivals.py) ----------------------

_schedule: arrivals.ArrivalSchedule | None = None


def _positive_float(text: str) -> float:
    import argparse

    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


@events.init_command_line_parser.add_listener
def _add_arrival_options(parser) -> None:
    parser.add_argument("--llm-burstiness", type=_positive_float, default=arrivals.BURSTINESS,
                        env_var=LoadEnv.BURSTINESS,
                        help="poisson arrivals: gamma shape of the gaps, mean 1/rate (vLLM's --burstiness); 1 is "
                             "Poisson, below 1 burstier, above 1 more regular")


def arrival_schedule(options) -> arrivals.ArrivalSchedule:
    """This process's open-loop arrival stream, created on first use: --llm-rate split evenly over the Locust
    processes (--processes N), whatever number of users each runs."""
    global _schedule
    if _schedule is None:
        processes = max(1, getattr(options, "processes", None) or 1)
        _schedule = arrivals.ArrivalSchedule(options.llm_arrival, options.llm_rate / processes, options.llm_burstiness)
    return _schedule
