"""The real server (gunicorn + uvicorn workers) with the official openai client, a fuzzer and TLS."""

from __future__ import annotations

import json
import os
import random
import signal
import ssl
import time
from pathlib import Path

import httpx
import openai
import pytest

from dcforge.steps.serving.credentials import private_dir
from dcforge.steps.serving.server import LocalServer, child_pids
from dcforge.steps.serving.settings import ModelChoice, ServingLoadConfig
from dcforge.compliance.endpoint import check_endpoint

pytestmark = pytest.mark.slow
KEY = "integration-key-0123456789"
MODEL = "dcforge-gpt"


def start_server(tmp_path_factory, replicas: int, tls: bool, quantize: str = "none"):
    secrets = private_dir()
    secrets_dir = secrets.__enter__()
    server = LocalServer(ServingLoadConfig(replicas=replicas, tls=tls, quantize=quantize),
                         ModelChoice("random:tiny", None, 256),
                         secrets_dir, tmp_path_factory.mktemp("server"), KEY)
    server.__enter__()
    try:
        server.wait_ready(90)
    except Exception:
        server.__exit__(None, None, None)
        secrets.__exit__(None, None, None)
        raise
    return server, secrets


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server, secrets = start_server(tmp_path_factory, replicas=2, tls=False)
    yield server
    server.__exit__(None, None, None)
    secrets.__exit__(None, None, None)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=30)


def test_openai_client_non_streaming(client):
    assert [(m.id, m.model_extra["precision"]) for m in client.models.list()] == [(MODEL, "fp32")]
    completion = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert completion.usage.completion_tokens == 6 and completion.choices[0].finish_reason == "length"
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                          seed=11, extra_body={"ignore_eos": True})
    again = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                           seed=11, extra_body={"ignore_eos": True})
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == again.choices[0].message.content  # same seed, same answer
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + 4


def test_int8_server_answers_the_openai_client_and_says_int8(tmp_path_factory):
    """`--quantize int8` end to end: the replica quantizes its model, /v1/models and /metrics say int8, and the
    official client completes a non-streaming and a streaming request."""
    server, secrets = start_server(tmp_path_factory, replicas=1, tls=False, quantize="int8")
    try:
        int8 = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=30)
        [model] = int8.models.list().data
        assert (model.id, model.model_extra["precision"]) == (MODEL, "int8")
        assert 'dcforge_served_precision{precision="int8"} 1.0' in server.scrape_metrics()
        completion = int8.completions.create(model=MODEL, prompt="Hello", max_tokens=6, temperature=0,
                                             extra_body={"ignore_eos": True})
        assert completion.usage.completion_tokens == 6 and completion.choices[0].finish_reason == "length"
        stream = int8.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "stream"}],
                                              max_tokens=8, stream=True, stream_options={"include_usage": True},
                                              extra_body={"ignore_eos": True})
        chunks = list(stream)
        assert chunks[-1].usage.completion_tokens == 8
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    finally:
        server.__exit__(None, None, None)
        secrets.__exit__(None, None, None)


def test_openai_client_streaming(client):
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "stream"}],
                                            max_tokens=8, stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 8 and text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    completion_stream = client.completions.create(model=MODEL, prompt="abc", max_tokens=5, stream=True,
                                                  extra_body={"ignore_eos": True})
    pieces = [c.choices[0].text for c in completion_stream]
    assert "".join(pieces)


def test_openai_client_sees_errors_as_exceptions(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=0)
    bad_key = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()


