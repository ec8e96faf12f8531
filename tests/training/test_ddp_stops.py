"""Two gloo ranks: a non-finite loss on one rank stops both at once; each rank resumes its own RNG state."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from training_helpers import datasets, settings, tiny_net, write_root

import mcc.training.loop as loop
from mcc.network import MCCNet
from mcc.training import cleanup_distributed, init_distributed, load_checkpoint, train

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _init(rank: int, port: int):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    return init_distributed("cpu", timeout_s=600)


def _nan_worker(rank: int, port: int, root: str, work_dir: str, out: str) -> None:
    context = _init(rank, port)
    losses = MCCNet.training_losses

    def nan_on_rank_1(self, *args, **kwargs):
        result = losses(self, *args, **kwargs)
        if rank == 1 and args[5] == 1:  # step 1 on rank 1 only
            result = result._replace(total=result.total * float("nan"))
        return result

    MCCNet.training_losses = nan_on_rank_1
    message = "no error"
    try:
        train(
            tiny_net(),
            datasets(root)[0],
            settings(work_dir, max_iters=6, batch_size=2, log_every=1),
            context=context,
            log=lambda m: None,
        )
    except FloatingPointError as error:
        message = f"FloatingPointError: {error}"
    except Exception as error:  # what the rank without the NaN saw before every rank checked together
        message = f"{type(error).__name__}: {error}"
    finally:
        with open(out, "w") as file:
            file.write(message)
        cleanup_distributed()


def _rng_worker(rank: int, port: int, root: str, work_dir: str, out: str, resume: bool) -> None:
    context = _init(rank, port)
    restored = {}
    set_rng_state = loop.set_rng_state

    def record(state):
        set_rng_state(state)
        restored["torch"] = torch.get_rng_state()

    loop.set_rng_state = record
    net = tiny_net()
    torch.manual_seed(100 + rank)  # the ranks' random states differ
    try:
        train(
            net,
            datasets(root)[0],
            settings(work_dir, max_iters=4, stop_after=2, batch_size=2, resume="auto" if resume else None),
            context=context,
            log=lambda m: None,
        )
        torch.save({"end": torch.get_rng_state(), "restored": restored.get("torch")}, out)
    finally:
        cleanup_distributed()


def _launch(target, args, timeout=240) -> float:
    port = _free_port()
    ctx = mp.get_context("spawn")
    started = time.perf_counter()
    processes = [ctx.Process(target=target, args=(rank, port, *args(rank))) for rank in range(WORLD)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=timeout)
        assert process.exitcode == 0, f"a rank failed (exit code {process.exitcode})"
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_root(tmp_path_factory.mktemp("synthetic"), num_train=4)


def test_a_nan_on_one_rank_stops_every_rank_with_the_same_message(root, tmp_path):
    outs = [tmp_path / f"rank{r}.txt" for r in range(WORLD)]
    _launch(_nan_worker, lambda r: (str(root), str(tmp_path / "run"), str(outs[r])))
    messages = [out.read_text() for out in outs]
    assert messages[0] == messages[1], messages
    assert messages[0].startswith("FloatingPointError: the loss is nan on at least one rank at step 1")


@pytest.mark.slow
def test_every_rank_resumes_its_own_random_state(root, tmp_path):
    first = [tmp_path / f"first{r}.pt" for r in range(WORLD)]
    second = [tmp_path / f"second{r}.pt" for r in range(WORLD)]
    work_dir = str(tmp_path / "run")
    _launch(_rng_worker, lambda r: (str(root), work_dir, str(first[r]), False))
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert len(checkpoint["rng_ranks"]) == WORLD
    _launch(_rng_worker, lambda r: (str(root), work_dir, str(second[r]), True))
    ends = [torch.load(path, weights_only=True)["end"] for path in first]
    restored = [torch.load(path, weights_only=True)["restored"] for path in second]
    assert not torch.equal(ends[0], ends[1])  # the ranks did have different states
    for rank in range(WORLD):
        assert torch.equal(restored[rank], ends[rank]), rank

    # one process resuming the two ranks' checkpoint: readable, with a warning, from rank 0's state
    with pytest.warns(UserWarning, match="random states of 2 rank"):
        train(
            tiny_net(),
            datasets(root)[0],
            settings(work_dir, max_iters=4, stop_after=3, batch_size=2, resume="auto"),
            device="cpu",
            log=lambda m: None,
        )
