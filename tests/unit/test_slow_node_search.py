"""The slow-node search's rounds on a model of a pool: every pair with the slow node runs at 1/100 of the rest."""

from __future__ import annotations

import math

import pytest

from dcforge.checks.slow_node import node_figures, outliers, search


def pool(slow: int | None, fast: float = 1.0, slowed: float = 0.01):
    calls = []

    def measure(pairs):
        assert len({n for pair in pairs for n in pair}) == 2 * len(pairs), "pairs of one round must be disjoint"
        calls.append(pairs)
        return [slowed if slow in pair else fast for pair in pairs]

    return measure, calls


@pytest.mark.parametrize("nodes", range(3, 17))
def test_one_slow_node_is_named_within_log2_n_plus_one_rounds(nodes):
    for slow in range(nodes):
        measure, calls = pool(slow)
        state = search(nodes, measure, slow_fraction=0.5, max_rounds=nodes + 1)
        assert state.culprit() == slow, (nodes, slow, state.rounds)
        assert len(state.rounds) <= math.ceil(math.log2(nodes)) + 1, (nodes, slow, state.rounds)
        figures = node_figures(state)
        assert outliers(figures, 0.5) == ([slow] if figures[slow] < 0.5 else [])


@pytest.mark.parametrize("nodes", range(2, 17))
def test_no_slow_node_names_none(nodes):
    measure, _ = pool(None)
    state = search(nodes, measure, slow_fraction=0.5, max_rounds=nodes + 1)
    assert state.culprit() is None and not state.suspects() and not state.untested()
    assert outliers(node_figures(state), 0.5) == []


def test_two_nodes_cannot_tell_which_is_slow():
    measure, _ = pool(1)
    state = search(2, measure, slow_fraction=0.5, max_rounds=3)
    assert state.culprit() is None and len(state.rounds) == 1


def test_noise_within_the_fraction_is_not_a_slow_pair():
    values = iter([1.0, 0.8, 0.7, 0.9, 0.75, 0.85, 0.95, 0.6])

    def measure(pairs):
        return [next(values) for _ in pairs]

    state = search(8, measure, slow_fraction=0.5, max_rounds=9)
    assert state.culprit() is None and not state.suspects()


def test_a_finished_search_is_recorded_with_a_row_per_node_and_the_culprit_named():
    from dcforge.checks.slow_node import SlowNodeCheck, SlowNodeConfig
    from dcforge.harness.result import CheckResult, Status

    measure, _ = pool(2)
    state = search(4, measure, slow_fraction=0.5, max_rounds=5)
    result = CheckResult("slow_node", declared=SlowNodeCheck.metrics)
    names = ["host-a", "host-b", "host-c", "host-d"]
    SlowNodeCheck._record(result, state, names, SlowNodeConfig())
    assert [row["host"] for row in result.details["nodes"]] == names
    assert [row["verdict"] for row in result.details["nodes"]][2] == "slow"
    assert result.details["culprit"] == "host-c"
    assert result.status == Status.FAIL and "slow node: host-c" in result.reason
    assert result.metrics["slow_nodes"].value == 1
