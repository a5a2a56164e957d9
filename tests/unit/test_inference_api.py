"""The ASGI app in-process: OpenAI shapes, auth, limits and OpenAI-style errors for bad input."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from workloads.serving.app import REPLICA_HEADER, create_app
from workloads.serving.settings import EngineSettings, LimitSettings, ServerSettings, read_api_key

KEY = "unit-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def client():
    settings = ServerSettings(limits=LimitSettings(max_body_bytes=4096, max_tokens=64), api_key=KEY)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_models_need_the_key_and_list_the_served_model(client):
    refused = client.get("/v1/models")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    listed = client.get("/v1/models", headers=AUTH)
    assert listed.json()["data"][0]["id"] == "dcforge-gpt"
    assert listed.headers[REPLICA_HEADER].isdigit()


def test_completion_usage_and_max_tokens(client):
    body = {"model": "dcforge-gpt", "prompt": "hello", "max_tokens": 7, "temperature": 0, "ignore_eos": True}
    data = client.post("/v1/completions", json=body, headers=AUTH).json()
    assert data["object"] == "text_completion"
    assert data["usage"] == {"prompt_tokens": 6, "completion_tokens": 7, "total_tokens": 13,  # BOS + 5 bytes
                             "prompt_tokens_details": {"cached_tokens": 0}}
    assert data["choices"][0]["finish_reason"] == "length"
    again = client.post("/v1/completions", json=body, headers=AUTH).json()
    assert again["choices"][0]["text"] == data["choices"][0]["text"]  # temperature 0 is deterministic


def test_chat_stream_is_openai_sse_ending_in_done(client):
    body = {"model": "dcforge-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True, "seed": 3}
    with client.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("body, status", [
    ({"model": "dcforge-gpt", "prompt": "x", "max_tokens": 0}, 400),
    ({"model": "dcforge-gpt", "prompt": "x", "max_tokens": -5}, 400),
    ({"model": "dcforge-gpt", "prompt": "x", "max_tokens": 65}, 400),
    ({"model": "dcforge-gpt", "prompt": "x", "max_tokens": "ten"}, 400),
    ({"model": "dcforge-gpt", "prompt": 42}, 400),
    ({"model": "dcforge-gpt", "prompt": "x", "temperature": 9}, 400),
    ({"model": "dcforge-gpt", "prompt": "x", "n": 2}, 400),
    ({"model": "dcforge-gpt", "prompt": [999999]}, 400),
    ({"model": "dcforge-gpt", "prompt": "x" * 300, "max_tokens": 10}, 400),  # over the 256-token context
    ({"model": "other", "prompt": "x"}, 404),
    ({"prompt": "x"}, 400),
])
def test_bad_requests_get_openai_errors(client, body, status):
    response = client.post("/v1/completions", json=body, headers=AUTH)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and error["type"]


def test_transport_level_refusals(client):
    assert client.post("/v1/completions", content=b"{nope", headers={**AUTH, "Content-Type": "application/json"}
                       ).status_code == 400
    assert client.post("/v1/completions", content=b"prompt=x", headers={**AUTH, "Content-Type": "text/plain"}
                       ).status_code == 415
    huge = client.post("/v1/completions", content=b"{" + b" " * 5000 + b"}",
                       headers={**AUTH, "Content-Type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["message"]
    assert client.get("/v1/nowhere", headers=AUTH).json()["error"]["code"] == "not_found"
    assert client.get("/health").status_code == 200 and client.get("/ready").json()["status"] == "ready"
    assert "dcforge_requests_total" in client.get("/metrics").text


def test_both_engine_placements_give_the_same_greedy_answer_and_report_readiness(client):
    """The default serves from the replica's engine process; `isolation: thread` from a thread of this process."""
    body = {"model": "dcforge-gpt", "prompt": "placement", "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    answers = [client.post("/v1/completions", json=body, headers=AUTH).json()["choices"][0]["text"]]
    settings = ServerSettings(engine=EngineSettings(isolation="thread"), api_key=KEY)
    with TestClient(create_app(settings)) as in_thread:
        ready = in_thread.get("/ready").json()
        assert ready["status"] == "ready" and ready["active_sequences"] == 0
        answers.append(in_thread.post("/v1/completions", json=body, headers=AUTH).json()["choices"][0]["text"])
    assert client.get("/ready").json()["status"] == "ready"
    assert answers[0] == answers[1]


def test_app_refuses_to_exist_without_a_key():
    with pytest.raises(ValueError, match="API key"):
        create_app(ServerSettings(api_key=""))


def test_api_key_from_env_or_file(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert read_api_key({"DCFORGE_API_KEY": "from-env", "DCFORGE_API_KEY_FILE": str(key_file)}) == "from-env"
    assert read_api_key({"DCFORGE_API_KEY_FILE": str(key_file)}) == "from-file"
    assert read_api_key({}) == ""
    assert "secret" not in repr(ServerSettings(api_key="secret"))


@pytest.mark.parametrize("stop", ["", [""], ["", ""]])
def test_an_empty_stop_string_is_no_stop(client, stop):
    body = {"model": "dcforge-gpt", "prompt": "hello", "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    plain = client.post("/v1/completions", json=body, headers=AUTH)
    stopped = client.post("/v1/completions", json={**body, "stop": stop}, headers=AUTH)
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["choices"][0]["text"] == plain.json()["choices"][0]["text"]
    assert stopped.json()["usage"]["completion_tokens"] == 6


def test_more_than_four_stop_strings_are_refused(client):
    body = {"model": "dcforge-gpt", "prompt": "hello", "stop": ["a", "b", "c", "d", "e"]}
    response = client.post("/v1/completions", json=body, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "stop" and "at most 4" in response.json()["error"]["message"]


def test_a_wrong_method_gets_405_with_an_allow_header(client):
    response = client.get("/v1/completions", headers=AUTH)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["message"]
    assert client.post("/health").headers["allow"] == "GET"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_missing_or_wrong_content_type_gets_415(client, content_type):
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    response = client.post("/v1/completions", content=b'{"model": "dcforge-gpt", "prompt": "x"}', headers=headers)
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]["message"]


def test_a_replica_tag_names_the_replica_in_the_header_and_in_ready(client):
    """Behind one load balancer (pods of a Deployment), pids may repeat across servers: `replica_tag` (the pod's
    address) makes the replica's name unique; without it the pid alone names it."""
    import os

    assert client.get("/health").headers[REPLICA_HEADER] == str(os.getpid())
    settings = ServerSettings(engine=EngineSettings(isolation="thread"), api_key=KEY, replica_tag="10.244.0.7")
    with TestClient(create_app(settings)) as tagged:
        assert tagged.get("/health").headers[REPLICA_HEADER] == f"10.244.0.7/{os.getpid()}"
        assert tagged.get("/ready").json()["replica"] == f"10.244.0.7/{os.getpid()}"
