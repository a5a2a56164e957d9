"""Request ids across load-generator workers: unique per process, carried in the log, and the merge of the
per-worker logs refuses an id seen twice (docs/serving.md#many-workers)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dcforge.checks.inference import InferenceConfig
from dcforge.steps.serving.load import locust_arguments
from loadtests.llm_protocol import DuplicateRequestError, read_records
from workloads.records import RequestRecord


def _log(path, *ids: str):
    path.write_text("".join(RequestRecord(start=float(i), end=i + 1.0, ok=True, request_id=request_id).to_json()
                            + "\n" for i, request_id in enumerate(ids)))
    return path


def test_merged_logs_keep_every_request_once(tmp_path):
    first = _log(tmp_path / "requests-11.jsonl", "vm-11-1", "vm-11-2")
    second = _log(tmp_path / "requests-12.jsonl", "vm-12-1", "vm-12-2", "vm-12-3")
    merged = read_records([first, second])
    assert sorted(r.request_id for r in merged) == ["vm-11-1", "vm-11-2", "vm-12-1", "vm-12-2", "vm-12-3"]
    assert [r.start for r in merged] == sorted(r.start for r in merged)


def test_a_request_id_in_two_worker_logs_is_refused_naming_both_files(tmp_path):
    first = _log(tmp_path / "requests-11.jsonl", "vm-11-1")
    copy = _log(tmp_path / "requests-12.jsonl", "vm-12-1", "vm-11-1")
    with pytest.raises(DuplicateRequestError, match=r"vm-11-1 is logged twice \(.*requests-11.jsonl and "
                                                    r".*requests-12.jsonl\)"):
        read_records([first, copy])


def test_logs_written_before_request_ids_still_merge(tmp_path):
    old = _log(tmp_path / "requests-1.jsonl", "", "")
    assert len(read_records([old, old])) == 4  # no id: nothing to match, as before


def test_workers_run_locust_master_worker_mode_and_the_old_key_names_the_new_one():
    assert "--processes" not in locust_arguments(InferenceConfig())
    args = locust_arguments(InferenceConfig.model_validate({"workers": 4}))
    assert args[args.index("--processes") + 1] == "4"
    with pytest.raises(ValidationError, match="workers"):
        InferenceConfig.model_validate({"locustProcesses": 4})
    with pytest.raises(ValidationError):
        InferenceConfig.model_validate({"workers": 0})


def test_the_aiperf_export_carries_the_request_id():
    from loadtests.aiperf_export import profile_export_line

    sent = RequestRecord(start=1.0, end=2.0, ok=True, request_id="vm-11-7")
    assert profile_export_line(sent, 0)["metadata"]["x_request_id"] == "vm-11-7"
    assert profile_export_line(RequestRecord(start=1.0, end=2.0, ok=True), 0)["metadata"]["x_request_id"] is None
