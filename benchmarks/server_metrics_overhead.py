"""What scraping the server's /metrics during a load costs the server (python -m benchmarks.server_metrics_overhead).

The bundled server (3 replicas, the tiny preset) under a steady closed-loop load of streamed completions from a
thread pool; alternating 10-s blocks with and without a scraper reading /metrics every 0.5 s (the `inference`
check's default); completed requests per second of each block. Also the server-side cost of one scrape (wall time
of GET /metrics) and the engine-side cost of publishing one step's state (`LoadMetrics.__call__`, the only work
added to the serving path), so the overhead can be read without the noise of a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from dcforge.steps.serving.credentials import private_dir
from dcforge.steps.serving.server import LocalServer
from dcforge.steps.serving.settings import ModelChoice, ServingLoadConfig
from loadtests.server_metrics import Scraper

KEY = "bench-key-0123456789abcdef"


def load_block(base_url: str, seconds: float, users: int) -> float:
    """Completed requests per second of `users` threads sending streamed 16-token completions for `seconds`."""
    done = []
    stop_at = time.monotonic() + seconds

    def user() -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < stop_at:
                body = {"model": "dcforge-gpt", "prompt": "benchmark " * 6, "max_tokens": 16, "ignore_eos": True,
                        "temperature": 0}
                if client.post(f"{base_url}/v1/completions", json=body,
                               headers={"Authorization": f"Bearer {KEY}"}).status_code == 200:
                    done.append(1)

    threads = [threading.Thread(target=user) for _ in range(users)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(done) / (time.monotonic() - started)


def publish_cost_us(repeats: int = 20000) -> float:
    """Microseconds per `LoadMetrics.__call__` (what every engine step adds), in this process."""
    from workloads.serving.engine import EngineLoad
    from workloads.serving.metrics import LoadMetrics

    publish = LoadMetrics("bench")
    started = time.perf_counter()
    for step in range(repeats):
        publish(EngineLoad(step % 3, 8, step / repeats, step * 10, step * 4))
    return (time.perf_counter() - started) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="blocks with and without scraping, alternated")
    parser.add_argument("--block-s", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=8)
    args = parser.parse_args()
    print(f"load average (1, 5, 15 min) at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"publishing one step's state: {publish_cost_us():.1f} us")
    with private_dir() as secrets:
        server = LocalServer(ServingLoadConfig(replicas=3), ModelChoice("random:tiny", None, 256), secrets,
                             Path(tempfile.mkdtemp(prefix="bench-scrape-")), KEY)
        with server:
            server.wait_ready(120)
            with httpx.Client() as client:
                scrape_ms = []
                for _ in range(50):
                    started = time.perf_counter()
                    client.get(f"{server.base_url}/metrics").raise_for_status()
                    scrape_ms.append((time.perf_counter() - started) * 1000)
            print(f"one /metrics scrape (3 replicas): median {statistics.median(scrape_ms):.1f} ms, "
                  f"= {statistics.median(scrape_ms) / 500:.2%} of one core at one scrape per 0.5 s")
            load_block(server.base_url, 3.0, args.users)  # warm-up
            plain, scraped = [], []
            for _ in range(args.pairs):
                plain.append(load_block(server.base_url, args.block_s, args.users))
                with Scraper(f"{server.base_url}/metrics", 0.5):
                    scraped.append(load_block(server.base_url, args.block_s, args.users))
            print(f"req/s without scraping: {', '.join(f'{v:.2f}' for v in plain)} (median "
                  f"{statistics.median(plain):.2f})")
            print(f"req/s scraping /0.5 s:  {', '.join(f'{v:.2f}' for v in scraped)} (median "
                  f"{statistics.median(scraped):.2f})")
            print(f"throughput change: {statistics.median(scraped) / statistics.median(plain) - 1:+.1%}")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