def fuzz_cases(seed: int = 1234) -> list[tuple[str, str, dict, bytes]]:
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    valid = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    as_json = lambda body: json.dumps(body).encode()  # noqa: E731
    cases = [
        ("POST", "/v1/chat/completions", auth, b"{not json"),
        ("POST", "/v1/chat/completions", auth, b""),
        ("POST", "/v1/chat/completions", auth, b"\xff\xfe\x00garbage"),
        ("POST", "/v1/chat/completions", auth, b"[" * 100_000),
        ("POST", "/v1/chat/completions", auth, as_json([valid])),
        ("POST", "/v1/chat/completions", auth, b"null"),
        ("POST", "/v1/chat/completions", auth, as_json({**valid, "max_tokens": 0})),
        ("POST", "/v1/chat/completions", auth, as_json({**valid, "max_tokens": -1})),
        ("POST", "/v1/chat/completions", auth, as_json({**valid, "max_tokens": 10**30})),
        ("POST", "/v1/chat/completions", auth, as_json({**valid, "max_tokens": 2.5})),
        ("POST", "/v1/chat/completions", auth, as_json({**valid, "temperature": "hot"})),
        ("POST", "/v1/chat/completions", auth, as_json({**valid, "temperature": float("nan")}).replace(b"NaN", b"1e999")),
        ("POST", "/v1/chat/completions", auth, as_json({**valid, "stop": 5})),
        ("POST", "/v1/chat/completions", auth, as_json({**valid, "stream": "yes"})),
        ("POST", "/v1/chat/completions", auth, as_json({**valid, "messages": []})),
        ("POST", "/v1/chat/completions", auth, as_json({**valid, "messages": [{"role": "robot", "content": "x"}]})),
        ("POST", "/v1/chat/completions", auth, as_json({**valid, "messages": [{"role": "user", "content": 7}]})),
        ("POST", "/v1/chat/completions", auth, as_json({**valid, "model": "unknown-model"})),
        ("POST", "/v1/chat/completions", auth, as_json({**valid, "seed": "abc"})),
        ("POST", "/v1/chat/completions", auth, as_json({**valid, "messages": [{"role": "user", "content": "x" * 5000}]})),
        ("POST", "/v1/chat/completions", auth, b'{"model": "' + b"x" * 2_000_000 + b'"}'),
        ("POST", "/v1/completions", auth, as_json({"model": MODEL, "prompt": [-1, 5]})),
        ("POST", "/v1/completions", auth, as_json({"model": MODEL, "prompt": [[1, 2]]})),
        ("POST", "/v1/completions", auth, as_json({"model": MODEL, "prompt": "é" * 100, "max_tokens": 250})),
        ("POST", "/v1/completions", {**auth, "Content-Type": "text/plain"}, as_json({"model": MODEL, "prompt": "x"})),
        ("POST", "/v1/completions", {"Content-Type": "application/json"}, as_json({"model": MODEL, "prompt": "x"})),
        ("POST", "/v1/completions", {**auth, "Authorization": "Bearer"}, as_json({"model": MODEL, "prompt": "x"})),
        ("POST", "/v1/completions", {**auth, "Content-Length": "abc"}, b"{}"),
        ("GET", "/v1/completions", auth, b""),
        ("DELETE", "/v1/models", auth, b""),
        ("GET", "/v1/../../etc/passwd", auth, b""),
    ]
    rng = random.Random(seed)  # random mutations of a valid body: drop, retype or garble one field at a time
    junk = [None, -1, 0, 1e308, "", "x" * 300, [], {}, [1, "a"], True, {"$ne": 1}]
    for _ in range(40):
        body = dict(valid)
        key = rng.choice(list(body) + ["n", "stop", "stream_options", "max_completion_tokens", "prompt"])
        if rng.random() < 0.2:
            body.pop(key, None)
        else:
            body[key] = rng.choice(junk)
        cases.append(("POST", "/v1/chat/completions", auth, as_json(body)))
    return cases


