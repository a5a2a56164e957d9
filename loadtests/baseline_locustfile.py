"""Plain FastHttpUsers: the load generator's ceiling, against which the LLM user's own per-request cost (SSE
parsing, timing, events, JSONL log) is compared in benchmarks/inference_loadgen.py.

`PlainChatUser` is the like-for-like baseline: it POSTs a request of the LLM user's size to the same endpoint and
reads the same streamed answer, but in one piece, with no parsing, timing or log. `PlainHealthUser` (GET /health,
the original baseline) is kept as a reference for the cost of the bigger request and answer. Pick one with
`locust -f loadtests/baseline_locustfile.py PlainChatUser`.
"""

import json

from locust import FastHttpUser, constant, task

# The LLM user's request at its default settings: a ~64-token prompt, 8 max tokens, streaming with usage.
_BODY = json.dumps({"model": "fake", "max_tokens": 8, "temperature": 1.0, "stream": True,
                    "stream_options": {"include_usage": True}, "ignore_eos": True,
                    "messages": [{"role": "user", "content": "x" * 64}]})
_HEADERS = {"Authorization": "Bearer x", "Content-Type": "application/json"}


class PlainChatUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def chat(self) -> None:
        self.client.post("/v1/chat/completions", data=_BODY, headers=_HEADERS)


class PlainHealthUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def health(self) -> None:
        self.client.get("/health")
