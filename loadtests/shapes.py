"""Load shapes for the LLM user. Load together with the locustfile (Locust uses the shape class it finds):

    LLM_STAGES="10:4,30:16:8,40:0" locust -f loadtests/locustfile.py,loadtests/shapes.py --headless --host ...

Each stage is `until_s:users[:spawn_rate]`; the run stops after the last stage. A step ramp like this finds the
concurrency where TTFT starts to climb (the knee of the latency/throughput curve).
"""

from __future__ import annotations

import os

from locust import LoadTestShape

try:
    from loadtests.llm_protocol import parse_stages
except ImportError:  # run outside an install: Locust puts this directory on sys.path
    from llm_protocol import parse_stages  # type: ignore[no-redef]


class StagedShape(LoadTestShape):
    """Users over time from LLM_STAGES (default: 10 s at 2, 10 s at 8, 10 s at 16 users)."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = parse_stages(os.environ.get("LLM_STAGES", "10:2,20:8,30:16"))

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        for stage in self.stages:
            if elapsed < stage.until_s:
                return stage.users, stage.spawn_rate
        return None
