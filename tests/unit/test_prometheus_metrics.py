"""A run's results as Prometheus metrics (dcforge/report/prometheus.py): read back with prometheus_client's own parser
of the exposition format, written as a node-exporter textfile, and -- with the real parts, Debian's `prometheus` and
`prometheus-pushgateway` started here on loopback -- pushed by `dcforge accept`, scraped by Prometheus and queried
back with PromQL. The alerting rule is checked and unit-tested with the real promtool."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dcforge.report.prometheus import exposition, publish, slo_labels, write_textfile

REPO = Path(__file__).resolve().parents[2]
REPORT = {
    "status": "fail",
    "metadata": {"environment": "k8s", "started_at": "2026-03-01T10:00:00+00:00",
                 "finished_at": "2026-03-01T10:12:30+00:00", "interrupted": False},
    "checks": [
        {"name": "gpu_health", "status": "fail", "duration_s": 41.5, "metrics": {},
         "details": {"nodes": [{"host": "gpu-1", "state": "failed", "reason": "XID 79", "action": "reset_gpu"},
                               {"host": "gpu-2", "state": "succeeded", "action": "none"}]}},
        {"name": "slow_node", "status": "pass", "duration_s": 120.0, "metrics": {},
         "details": {"nodes": [{"host": "gpu-1", "verdict": "cleared"}, {"host": "gpu-2", "verdict": "cleared"}]}},
        {"name": "inference", "status": "pass", "duration_s": 300.25, "metrics": {}},
        {"name": "checkpoint", "status": "skipped", "duration_s": 0.0, "metrics": {}},
    ],
    "slos": [
        {"metric": "inference.ttft_ms.p95", "expression": "< 500", "verdict": "pass", "value": 212.5},
        {"metric": "train.tokens_per_s", "expression": "> 1000", "verdict": "error", "value": None},
        {"metric": "checkpoint.save_gbps", "expression": "> 1", "verdict": "skipped", "value": None},
    ],
}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, through prometheus_client's parser of the text format."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_exposition_has_every_figure_with_its_labels():
    text = exposition(REPORT)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {f.type for f in families.values()} == {"gauge"}
    got = samples(text)
    assert got[("dcforge_check_passed", (("check", "gpu_health"), ("env", "k8s")))] == 0
    assert got[("dcforge_check_passed", (("check", "inference"), ("env", "k8s")))] == 1
    assert got[("dcforge_check_duration_seconds", (("check", "inference"), ("env", "k8s")))] == 300.25
    assert not [k for k in got if ("check", "checkpoint") in k[1]]  # skipped: no series
    assert got[("dcforge_slo_value", (("env", "k8s"), ("metric", "inference.ttft_ms"), ("stat", "p95")))] == 212.5
    assert got[("dcforge_slo_passed", (("env", "k8s"), ("metric", "train.tokens_per_s"), ("stat", "value")))] == 0
    assert ("dcforge_slo_value", (("env", "k8s"), ("metric", "train.tokens_per_s"), ("stat", "value"))) not in got
    assert got[("dcforge_node_verdict", (("check", "gpu_health"), ("env", "k8s"), ("node", "gpu-1")))] == 0
    assert got[("dcforge_node_verdict", (("check", "slow_node"), ("env", "k8s"), ("node", "gpu-1")))] == 1
    assert got[("dcforge_node_healthy", (("env", "k8s"), ("node", "gpu-1")))] == 0
    assert got[("dcforge_node_healthy", (("env", "k8s"), ("node", "gpu-2")))] == 1
    assert got[("dcforge_node_recommended_action_info", (("action", "reset_gpu"), ("env", "k8s"),
                                                          ("node", "gpu-1")))] == 1
    assert got[("dcforge_node_recommended_action_info", (("action", "none"), ("env", "k8s"), ("node", "gpu-2")))] == 1
    assert got[("dcforge_run_passed", (("env", "k8s"),))] == 0
    assert got[("dcforge_run_duration_seconds", (("env", "k8s"),))] == 750
    finished = dt.datetime(2026, 3, 1, 10, 12, 30, tzinfo=dt.timezone.utc).timestamp()
    assert got[("dcforge_last_run_timestamp_seconds", (("env", "k8s"),))] == finished


def test_slo_keys_split_into_metric_and_stat():
    assert slo_labels("inference.ttft_ms.p95") == ("inference.ttft_ms", "p95")
    assert slo_labels("train.step_time_ms.p99.9") == ("train.step_time_ms.p99.9", "value")
    assert slo_labels("storage.checkpoints.fsync_p99_ms") == ("storage.checkpoints.fsync_p99_ms", "value")
    assert slo_labels("train.tokens_per_s") == ("train.tokens_per_s", "value")
    assert slo_labels("gpu_health.max") == ("gpu_health.max", "value")  # a metric named like a stat


def test_the_textfile_is_replaced_whole_and_only_as_prom(tmp_path):
    target = tmp_path / "textfile" / "dcforge.prom"
    write_textfile(REPORT, target)
    first = target.read_text()
    write_textfile({**REPORT, "status": "pass"}, target)
    assert samples(target.read_text())[("dcforge_run_passed", (("env", "k8s"),))] == 1 and first != target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["dcforge.prom"]  # no temporary file left beside it
    with pytest.raises(ValueError, match=r"reads only \*\.prom"):
        write_textfile(REPORT, tmp_path / "dcforge.txt")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_pushgateway_is_one_line_not_a_failure(tmp_path):
    lines = publish(REPORT, tmp_path / "m.prom", f"http://127.0.0.1:{free_port()}")
    assert lines[0] == f"metrics written to {tmp_path / 'm.prom'}"
    assert lines[1].startswith("error: Pushgateway http://127.0.0.1:") and "\n" not in lines[1]


# --- The real Prometheus and Pushgateway (Debian packages; `make system-deps` installs them) ---------------------

PROMETHEUS, PUSHGATEWAY, PROMTOOL = (shutil.which(n) for n in ("prometheus", "prometheus-pushgateway", "promtool"))
needs_daemons = pytest.mark.skipif(not (PROMETHEUS and PUSHGATEWAY), reason="prometheus and prometheus-pushgateway "
                                   "are not installed (Debian packages; `make system-deps` installs them as root)")
needs_promtool = pytest.mark.skipif(not PROMTOOL, reason="promtool is not installed (Debian package prometheus)")


def wait_http(url: str, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


@contextmanager
def daemon(argv: list[str], ready_url: str, log: Path):
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_http(ready_url)
        except OSError:
            raise AssertionError(f"{argv[0]} did not come up: {log.read_text()[-2000:]}") from None
        yield process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
def prometheus_stack(tmp_path):
    """A Pushgateway and a Prometheus scraping it every second (honor_labels, as docs/prometheus.md asks), each on
    a free loopback port with its data in tmp_path; both stopped at the end."""
    gateway, server = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                      "scrape_configs": [{"job_name": "pushgateway", "honor_labels": True,
                                                          "static_configs": [{"targets": [gateway]}]}]}))
    with daemon([PUSHGATEWAY, f"--web.listen-address={gateway}"], f"http://{gateway}/-/ready",
                tmp_path / "pushgateway.log"), \
            daemon([PROMETHEUS, f"--config.file={config}", f"--web.listen-address={server}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}"], f"http://{server}/-/ready",
                   tmp_path / "prometheus.log"):
        yield f"http://{gateway}", f"http://{server}"


def query(server: str, promql: str, want: int, deadline_s: float = 60.0) -> dict[tuple, float]:
    """Labels (without __name__/instance/job) -> value of an instant query, once it returns `want` series."""
    end, result = time.monotonic() + deadline_s, []
    while time.monotonic() < end:
        with urllib.request.urlopen(f"{server}/api/v1/query?{urllib.parse.urlencode({'query': promql})}",
                                    timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        if len(result) == want:
            return {tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("__name__", "instance", "job")
                          )): float(r["value"][1]) for r in result}
        time.sleep(0.5)
    raise AssertionError(f"{promql}: {len(result)} series after {deadline_s}s, wanted {want}: {result}")


@pytest.mark.slow
@needs_daemons
def test_accept_pushes_prometheus_scrapes_and_promql_returns_the_figures(prometheus_stack, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dcforge import checks
    from dcforge.cli import app

    gateway, server = prometheus_stack
    monkeypatch.setattr(checks, "CHECKS", {**checks.CHECKS,
                                           "noderows": "tests.unit.test_prometheus_metrics:GpuRowsCheck"})
    document = yaml.safe_load((REPO / "stacks" / "Pulumi.local.yaml").read_text())
    document["config"]["dcforge:acceptance"] = {"checks": ["noderows"], "slos": {"noderows.ttft_ms.p95": "< 500"},
                                                "metrics": {"pushgateway": gateway}}
    env_file = tmp_path / "Pulumi.promtest.yaml"
    env_file.write_text(yaml.safe_dump(document))
    textfile = tmp_path / "node-exporter" / "dcforge.prom"
    run = CliRunner().invoke(app, ["accept", "--env-file", str(env_file), "--reports", str(tmp_path / "reports"),
                                   "--metrics-textfile", str(textfile)])
    assert run.exit_code == 1, run.output  # gpu-1 failed its row
    assert f"metrics pushed to {gateway} (job dcforge)" in run.output and textfile.is_file()
    assert query(server, 'dcforge_node_healthy{env="promtest"}', want=2) == {
        (("env", "promtest"), ("node", "gpu-1")): 0.0, (("env", "promtest"), ("node", "gpu-2")): 1.0}
    assert query(server, 'dcforge_slo_value{env="promtest",stat="p95"}', want=1) == {
        (("env", "promtest"), ("metric", "noderows.ttft_ms"), ("stat", "p95")): 212.5}
    assert query(server, 'dcforge_node_recommended_action_info{node="gpu-1"}', want=1) == {
        (("action", "reset_gpu"), ("env", "promtest"), ("node", "gpu-1")): 1.0}
    assert query(server, 'dcforge_check_passed{check="noderows"}', want=1) == {
        (("check", "noderows"), ("env", "promtest")): 0.0}
    # the textfile holds the same figures as the push
    assert samples(textfile.read_text())[("dcforge_node_healthy", (("env", "promtest"), ("node", "gpu-1")))] == 0
    # A second run replaces the group: a node that is gone from the report is gone from the Pushgateway.
    only_gpu_2 = {**REPORT["checks"][1], "details": {"nodes": [{"host": "gpu-2", "verdict": "cleared"}]}}
    assert publish({**REPORT, "metadata": {**REPORT["metadata"], "environment": "promtest"},
                    "checks": [only_gpu_2]}, None, gateway) == [f"metrics pushed to {gateway} (job dcforge)"]
    assert query(server, 'dcforge_node_healthy{env="promtest"}', want=1) == {
        (("env", "promtest"), ("node", "gpu-2")): 1.0}


class GpuRowsCheck:
    """A check reporting REPORT's gpu_health rows and one p95 figure, as gpu_health and inference would."""

    name = "noderows"
    description = "Per-node rows and a p95 for the metrics test."
    metrics = ()
    requires_declared_gpus = False

    from dcforge.harness.check import CheckConfig as Config

    def run(self, ctx, config):
        from dcforge.harness.result import CheckResult, Metric, Status

        result = CheckResult(self.name, status=Status.FAIL, reason="gpu-1 failed")
        result.details["nodes"] = REPORT["checks"][0]["details"]["nodes"]
        result.metrics["ttft_ms.p95"] = Metric(212.5, "ms")
        return result