def test_fuzzed_requests_never_get_5xx_and_the_server_stays_up(server):
    server_errors = []
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        for method, path, headers, body in fuzz_cases():
            try:
                response = http.request(method, path, headers=headers, content=body)
            except httpx.LocalProtocolError:  # the client itself refused to send it: nothing reached the server
                continue
            except httpx.HTTPError as error:
                server_errors.append(("transport", path, repr(error)))
                continue
            if response.status_code >= 500:
                server_errors.append((response.status_code, path, body[:120]))
            elif response.status_code >= 400:
                assert "error" in response.json(), (path, body[:120])
    assert server_errors == []
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    ok = httpx.post(f"{server.base_url}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                    json={"model": MODEL, "prompt": "still alive?", "max_tokens": 3}, timeout=30)
    assert ok.status_code == 200
    assert len(server.ready_pids()) == 2  # no replica crashed and got replaced


def test_client_that_disconnects_mid_stream_frees_its_slot(server):
    body = {"model": MODEL, "prompt": "abandon", "max_tokens": 200, "stream": True, "ignore_eos": True}
    with httpx.Client(base_url=server.base_url, timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            next(response.iter_lines())
        time.sleep(0.5)
        metrics = http.get("/metrics").text
    active = [line for line in metrics.splitlines() if line.startswith("dcforge_active_sequences ")]
    assert active and float(active[0].split()[1]) == 0.0


def test_engine_counts_reach_the_replicas_metrics(server):
    """The forward passes run in the engine processes; their batch sizes and timings are on /metrics."""
    http = httpx.Client(base_url=server.base_url, timeout=30, headers={"Authorization": f"Bearer {KEY}"})
    with http:
        assert http.post("/v1/completions", json={"model": MODEL, "prompt": "count me", "max_tokens": 4,
                                                  "ignore_eos": True}).status_code == 200
        metrics = http.get("/metrics").text
    counts = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line.startswith(("dcforge_batch_size_count", "dcforge_forward_seconds_count"))}
    for phase in ("prefill", "decode"):
        assert counts[f'dcforge_batch_size_count{{phase="{phase}"}}'] >= 1
        assert counts[f'dcforge_forward_seconds_count{{phase="{phase}"}}'] >= 1


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def gone_within(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_a_killed_replica_takes_its_engine_and_a_dead_engine_takes_its_replica(tmp_path_factory):
    """Each replica's engine runs in a child process: SIGKILL the replica and its engine process dies too (no
    orphan), and gunicorn's new replica serves with a new engine; SIGKILL an engine process and its replica exits
    and is replaced the same way."""
    server, secrets = start_server(tmp_path_factory, replicas=1, tls=False)
    body = {"model": MODEL, "prompt": "after failover", "max_tokens": 3}
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        [replica] = server.ready_pids()
        [engine] = child_pids(replica)
        os.kill(replica, signal.SIGKILL)
        assert gone_within(engine), "the engine process outlived its SIGKILLed replica"
        second, _ = server.wait_respawn({replica}, 90)
        assert httpx.post(f"{server.base_url}/v1/completions", json=body, headers=auth, timeout=30).status_code == 200
        [second_engine] = child_pids(second)
        os.kill(second_engine, signal.SIGKILL)
        assert gone_within(second), "the replica kept running without its engine process"
        third, _ = server.wait_respawn({replica, second}, 90)
        assert httpx.post(f"{server.base_url}/v1/completions", json=body, headers=auth, timeout=30).status_code == 200
        assert len(child_pids(third)) == 1
    finally:
        server.__exit__(None, None, None)
        secrets.__exit__(None, None, None)


def test_endpoint_compliance_plain(server):
    findings = check_endpoint(server.base_url, MODEL)
    assert [f.rule for f in findings] == ["api-key-required"] and all(f.passed for f in findings)


def test_tls_server_refuses_legacy_tls_and_serves_the_openai_client(tmp_path_factory):
    tls_server, secrets = start_server(tmp_path_factory, replicas=1, tls=True)
    try:
        findings = check_endpoint(tls_server.base_url, MODEL)
        assert {f.rule: f.passed for f in findings} == {"api-key-required": True, "tls-minimum-version": True}
        client = openai.OpenAI(base_url=f"{tls_server.base_url}/v1", api_key=KEY, max_retries=0,
                               http_client=httpx.Client(verify=ssl.create_default_context(cafile=tls_server.ca_file)))
        assert client.completions.create(model=MODEL, prompt="tls", max_tokens=2).usage.completion_tokens >= 1
    finally:
        tls_server.__exit__(None, None, None)
        secrets.__exit__(None, None, None)
