"""An OpenAI-compatible endpoint (no model) with a known capacity, for the capacity search test and benchmark:

    FAKE_CAPACITY_RPS=40 uvicorn benchmarks.capacity_fake_openai:app

It measures the request rate it receives -- requests received in the last WINDOW_S seconds / WINDOW_S -- and answers
the first token after FAST_TTFT_S while that rate is at most FAKE_CAPACITY_RPS, after SLOW_TTFT_S above it. So the
TTFT of most requests rises past the known rate: a median-TTFT SLO between the two holds below it and breaks above
it, up to the noise of the measured rate (and for the first WINDOW_S of a load point, which the window carries over
from the previous point and then fills up). Every answer streams ANSWER_TOKENS one-token chunks, a usage
chunk and `[DONE]` (FAKE_ANSWER_TOKENS, FAKE_TTFT_S and FAKE_TOKEN_GAP_S change the answer's length and pace).

It also counts what it answered, for the many-workers benchmark: `GET /stats` returns the chat requests received
and every `x-request-id` header they carried, in arrival order (so a merged client log can be matched to it,
request by request).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time

CAPACITY_RPS = float(os.environ.get("FAKE_CAPACITY_RPS", "40"))
FAST_TTFT_S = float(os.environ.get("FAKE_TTFT_S", "0.005"))
SLOW_TTFT_S = 0.4
WINDOW_S = 1.0
ANSWER_TOKENS = int(os.environ.get("FAKE_ANSWER_TOKENS", "4"))
TOKEN_GAP_S = float(os.environ.get("FAKE_TOKEN_GAP_S", "0"))
"""0: every token in one body; > 0: one chunk per token, this far apart (a decode pace, for the AIPerf
conformance benchmark, whose TPOT needs one)."""

_CHUNK = json.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "tok"}}]})
_USAGE = json.dumps({"object": "chat.completion.chunk", "choices": [],
                     "usage": {"prompt_tokens": 8, "completion_tokens": ANSWER_TOKENS,
                               "total_tokens": 8 + ANSWER_TOKENS}})
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream")]


class RateMeter:
    """Requests per second over the last WINDOW_S seconds, this one included."""

    def __init__(self) -> None:
        self.arrivals: collections.deque[float] = collections.deque()

    def arrive(self, now: float) -> float:
        self.arrivals.append(now)
        while self.arrivals[0] < now - WINDOW_S:
            self.arrivals.popleft()
        return len(self.arrivals) / WINDOW_S


_meter = RateMeter()
_received_ids: list[str] = []
"""The x-request-id of every chat request received ("" when a request had none)."""


async def _reply(send, status: int, headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):  # read the request body to its end before answering
        pass
    route = (scope["method"], scope["path"])
    if route == ("GET", "/health"):
        await _reply(send, 200, _JSON, b'{"status":"ok"}')
    elif route == ("GET", "/v1/models"):
        await _reply(send, 200, _JSON, b'{"object":"list","data":[{"id":"fake","object":"model"}]}')
    elif route == ("GET", "/stats"):
        await _reply(send, 200, _JSON, json.dumps({"chat_requests": len(_received_ids),
                                                    "request_ids": _received_ids}).encode())
    elif route == ("POST", "/v1/chat/completions"):
        _received_ids.append(dict(scope["headers"]).get(b"x-request-id", b"").decode())
        rate = _meter.arrive(time.monotonic())
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        await asyncio.sleep(FAST_TTFT_S if rate <= CAPACITY_RPS else SLOW_TTFT_S)
        if TOKEN_GAP_S > 0:
            for index in range(ANSWER_TOKENS):
                if index:
                    await asyncio.sleep(TOKEN_GAP_S)
                await send({"type": "http.response.body", "body": f"data: {_CHUNK}\n\n".encode(), "more_body": True})
            body = f"data: {_USAGE}\n\ndata: [DONE]\n\n"
        else:
            body = "".join(f"data: {_CHUNK}\n\n" for _ in range(ANSWER_TOKENS)) + f"data: {_USAGE}\n\ndata: [DONE]\n\n"
        await send({"type": "http.response.body", "body": body.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await _reply(send, 404, _JSON, b'{"error":{"message":"not found"}}')
