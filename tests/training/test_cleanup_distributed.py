"""cleanup_distributed: ranks leave together on a normal exit, at once while an exception propagates."""

from __future__ import annotations

import pytest

import mcc.training.distributed as distributed


@pytest.fixture
def calls(monkeypatch):
    made: list[str] = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: made.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: made.append("destroy"))
    return made


def test_normal_exit_waits_for_the_other_ranks(calls):
    try:
        pass
    finally:
        distributed.cleanup_distributed()
    assert calls == ["barrier", "destroy"]


def test_an_exception_leaves_without_waiting(calls):
    with pytest.raises(RuntimeError):
        try:
            raise RuntimeError("a rank failed")
        finally:
            distributed.cleanup_distributed()
    assert calls == ["destroy"]
