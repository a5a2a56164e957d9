"""Scrape configuration for the Prometheus operator: declared only on request, in the stack's Acceptance component."""

from __future__ import annotations

from dcforge.manifests.build import build_all
from dcforge.manifests.monitoring import scrape_monitors
from dcforge.spec import load_environment
from dcforge.synth import verify_objects


def test_nothing_declared_without_the_prometheus_operator():
    for env in ("local", "dev", "prod"):
        assert scrape_monitors(load_environment(env).spec) == []


def test_service_and_pod_monitors_when_the_operator_is_declared(env_file):
    path = env_file("prod", replace={"  dcforge:security:": "  dcforge:monitoring:\n    prometheusOperator: true\n"
                                     "    scrapeInterval: 15s\n    selectorLabels: {release: kube-prometheus-stack}\n"
                                     "  dcforge:security:"})
    spec = load_environment(path=path).spec
    objects = scrape_monitors(spec)
    dcgm = next(o for o in objects if o["kind"] == "ServiceMonitor")
    assert dcgm["metadata"]["namespace"] == "gpu-operator"
    assert dcgm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert dcgm["spec"]["selector"]["matchLabels"] == {"app": "nvidia-dcgm-exporter"}
    assert dcgm["spec"]["endpoints"] == [{"port": "gpu-metrics", "path": "/metrics", "interval": "15s"}]
    pods = [o for o in objects if o["kind"] == "PodMonitor"]
    inference = [ns.name for ns in spec.network.namespaces if ns.purpose == "inference"]
    assert [p["metadata"]["namespace"] for p in pods] == inference and inference
    assert all(p["spec"]["selector"]["matchLabels"] == {"dcforge.io/metrics": "true"} for p in pods)

    acceptance = next(c for c in build_all(spec) if c.component == "Acceptance")
    assert all(o in acceptance.manifests for o in objects)
    verification = verify_objects(spec, [o for c in build_all(spec) for o in c.all_objects()])
    assert verification.ok, verification.lines()
    assert verification.schema.skipped["ServiceMonitor"] == 1  # a custom resource: no bundled schema


def test_bad_scrape_interval_is_refused(env_file):
    import pytest

    from dcforge.errors import DcforgeError

    path = env_file("prod", replace={"  dcforge:security:": "  dcforge:monitoring: {prometheusOperator: true, "
                                     "scrapeInterval: soon}\n  dcforge:security:"})
    with pytest.raises(DcforgeError, match="scrapeInterval"):
        load_environment(path=path)