# --- The alerting rule, with the real promtool ------------------------------------------------------------------

def scheduled_spec(cron: str = "0 * * * *", time_limit_s: int = 1800):
    from dcforge.spec import load_environment
    from dcforge.spec.models import Environment

    data = load_environment("dev").spec.model_dump(by_alias=True)
    data["acceptance"] = {**data["acceptance"], "target": "kubernetes", "image": "registry.example/dcforge:0.1.0",
                          "schedule": [{"name": "hourly", "cron": cron, "checks": data["acceptance"]["checks"][:1],
                                        "timeLimitS": time_limit_s}]}
    data["monitoring"] = {**data["monitoring"], "prometheusOperator": True, "acceptanceAlerts": True}
    return Environment.model_validate(data)


@needs_promtool
def test_the_shipped_rule_passes_promtool_check_rules(tmp_path):
    from dcforge.manifests.monitoring import acceptance_alert_rules

    (rule,) = acceptance_alert_rules(scheduled_spec())
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rules found" in checked.stdout


@needs_promtool
def test_the_rule_fires_after_two_failed_runs_and_not_after_one(tmp_path):
    """promtool's rule unit tests: hourly runs (30 min limit), a sample per minute. gpu-1 fails at 10:00 and 11:00
    (fires); gpu-2 fails at 10:00 and passes at 11:00 (never fires)."""
    from dcforge.manifests.monitoring import ACCEPTANCE_ALERT, acceptance_alert_rules, alert_wait_s

    spec = scheduled_spec()
    assert alert_wait_s(spec) == 3600 + 1800
    (rule,) = acceptance_alert_rules(spec)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    # one sample a minute from t=0 (the first failed run's push): 0 for 3 h; gpu-2 back to 1 after the 2nd run
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": 'dcforge_node_healthy{env="dev",node="gpu-1"}', "values": "0x180"},
                         {"series": 'dcforge_node_healthy{env="dev",node="gpu-2"}', "values": "0x65 1x115"}],
        "alert_rule_test": [
            {"eval_time": "80m", "alertname": ACCEPTANCE_ALERT, "exp_alerts": []},  # second run still going
            {"eval_time": "95m", "alertname": ACCEPTANCE_ALERT, "exp_alerts": [{
                "exp_labels": {"severity": "critical", "env": "dev", "node": "gpu-1"},
                "exp_annotations": {
                    "summary": "Node gpu-1 failed dcforge acceptance twice in a row",
                    "description": ("Node gpu-1 of environment dev failed two consecutive scheduled acceptance "
                                    "runs; see its DcforgeNodeHealthy condition and the "
                                    "dcforge.io/recommended-action annotation.")}}]},
        ]}]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    tested = subprocess.run([PROMTOOL, "test", "rules", "tests.yml"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr



@pytest.mark.parametrize("flag, value, words", [
    ("--metrics-textfile", "metrics.txt", "--metrics-textfile metrics.txt: node-exporter's textfile collector reads "
                                          "only *.prom files"),
    ("--pushgateway", "pushgateway:9091", "--pushgateway pushgateway:9091: expected an http(s) URL, e.g. "
                                          "http://pushgateway:9091"),
])
def test_bad_metrics_destinations_are_one_line_and_exit_2_before_any_check(tmp_path, flag, value, words):
    import sys

    done = subprocess.run([sys.executable, "-m", "dcforge.cli", "accept", "--env", "local", flag, value,
                           "--reports", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "DCFORGE_STACKS_DIR": str(REPO / "stacks")})
    assert done.returncode == 2 and done.stderr == f"error: {words}\n"
    assert not list(tmp_path.iterdir())  # no run started
