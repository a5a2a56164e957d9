"""Energy assertions shared by the workload checks' integration tests."""

from __future__ import annotations


def assert_energy(result, work_metric: str) -> None:
    """Energy metrics where this machine exposes power sensors; otherwise none, and the reason."""
    from dcforge.harness.power import discover_sensors

    sensors, missing = discover_sensors()
    for sensor in sensors:
        sensor.close()
    if sensors:
        assert result.metrics[work_metric].value > 0 and result.plots[-1].title == "Power draw"
    else:
        assert work_metric not in result.metrics and "energy_j" not in result.metrics
        assert result.details["energy"]["skipped"] == "no power sensor exposed: " + "; ".join(missing)
