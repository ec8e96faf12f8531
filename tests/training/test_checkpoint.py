"""Checkpoints: atomic writes, clear errors for missing/corrupt files, random states restored."""

from __future__ import annotations

import os
import random
import stat

import numpy as np
import pytest
import torch

import mcc.training.checkpoint as checkpoint_module
from mcc.training import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "step": 7, "names": ["a", "b"], "best": None}
    path = save_checkpoint(tmp_path / "sub" / "last.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["names"] == ["a", "b"] and loaded["best"] is None
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_crash_mid_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    def crashing_save(obj, file, *args, **kwargs):
        file.write(b"partial data")  # half a file reached the disk, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_checkpoint(tmp_path / "nowhere.pt")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_names_the_path(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(64, 64)}, "step": 3})
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 9, "empty": b""}[damage]
    )
    with pytest.raises(CheckpointError, match="last.pt") as info:
        load_checkpoint(path)
    message = str(info.value)  # one short line: none of torch's advice to load with weights_only=False
    assert "\n" not in message and "weights_only" not in message and len(message) < 300, message


def test_non_dict_is_rejected(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), path)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(path)
    with pytest.raises(TypeError, match="state must be a dict"):
        save_checkpoint(path, [1, 2])


def test_random_states_survive_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)  # noqa: NPY002 - the global state is what is checkpointed
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (torch.rand(3), random.random(), np.random.rand(), np.random.randn())  # noqa: NPY002
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)  # noqa: NPY002
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (torch.rand(3), random.random(), np.random.rand(), np.random.randn())  # noqa: NPY002
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_written_files_get_the_usual_mode(tmp_path):
    from mcc.training.outputs import write_json

    umask = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c.pt", {"step": 1})
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(umask)
    for name in ("c.pt", "m.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
