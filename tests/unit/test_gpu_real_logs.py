"""The GPU and fabric parsers on real logs written by real systems and posted publicly (tests/unit/real_logs/: one
index per category records each fixture's source and the truth a person reads in it), NVIDIA's XID catalogue as
data, and the parsers' one promise on any input: they raise nothing but their documented error."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from dcforge.findings import Action, Severity
from dcforge.gpu.dcgm import DcgmOutputError, parse_diag, parse_diag_text
from dcforge.gpu.readings import XidEvent
from dcforge.gpu.verdict import judge_dcgm, judge_xids, pci_device
from dcforge.gpu.xid import CATALOGUE_PATH, catalogue, judge_xid, parse_xid_lines
from dcforge.nccl_transport import parse_nccl_log, rdma_rule

REAL = Path(__file__).parent / "real_logs"
OUTPUTS = Path(__file__).parent / "gpu_outputs"


def fixtures(category: str) -> list[dict]:
    return json.loads((REAL / category / "index.json").read_text())["fixtures"]


def test_the_corpus_has_at_least_40_real_logs_each_with_its_source_and_truth():
    every = [(category, f) for category in ("nccl", "xid", "dcgm") for f in fixtures(category)]
    assert len(every) >= 40
    for category, fixture in every:
        assert fixture["source"] and fixture["truth"], fixture["file"]
        assert (REAL / category / fixture["file"]).is_file(), fixture["file"]
    on_disk = {(p.parent.name, p.name) for p in REAL.glob("*/*") if p.name != "index.json"}
    assert on_disk == {(category, f["file"]) for category, f in every}, "every fixture is indexed, and only those"


def nccl_reading(text: str) -> dict:
    transport = parse_nccl_log(text)
    verdict = rdma_rule(transport, "train-a", "node-1")
    rule = "unverified" if verdict.verdict == "fail" and "unverified" in verdict.reason else verdict.verdict
    return {"network": transport.network, "plugin": transport.plugin, "version": transport.version, "rule": rule,
            "gdr": transport.gpudirect_rdma, "nvls": transport.nvls, "collnet": transport.collnet,
            "socket_ranks": transport.socket_ranks, "paths": transport.paths}


@pytest.mark.parametrize("fixture", fixtures("nccl"), ids=lambda f: f["file"])
def test_nccl_transport_reads_what_a_person_reads(fixture):
    reading = nccl_reading((REAL / "nccl" / fixture["file"]).read_text())
    assert {key: reading[key] for key in fixture["truth"]} == fixture["truth"]


def xid_reading(text: str) -> dict:
    events = parse_xid_lines(text)
    findings = judge_xids(events, ())
    return {"xids": sorted({e.xid for e in events}), "pci": pci_device(events[0].pci_bus_id) if events else "",
            "action": max((f.action for f in findings), key=list(Action).index, default=Action.NONE).value,
            "fails": any(f.severity is Severity.FAIL for f in findings)}


@pytest.mark.parametrize("fixture", fixtures("xid"), ids=lambda f: f["file"])
def test_xids_read_and_judged_as_a_person_reads_them(fixture):
    reading = xid_reading((REAL / "xid" / fixture["file"]).read_text())
    assert {key: reading[key] for key in fixture["truth"]} == fixture["truth"]


def test_every_xid_in_the_fixtures_is_in_nvidias_catalogue():
    seen = {event.xid for f in fixtures("xid") for event in parse_xid_lines((REAL / "xid" / f["file"]).read_text())}
    assert seen and seen <= set(catalogue())


def test_the_catalogue_covers_every_xid_with_a_bucket_and_an_action_and_says_where_it_is_from():
    rules = catalogue()
    assert sorted(rules) == list(range(1, 162))
    assert {rules[79].bucket, rules[48].bucket, rules[13].bucket, rules[154].bucket} == {
        "RESTART_BM", "WORKFLOW_XID_48", "RESTART_APP", "XID_154_EVAL"}
    assert rules[95].action is Action.RESET_GPU and rules[95].fails_node
    assert rules[149].fails_node and rules[13].action is Action.RESTART_WORKLOAD and not rules[13].fails_node
    document = json.loads(CATALOGUE_PATH.read_text())
    assert "docs.nvidia.com/deploy/xid-errors" in document["source"] and document["retrieved"]


def test_every_xid_has_nvidias_description():
    # NVIDIA's catalogue describes every Xid 1-161 (deprecated ones as "Unused"), so none is left empty
    rules = catalogue()
    assert [xid for xid, rule in rules.items() if not rule.description.strip()] == []
    # spot checks against NVIDIA's Description column, verbatim
    assert (rules[79].description, rules[94].description, rules[95].description, rules[149].description) == (
        "GPU has fallen off the bus", "Contained memory error", "Uncontained memory error", "NVLINK: NETIR Error")
    assert rules[1].description == "Unused" and rules[154].description == "GPU Recovery Action Changed"


def test_the_drivers_own_words_override_the_table():
    # XID 154 names its recovery action in the driver's words (None, GPU Reset Required / PF FLR, Node Reboot
    # Required, Drain and Reset); these messages follow that format, no public log with each was found
    def action(message: str, xid: int = 154) -> Action:
        return judge_xid(XidEvent(xid, "0000:01:00", message)).action
    assert action("GPU recovery action changed from 0x0 (None) to 0x1 (PF FLR)") is Action.RESET_GPU
    assert action("GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)") is Action.REBOOT_NODE
    assert action("GPU recovery action changed from 0x0 (None) to 0x4 (Drain and Reset)") is Action.DRAIN_AND_SERVICE
    assert action("GPU recovery action changed from 0x1 (PF FLR) to 0x0 (None)") is Action.NONE
    # RST: Yes makes a contained error (table: restart the application) a GPU reset
    assert action("pid=7062, Contained: CE User Channel (0x9). RST: Yes, D-RST: No", 94) is Action.RESET_GPU
    assert action("pid=7062, Contained: CE User Channel (0x9). RST: No, D-RST: Yes", 94) is Action.DRAIN_AND_SERVICE


def dcgm_reading(diag) -> dict:
    statuses: dict[str, int] = {}
    for result in diag.results:
        statuses[result.status] = statuses.get(result.status, 0) + 1
    return {"version": diag.version, "results": len(diag.results), "statuses": statuses,
            "gpus": sorted({r.gpu for r in diag.results if r.gpu is not None}),
            "tests": len({r.test for r in diag.results}),
            "fails_node": any(f.severity is Severity.FAIL for f in judge_dcgm(diag))}


@pytest.mark.parametrize("fixture", fixtures("dcgm"), ids=lambda f: f["file"])
def test_dcgm_real_documents_read_as_a_person_reads_them(fixture):
    text = (REAL / "dcgm" / fixture["file"]).read_text()
    level = fixture.get("level", 3)
    truth = fixture["truth"]
    if "error" in truth:
        with pytest.raises(DcgmOutputError, match=re.escape(truth["error"])) as raised:
            parse_diag_text(text, level)
        assert "\n" not in str(raised.value)
    else:
        reading = dcgm_reading(parse_diag_text(text, level))
        assert {key: reading[key] for key in truth} == truth
    if "wrapped_truth" in fixture:
        # a posted fragment (one test object): put into a DCGM 4 document, it reads as the poster's results
        test, _ = json.JSONDecoder().raw_decode(text[text.index("{"):])
        document = {"DCGM Diagnostic": {"test_categories": [{"category": "Hardware", "tests": [test]}]}}
        reading = dcgm_reading(parse_diag(document, level))
        assert {key: reading[key] for key in fixture["wrapped_truth"]} == fixture["wrapped_truth"]


def test_dcgm_layouts_nulls_gpu_id_and_test_summary():
    three = json.loads((OUTPUTS / "dcgm3-diag-memory-fail.json").read_text())
    categories = three["DCGM GPU Diagnostic"]["test_categories"]
    categories[0]["tests"].append(None)  # DCGM 3 writes null for a test it recorded nothing for
    categories.append(None)
    first = categories[1]["tests"][0]["results"][0]
    first["gpu_id"] = first.pop("gpu_ids")  # some 3.x releases name it gpu_id
    diag = parse_diag(three, 2)
    assert any(r.gpu is not None for r in diag.results) and diag.version == "3.3.9"
    four = json.loads((OUTPUTS / "dcgm4-diag-fail.json").read_text())
    for test in four["DCGM Diagnostic"]["test_categories"][0]["tests"]:
        test["results"] = None  # only the per-test summary left
    summarised = parse_diag(four, 2)
    assert [r.status for r in summarised.results if r.test == "software"] == ["pass"]
    # DCGM 4 grades each warning (dcgmErrorSeverity_t): 6 asks for a GPU reset, the others for a drain and service
    four = json.loads((OUTPUTS / "dcgm4-diag-fail.json").read_text())
    assert [(f.gpu, f.action) for f in judge_dcgm(parse_diag(four, 2)) if f.severity is Severity.FAIL] == [
        (1, Action.DRAIN_AND_SERVICE)]
    for category in four["DCGM Diagnostic"]["test_categories"]:
        for test in category["tests"]:
            for result in test["results"]:
                for warning in result.get("warnings") or []:
                    warning["error_severity"] = 6
    assert [(f.gpu, f.action) for f in judge_dcgm(parse_diag(four, 2)) if f.severity is Severity.FAIL] == [
        (1, Action.RESET_GPU)]
    assert [(f.gpu, f.severity, f.action) for f in judge_dcgm(diag) if f.severity is Severity.FAIL] == [
        (1, Severity.FAIL, Action.DRAIN_AND_SERVICE)]


def mutations(document, rng: random.Random):
    """Documents like `document` with one part replaced by a value of another type, removed, or nulled."""
    replacements = [None, 0, -1, "", "x", [], {}, [None], {"status": None}, 1.5, True, "Fail", {"gpu_ids": "a,b"}]

    def paths(node, prefix=()):
        yield prefix
        if isinstance(node, dict):
            for key, value in node.items():
                yield from paths(value, (*prefix, key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from paths(value, (*prefix, index))

    every = list(paths(document))
    for _ in range(150):
        copy = json.loads(json.dumps(document))
        path = rng.choice(every[1:])
        parent = copy
        for step in path[:-1]:
            parent = parent[step]
        if rng.random() < 0.2 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = rng.choice(replacements)
        yield copy


@pytest.mark.parametrize("name", ["dcgm3-diag-memory-fail.json", "dcgm3-diag-pass.json", "dcgm4-diag-fail.json"])
def test_parse_diag_raises_only_its_error_on_mutated_and_truncated_documents(name):
    rng = random.Random(23)
    text = (OUTPUTS / name).read_text()
    for document in mutations(json.loads(text), rng):
        try:
            parse_diag(document, 2)
        except DcgmOutputError as error:
            assert "\n" not in str(error) and str(error).startswith("dcgmi diag")
    for cut in sorted(rng.sample(range(len(text)), 60)):
        try:
            parse_diag_text(text[:cut], 2)
        except DcgmOutputError as error:
            assert "\n" not in str(error)
    with pytest.raises(DcgmOutputError, match="runtime error: The GPU is lost"):
        parse_diag({"DCGM Diagnostic": {"runtime_error": "The GPU is lost"}}, 2)
    for junk in ([], 3, "x", None, {"DCGM Diagnostic": None}, {"DCGM GPU Diagnostic": {"test_categories": 5}}):
        with pytest.raises(DcgmOutputError):
            parse_diag(junk, 2)


def corpus_text(category: str) -> str:
    return "\n".join((REAL / category / f["file"]).read_text() for f in fixtures(category))


def scrambled(text: str, rng: random.Random, count: int):
    """Truncations, byte flips, shuffled lines and random printable noise of `text`."""
    lines = text.splitlines()
    for _ in range(count):
        kind = rng.randrange(4)
        if kind == 0:
            yield text[:rng.randrange(len(text))]
        elif kind == 1:
            chars = list(text)
            for _ in range(50):
                chars[rng.randrange(len(chars))] = chr(rng.randrange(32, 0x2FF))
            yield "".join(chars)
        elif kind == 2:
            yield "\n".join(rng.sample(lines, len(lines)))
        else:
            yield "".join(chr(rng.randrange(9, 127)) for _ in range(2000))


def test_nccl_and_xid_parsers_never_raise_on_random_and_truncated_input():
    rng = random.Random(2323)
    for text in scrambled(corpus_text("nccl"), rng, 60):
        transport = parse_nccl_log(text)
        rdma_rule(transport, "train-a", "n")
        transport.summary()
    for text in scrambled(corpus_text("xid"), rng, 60):
        judge_xids(parse_xid_lines(text), ())
    for junk in ("", "\x00" * 100, "NVRM: Xid (PCI:", "NVRM: Xid (PCI:0000:01:00): 999999999999, x",
                 "NCCL INFO Channel 00/0 : via", "Function | NVLS\nAllReduce | 1"):
        parse_nccl_log(junk)
        judge_xids(parse_xid_lines(junk), ())
