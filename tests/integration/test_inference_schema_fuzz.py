"""Schema-driven fuzzing of the real server from its own OpenAPI document (/openapi.json) with schemathesis: every
request body the published schema admits is answered without a server error, with a documented status, and is
accepted -- except a prompt that does not fit the context, which the schema says is a 400 context_length_exceeded.
Bounded: FUZZ_EXAMPLES generated bodies per route, answers of at most 8 tokens."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency (pip install -e .[dev])")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (installed with schemathesis)
from hypothesis import strategies as st  # noqa: E402

from dcforge.steps.serving.credentials import private_dir  # noqa: E402
from dcforge.steps.serving.server import LocalServer  # noqa: E402
from dcforge.steps.serving.settings import ModelChoice, ServingLoadConfig  # noqa: E402

pytestmark = pytest.mark.slow
KEY = "fuzz-key-0123456789abcdef"
FUZZ_EXAMPLES = 40
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with private_dir() as secrets:
        server = LocalServer(ServingLoadConfig(replicas=1), ModelChoice("random:tiny", None, 256), secrets,
                             tmp_path_factory.mktemp("fuzz"), KEY)
        server.process.args += ["--max-tokens", str(MAX_TOKENS)]  # every generated answer stays short
        with server:
            server.wait_ready(90)
            yield server


@pytest.fixture(scope="module")
def published(server):
    return schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")


@schemathesis.check
def accepts_what_the_schema_admits(ctx, response, case) -> None:
    """A 400 for a schema-valid body is a mismatch between the published schema and the server, unless it is the one
    refusal the schema documents that JSON Schema cannot express: a prompt longer than the context."""
    if response.status_code == 400:
        error = response.json().get("error", {})
        assert error.get("code") == "context_length_exceeded", f"schema-valid body refused: {error.get('message')}"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_the_server_accepts_every_body_its_schema_admits_and_never_fails(published, path):
    # Hypothesis driven directly (schemathesis's pytest plugin does not load under this pytest).
    operation = next(found.ok() for found in published.get_all_operations() if found.ok().path == path)
    checks = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
              schemathesis.checks.content_type_conformance, accepts_what_the_schema_admits]
    answered = []

    @given(data=st.data())
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(data):
        case = data.draw(operation.as_strategy())
        answered.append(case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=checks,
                                               timeout=30).status_code)

    fuzz()
    assert len(answered) >= FUZZ_EXAMPLES // 2 and 200 in answered, answered


def test_the_published_schema_states_the_limits_the_server_enforces(published):
    raw = published.raw_schema
    completion = raw["components"]["schemas"]["CompletionRequest"]["properties"]
    stop_list = next(option for option in completion["stop"]["anyOf"] if option.get("type") == "array")
    assert stop_list["maxItems"] == 4
    assert completion["model"]["enum"] == ["dcforge-gpt"]
    assert completion["max_tokens"]["anyOf"][0]["maximum"] == MAX_TOKENS
    assert completion["n"]["type"] == "integer" and completion["n"]["maximum"] == 1
