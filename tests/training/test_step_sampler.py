"""StepBatchSampler: epoch permutations, rank slices, mid-epoch start."""

from __future__ import annotations

import pytest

from mcc.training import StepBatchSampler


def batches(sampler, epoch, start=0):
    sampler.set_epoch(epoch)
    sampler.set_start(start)
    return list(sampler)


def test_epoch_is_a_permutation_cut_into_equal_batches():
    sampler = StepBatchSampler(11, 4, seed=3)
    assert sampler.steps_per_epoch == 2
    epoch0, epoch1 = batches(sampler, 0), batches(sampler, 1)
    assert all(len(b) == 4 for b in epoch0) and len(set(sum(epoch0, []))) == 8
    assert epoch0 != epoch1 and epoch0 == batches(sampler, 0)


@pytest.mark.parametrize("start", [0, 1, 2])
def test_start_skips_the_first_steps(start):
    sampler = StepBatchSampler(13, 4, seed=0)
    tail = batches(sampler, 2, start)
    assert len(sampler) == 3 - start
    assert tail == batches(sampler, 2)[start:]


def test_ranks_split_the_global_batch_rank_major():
    single = batches(StepBatchSampler(12, 4, seed=5), 1)
    rank0 = batches(StepBatchSampler(12, 4, num_replicas=2, rank=0, seed=5), 1)
    rank1 = batches(StepBatchSampler(12, 4, num_replicas=2, rank=1, seed=5), 1)
    assert [a + b for a, b in zip(rank0, rank1)] == single


def test_position():
    sampler = StepBatchSampler(10, 3, seed=0)
    assert sampler.position(0) == (0, 0) and sampler.position(4) == (1, 1)


def test_no_shuffle_keeps_dataset_order():
    assert batches(StepBatchSampler(6, 2, shuffle=False), 4) == [[0, 1], [2, 3], [4, 5]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_samples=3, global_batch_size=4), "fewer than one global batch"),
        (dict(num_samples=8, global_batch_size=3, num_replicas=2), "not divisible"),
        (dict(num_samples=8, global_batch_size=0), "global_batch_size"),
        (dict(num_samples=8, global_batch_size=2, num_replicas=2, rank=2), "rank"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StepBatchSampler(**kwargs)
