"""Atomic DCP checkpoints in one process: commit marker, keep-last-N, checksums, corruption, inference loading."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from workloads.checkpointing import (MARKER, CheckpointCorruptError, CheckpointError, complete_checkpoints,
                                     ensure_writable, latest_checkpoint, load_checkpoint, load_for_inference,
                                     chunk_key, save_checkpoint, tensor_checksums, torch_save_crc_disabled)
from workloads.model import GPT, GPTConfig

CONFIG = GPTConfig(n_layer=1, n_head=2, d_model=16, max_seq_len=8)

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _state(seed: int = 0) -> tuple[GPT, dict]:
    torch.manual_seed(seed)
    model = GPT(CONFIG)
    return model, {"model": model.state_dict()}


def _zeros(state: dict) -> dict:
    return {"model": {k: torch.zeros_like(v) for k, v in state["model"].items()}}


def test_save_load_round_trip_and_keep_last(tmp_path):
    model, state = _state()
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, state, {"step": step}, CONFIG, keep=2, rng_state={"cpu": torch.get_rng_state()})
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [4, 6]
    step, path = latest_checkpoint(tmp_path)
    target = _zeros(state)
    rng = load_checkpoint(path, target)
    assert step == 6 and torch.equal(rng["cpu"], torch.get_rng_state())
    assert all(torch.equal(target["model"][k], v) for k, v in state["model"].items())


def test_directory_without_marker_is_ignored(tmp_path):
    _, state = _state()
    save_checkpoint(tmp_path, 1, state, {"step": 1}, CONFIG)
    saved = save_checkpoint(tmp_path, 2, state, {"step": 2}, CONFIG)
    (saved.path / MARKER).unlink()  # as if the commit never happened
    assert latest_checkpoint(tmp_path)[0] == 1
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(saved.path, _zeros(state))


def test_flipped_bytes_are_detected_not_loaded(tmp_path):
    _, state = _state()
    saved = save_checkpoint(tmp_path, 1, state, {"step": 1}, CONFIG)
    data_file = next(saved.path.glob("*.distcp"))
    raw = bytearray(data_file.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 16] = bytes(b ^ 0xFF for b in raw[middle:middle + 16])
    data_file.write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorruptError):
        load_checkpoint(saved.path, _zeros(state))


def test_truncated_file_is_detected(tmp_path):
    _, state = _state()
    saved = save_checkpoint(tmp_path, 1, state, {"step": 1}, CONFIG)
    data_file = next(saved.path.glob("*.distcp"))
    data_file.write_bytes(data_file.read_bytes()[:100])
    with pytest.raises(CheckpointCorruptError):
        load_checkpoint(saved.path, _zeros(state))


def test_checksums_see_every_tensor_and_every_byte():
    _, state = _state()
    sums = tensor_checksums(state)
    assert set(sums) == {f"model.{k}" for k in state["model"]}
    state["model"]["blocks.0.mlp.up.weight"][3, 3] += 1e-3
    changed = tensor_checksums(state)
    assert [k for k in sums if sums[k] != changed[k]] == ["model.blocks.0.mlp.up.weight"]


def test_load_for_inference_returns_the_saved_model(tmp_path):
    model, state = _state(seed=3)
    save_checkpoint(tmp_path, 5, state, {"step": 5}, CONFIG)
    loaded, config = load_for_inference(tmp_path)
    assert config == CONFIG and not loaded.training
    tokens = torch.randint(0, CONFIG.vocab_size, (1, 8))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model.eval()(tokens))


def test_load_for_inference_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_for_inference(tmp_path)


def test_unwritable_checkpoint_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with warnings.catch_warnings():
        with pytest.raises(CheckpointError, match="checkpoint directory .*a-file/ckpt is not writable"):
            ensure_writable(blocker / "ckpt")


def test_saving_planner_records_every_tensor_it_writes(tmp_path):
    _, state = _state()
    saved = save_checkpoint(tmp_path, 1, state, {"step": 1}, CONFIG)
    record = json.loads((saved.path / "checksums_rank0.json").read_text())
    assert record == tensor_checksums(state)  # one process writes everything, so it checksums everything


def test_checksum_records_of_all_ranks_are_combined(tmp_path):
    _, state = _state()
    saved = save_checkpoint(tmp_path, 1, state, {"step": 1}, CONFIG)
    record_file = saved.path / "checksums_rank0.json"
    record = json.loads(record_file.read_text())
    names = sorted(record)
    # As if two ranks had each written (and checksummed) half of the replicated tensors.
    record_file.write_text(json.dumps({name: record[name] for name in names[::2]}))
    (saved.path / "checksums_rank1.json").write_text(json.dumps({name: record[name] for name in names[1::2]}))
    load_checkpoint(saved.path, _zeros(state))
    (saved.path / "checksums_rank1.json").write_text(json.dumps({name: "00000000" for name in names[1::2]}))
    with pytest.raises(CheckpointCorruptError, match="differ from their saved checksums"):
        load_checkpoint(saved.path, _zeros(state))
    (saved.path / "checksums_rank1.json").unlink()
    with pytest.raises(CheckpointCorruptError, match="have none"):
        load_checkpoint(saved.path, _zeros(state))


def test_torch_save_crc_is_off_only_during_the_save():
    assert torch.serialization.get_crc32_options()
    with pytest.raises(RuntimeError):
        with torch_save_crc_disabled():
            assert not torch.serialization.get_crc32_options()
            raise RuntimeError("save failed")
    assert torch.serialization.get_crc32_options()


def test_chunk_key_names_shards_by_offset():
    assert chunk_key("model.w", (0, 0), (4, 4), (4, 4)) == "model.w"
    assert chunk_key("model.w", (2, 0), (2, 4), (4, 4)) == "model.w@2,0"


def test_every_file_is_fsynced_before_the_marker(tmp_path, monkeypatch):
    _, state = _state()
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        synced.append(name.removesuffix(".tmp"))  # DCP fsyncs .metadata.tmp, then renames it
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    saved = save_checkpoint(tmp_path, 1, state, {"step": 1}, CONFIG)
    files = {path.name for path in saved.path.iterdir()}
    assert files <= set(synced), f"not fsynced: {files - set(synced)}"
    marker_at = synced.index(MARKER)
    assert files - {MARKER} <= set(synced[:marker_at])
