"""The storage check as the runner runs it: real fio on two local classes, per-class metrics judged by SLO keys
`storage.<class>.<figure>`, per-class plots in the HTML report, and nothing left on the classes' storage."""

from __future__ import annotations

import shutil
import time

import pytest
import yaml

from dcforge.checks import load_check
from dcforge.checks.storage import FIGURES, figure_name
from dcforge.harness.check import CheckContext
from dcforge.harness.result import Status
from dcforge.harness.slo import evaluate, parse_slos
from dcforge.spec import load_environment
from dcforge.spec.loader import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(shutil.which("fio") is None,
                                 reason="fio is not installed: `make system-deps` as root installs it")]


def test_two_classes_measured_judged_and_cleaned_up(tmp_path):
    local = yaml.safe_load((REPO_ROOT / "stacks" / "Pulumi.local.yaml").read_text())
    config = local["config"]
    config["dcforge:storage"]["classes"].append({"name": "scratch", "kind": "filesystem", "replication": 1})
    acceptance = config["dcforge:acceptance"]
    acceptance["checks"] = ["storage"]
    acceptance["settings"] = {"storage": {"paths": {"scratch": str(tmp_path / "scratch-mount")}, "fileSizeMib": 32,
                                          "phaseSeconds": 0.5, "clients": 2, "metadataFiles": 300,
                                          "verifySizeMib": 4}}
    acceptance["slos"] = {"storage.scratch.seq_write_gbps": "> 0", "storage.local-checkpoints.data_verified": "== 1",
                          "storage.scratch.fsync_p99_ms": "< 0"}  # the last one cannot hold: it must fail
    env_file = tmp_path / "Pulumi.two.yaml"
    env_file.write_text(yaml.safe_dump(local, sort_keys=False))
    env = load_environment(path=env_file)
    check = load_check("storage")
    ctx = CheckContext(env=env, report_dir=tmp_path / "report", deadline=time.monotonic() + 240,
                       log=lambda line: None)
    result = check.run(ctx, check.Config.model_validate(acceptance["settings"]["storage"]))
    assert result.status == Status.PASS, result.reason
    assert set(result.metrics) == {f"{cls}.{figure_name(figure)}" for cls in ("local-checkpoints", "scratch")
                                   for figure in FIGURES}
    assert result.metrics["scratch.seq_write_gbps"].unit == "GB/s"  # from the check's declaration
    verdicts = {s.metric: evaluate(s, {"storage": result}).verdict for s in parse_slos(acceptance["slos"])}
    assert verdicts == {"storage.scratch.seq_write_gbps": "pass", "storage.local-checkpoints.data_verified": "pass",
                        "storage.scratch.fsync_p99_ms": "fail"}
    assert [plot.title.split(":")[0] for plot in result.plots] == ["Storage class local-checkpoints"] * 2 + [
        "Storage class scratch"] * 2
    assert result.details["classes"]["scratch"]["directory"] == str(tmp_path / "scratch-mount")
    assert list((tmp_path / "scratch-mount").iterdir()) == []  # the class's mount keeps nothing of the run
    assert not (tmp_path / "report" / "artefacts" / "storage" / "scratch").exists()

    from dcforge.report.html import render_html

    html = render_html({"checks": [result.to_dict()], "slos": [], "status": "pass", "metadata": {"environment": "two"}})
    assert "Storage class scratch: sequential" in html and "Storage class scratch: fsync latency" in html
