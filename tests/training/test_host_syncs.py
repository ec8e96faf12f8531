"""Host syncs of the training step, counted on the CPU (a sync on a GPU stalls its queue)."""

from __future__ import annotations

import pytest
import torch
from sync_counter import SyncCounter
from training_helpers import datasets, settings, tiny_net, write_root

import mcc.training.loop as loop
from mcc.training import train

# The lattice of the bilateral filter (the regularised loss) is counted apart: its syncs are its own.
LATTICE = ("mcc/refine/permutohedral.py", "mcc/refine/bilateral.py")
FIRST, STEPS = 2, 4  # counted: steps 2..5, past the segmentation start (step 1), one log line among them
BUDGET_PER_STEP = 1  # the token packing's padded length (one read of two numbers)
BUDGET_PER_LOG = 1  # the logged values of the steps since the last log line, one stacked copy


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_root(tmp_path_factory.mktemp("synthetic"), num_train=8)


def count_syncs(root, work_dir, monkeypatch) -> SyncCounter:
    # value checks run on CPU tensors only: on a GPU the step's own tensors are not checked (mcc._checks)
    monkeypatch.setenv("MCC_CHECK_FINITE", "0")
    net = tiny_net()
    assert net.config.w_reg > 0 and net.config.seg_start_step < FIRST  # every loss counts
    train_set, _ = datasets(root)
    counter = SyncCounter()
    micro_step = loop._micro_step

    def counted(step_module, micro, step, key_mask, **kwargs):
        counter.active = FIRST <= step < FIRST + STEPS
        # what the loop moves to the device (the host keys stay on the host)
        counter.mark(key_mask, *(v for k, v in micro.items() if k not in loop.HOST_KEYS))
        return micro_step(step_module, micro, step, key_mask, **kwargs)

    monkeypatch.setattr(loop, "_micro_step", counted)
    counter.mark(*net.parameters(), *net.buffers())
    counter.active = False
    with counter:
        train(
            net,
            train_set,
            settings(work_dir, max_iters=FIRST + STEPS + 2, log_every=STEPS),
            device="cpu",
            log=lambda m: None,
        )
    return counter


def test_the_training_step_stays_within_its_sync_budget(root, tmp_path, monkeypatch):
    counter = count_syncs(root, tmp_path, monkeypatch)
    places = counter.by_place()
    lattice = sum(n for place, n in places.items() if place.startswith(LATTICE))
    ours = counter.total() - lattice
    print(f"syncs in {STEPS} steps: {counter.total()} ({lattice} in the lattice):", places)
    report = ", ".join(f"{place} x{n}" for place, n in sorted(places.items()))
    assert ours <= BUDGET_PER_STEP * STEPS + BUDGET_PER_LOG, report
    assert places["mcc/training/loop.py"] <= BUDGET_PER_LOG, report  # nothing per step in the loop
    # the lattice's syncs, bounded by what it made when this test was written (6 per step)
    assert lattice <= 6 * STEPS, report


def test_the_counter_sees_each_kind_of_sync():
    counter = SyncCounter()
    with counter:
        x = torch.arange(6.0)
        counter.mark(x)
        y = x * 2
        float(y.sum()), y.tolist(), bool(y.any()), y[y > 2], y.nonzero(), y.cpu()
        host = y.cpu() + 1  # a host copy is host data: reading it costs nothing
        host.tolist(), float(host[0]), torch.arange(3).tolist()
    kinds = {kind for kind, _ in counter.counts}
    assert counter.total() == 7, counter.counts
    assert kinds == {"item/bool/int/float", "tolist", "nonzero", "cpu"}
