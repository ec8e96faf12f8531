"""The example scripts end to end on a tiny synthetic VOC (subprocesses, CPU, offline)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mcc.data import make_synthetic_voc
from mcc.training import load_checkpoint

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = [
    "--model", "test_vit", "--pretrained", "false", "--crop-size", "64", "--batch-size", "2",
    "--num-workers", "0", "--device", "cpu", "--warmup-iters", "1", "--log-every", "1",
    "--train-split", "train", "--mcc", "decoder_dim=32", "--mcc", "projector_dim=32",
    "--mcc", "projector_hidden_dim=64", "--mcc", "seg_start_step=1",
]  # fmt: skip


def run(*args: str, timeout: float = 240) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_synthetic_voc(tmp_path_factory.mktemp("synthetic"), 6, 2, 64, seed=0)


def test_train_voc_resume_and_evaluate(root, tmp_path):
    work = tmp_path / "run"
    script = str(EXAMPLES / "train_voc.py")
    common = [sys.executable, script, "--data-root", str(root), "--work-dir", str(work), *TINY]
    out = run(*common, "--max-iters", "3", "--stop-after", "2", "--eval-every", "0", "--save-every", "0")
    assert "step 2/3" in out and (work / "args.yaml").is_file() and (work / "config.json").is_file()
    assert load_checkpoint(work / "last.pt")["step"] == 2
    out = run(*common, "--max-iters", "3", "--resume", "auto", "--eval-every", "0")
    assert "resumed from" in out and "step 3/3" in out and "eval step 3" in out
    assert load_checkpoint(work / "last.pt")["step"] == 3 and (work / "best.pt").is_file()

    out = run(
        sys.executable, str(EXAMPLES / "evaluate.py"), "--checkpoint", str(work / "last.pt"),
        "--data-root", str(root), "--device", "cpu", "--scales", "1.0", "1.25", "--bkg-thre", "0.4", "0.5",
    )  # fmt: skip
    for label in (
        "CAM: mIoU",
        "cam@0.40",
        "pseudo labels (PAR): mIoU",
        "segmentation (scales [1.0, 1.25] + flip)",
    ):
        assert label in out, out

    out = run(
        sys.executable, str(EXAMPLES / "make_pseudo_labels.py"), "--checkpoint", str(work / "last.pt"),
        "--data-root", str(root), "--split", "train", "--device", "cpu", "--scales", "1.0",
        "--out-dir", str(tmp_path / "pseudo"),
    )  # fmt: skip
    assert "6 written" in out and len(list((tmp_path / "pseudo").glob("*.png"))) == 6


def test_torchrun_two_processes(root, tmp_path):
    work = tmp_path / "ddp"
    out = run(
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(EXAMPLES / "train_coco.py"),
        "--data-root",
        str(root),
        "--val-split",
        "val",
        "--work-dir",
        str(work),
        "--max-iters",
        "2",
        "--eval-every",
        "0",
        "--dist-timeout",
        "120",
        *TINY,
    )  # fmt: skip  (a short collective timeout: a hung rank exits by itself instead of lingering)
    assert "world size 2" in out and "step 2/2" in out
    assert load_checkpoint(work / "last.pt")["config"]["world_size"] == 2


def test_yaml_config_and_command_line_precedence(tmp_path):
    from mcc.cli import train as cli

    config = tmp_path / "c.yaml"
    config.write_text(
        "data_root: somewhere\nmax_iters: 7\nlr: 1.0e-4\nwarmup_iters: 2\nmcc:\n  mask_ratio: 0.5\n"
    )
    args = cli.parse_args(cli.build_parser("coco"), ["--config", str(config), "--lr", "2e-4"])
    assert (args.data_root, args.max_iters, args.lr, args.batch_size) == ("somewhere", 7, 2e-4, 8)
    mcc_config = cli.mcc_config(args)
    from mcc.network import MCCConfig

    coco = MCCConfig.released("coco")
    assert mcc_config.mask_ratio == 0.5 and mcc_config.seg_start_step == coco.seg_start_step
    config.write_text("data_root: x\nnot_an_option: 1\n")
    with pytest.raises(SystemExit):
        cli.parse_args(cli.build_parser("voc"), ["--config", str(config)])
    with pytest.raises(SystemExit):
        cli.parse_args(cli.build_parser("voc"), [])  # no --data-root
