"""Locust listeners loaded next to the user under test (`-f user_locustfile.py,benchmarks/inference_loadgen_probe.py`):
the Locust process's own CPU seconds, wall seconds and HTTP request count between the moment every user is
running and the moment the run stops, written as JSON to $LOADGEN_PROBE_OUT. Same probe for every user type, so
the benchmark compares like with like and process start-up (imports, spawning) stays out of the figures."""

import json
import os
import resource
import time

from locust import events

_environments: list = []
_start: dict[str, float] = {}


def _mark(environment) -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # Only HTTP entries: the LLM user's custom "LLM ttft/tpot" rows describe the same requests again.
    requests = sum(entry.num_requests for (_name, method), entry in environment.runner.stats.entries.items()
                   if method in ("GET", "POST"))
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.perf_counter(), "requests": requests}


@events.init.add_listener
def _remember(environment, **_kwargs) -> None:
    _environments.append(environment)


@events.spawning_complete.add_listener
def _all_users_running(**_kwargs) -> None:
    if not _start:
        _start.update(_mark(_environments[0]))


@events.test_stopping.add_listener
def _stopping(environment, **_kwargs) -> None:
    if _start:
        stop = _mark(environment)
        with open(os.environ["LOADGEN_PROBE_OUT"], "w") as handle:
            json.dump({key: stop[key] - _start[key] for key in stop}, handle)
        _start.clear()
