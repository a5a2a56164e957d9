"""Multi-replica serving: balance, arrival spread and TTFT side by side (python -m benchmarks.inference_replicas).

Three settings of the `inference` check, as the local environment configures it (3 replicas, 8 closed-loop users,
20 s, 64-token prompts, 32 output tokens, tiny GPT), one run each per round, rounds interleaved:

- keep-alive: `balance: connections`, no think time, no start jitter (the behaviour before issue 15);
- per-request: `balance: requests`, no think time, no start jitter;
- default: `balance: requests` with the default exponential think time and start jitter.

Per run it prints req/s, TTFT p50/p95, the answered requests per replica, the least-loaded replica's share times the
replica count (1 = fair), the median gap between consecutive request starts and the share of starts under 1 ms
apart. The load average is printed before and after: figures taken above ~2 on a 2-core machine are noise.
"""

from __future__ import annotations

import argparse

from benchmarks.train_overhead import load_average, run_check

BASE = {"replicas": 3, "users": 8, "durationS": 20, "promptTokens": 64, "maxTokens": 32}
SETTINGS = {
    "keep-alive": {"balance": "connections", "thinkTimeS": 0, "startJitterS": 0},
    "per-request": {"balance": "requests", "thinkTimeS": 0, "startJitterS": 0},
    "default": {"balance": "requests"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    rounds = parser.parse_args().rounds
    print(f"load average (1, 5, 15 min) at start: {load_average()}")
    print("| setting | req/s | TTFT p50 / p95 (ms) | requests per replica | share min x replicas | start gap p50 (ms) "
          "| starts < 1 ms apart |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for _ in range(rounds):
        for label, settings in SETTINGS.items():
            result = run_check("inference", {**BASE, **settings})
            value = {key: metric.value for key, metric in result.metrics.items()}
            counts = result.details["requests_per_replica"]["all requests"].values()
            print(f"| {label} | {value['request_throughput']:.1f} "
                  f"| {value['p50_ttft_ms']:.0f} / {value['p95_ttft_ms']:.0f} "
                  f"| {' / '.join(str(count) for count in counts)} | {value['replica_share_min_to_fair']:.2f} "
                  f"| {value['start_gap_ms.p50']:.1f} | {value['starts_in_lockstep_fraction']:.0%} |", flush=True)
    print(f"load average (1, 5, 15 min) at end: {load_average()}")


if __name__ == "__main__":
    main()
