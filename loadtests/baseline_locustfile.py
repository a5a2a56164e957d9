"""A plain FastHttpUser hitting GET /health: the load generator's ceiling, against which the LLM user's own
per-request cost (SSE parsing, timing, JSONL log) is compared in benchmarks/inference_loadgen.py."""

from locust import FastHttpUser, constant, task


class PlainUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def health(self) -> None:
        self.client.get("/health")
