"""Hand-offs between checks are declared, typed outputs: a producer declares what it sets, a consumer reads a
typed attribute, and a missing producer is a skip whose reason names it."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from dcforge import checks
from dcforge.checks import CHECKS, load_check
from dcforge.steps.serving.settings import choose_model
from dcforge.checks.inference import InferenceConfig
from dcforge.harness.check import CheckContext, RunOutputs
from dcforge.harness.result import CheckSkipped
from dcforge.harness.runner import RunState, run_acceptance, utc_now
from dcforge.spec import load_environment


def test_every_output_is_declared_by_the_check_that_produces_it():
    for output in dataclasses.fields(RunOutputs):
        producer = output.metadata["producer"]
        if producer is not None:
            assert output.name in load_check(producer).outputs, (output.name, producer)
    for name in CHECKS:
        for declared in getattr(load_check(name), "outputs", ()):
            assert RunOutputs.producer(declared) == name, (name, declared)


def test_a_missing_producer_is_a_skip_that_names_it(tmp_path):
    with pytest.raises(CheckSkipped, match="needs trained_checkpoint_dir from the 'train' check, which did not "
                                           "produce it in this run"):
        RunOutputs().require("trained_checkpoint_dir")
    ctx = CheckContext(env=load_environment("local"), report_dir=tmp_path, deadline=time.monotonic() + 60)
    with pytest.raises(CheckSkipped, match="from the 'train' check"):
        choose_model(ctx, InferenceConfig(model_source="trained"))
    assert choose_model(ctx, InferenceConfig()).source == "random:tiny"  # auto: random weights without `train`


@pytest.mark.parametrize("order, consumer_status", [(["producer", "consumer"], "pass"), (["consumer"], "skipped")])
def test_the_runner_hands_outputs_from_one_check_to_the_next(monkeypatch, env_file, tmp_path, order,
                                                             consumer_status):
    monkeypatch.setattr(checks, "CHECKS", {**checks.CHECKS,
                                           "producer": "tests.unit.harness_checks:HandoffProducerCheck",
                                           "consumer": "tests.unit.harness_checks:HandoffConsumerCheck"})
    base = env_file("local").read_text().split("  dcforge:acceptance:")[0]
    env = load_environment(path=env_file(text=base + f"  dcforge:acceptance:\n    checks: {json.dumps(order)}\n",
                                         name="handoff"))
    state = RunState(env=env, report_dir=tmp_path / "report", selected=order, started_at=utc_now())
    run_acceptance(state, write=lambda state: None, log=lambda line: None)
    consumer = state.results["consumer"]
    assert consumer.status.value == consumer_status, consumer.reason
    if consumer_status == "pass":  # the producer's directory (every test check is named "value")
        assert consumer.details["received"] == "artefacts/value"
    else:
        assert "from the 'train' check" in consumer.reason
