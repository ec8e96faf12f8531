"""A user's mistake in any program: one line ``prog: error: ...`` on stderr and exit status 2; bugs keep
their traceback (mcc.cli._common.run_cli)."""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mcc.cli import _common
from mcc.cli import demo as demo_cli
from mcc.cli import evaluate as evaluate_cli
from mcc.cli import pretrain as pretrain_cli
from mcc.cli import pseudo_labels as pseudo_cli
from mcc.cli import train as train_cli
from mcc.cli._common import UserError, run_cli, user_error_message
from mcc.data.layout import read_split
from mcc.training import CheckpointError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _raised(function) -> BaseException:
    try:
        function()
    except BaseException as error:  # noqa: BLE001 - the test inspects what was raised
        return error
    raise AssertionError("nothing raised")


def _value_error_in_torch():
    torch.nn.functional.interpolate(torch.zeros(1, 1, 2, 2), size=(1, 2, 3))


def test_which_errors_count_as_the_users(tmp_path):
    assert user_error_message(UserError("--lr: must be\n positive")) == "--lr: must be positive"
    assert "truncated" in user_error_message(CheckpointError("checkpoint x is truncated"))
    assert "nope" in user_error_message(_raised(lambda: open(tmp_path / "nope")))  # noqa: SIM115
    assert "split list" in user_error_message(_raised(lambda: read_split(tmp_path, "mysplit")))
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "empty.txt").write_text("\n")
    assert "is empty" in user_error_message(_raised(lambda: read_split(tmp_path, "empty")))  # mcc's check
    # a ValueError raised inside torch, or any other kind of error, is a bug: traceback
    assert user_error_message(_raised(_value_error_in_torch)) is None
    assert user_error_message(_raised(lambda: [][1])) is None
    assert user_error_message(TypeError("unexpected keyword")) is None
    assert user_error_message(RuntimeError("shape mismatch")) is None


def test_errors_of_dataloader_workers_are_recognised():
    mcc_file = str(Path(_common.__file__).resolve().parents[1] / "data" / "layout.py")
    text = (
        "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        f'  File "{mcc_file}", line 150, in read_image\n    raise ValueError(...)\n'
        "ValueError: cannot read image x.jpg: image file is truncated\n"
    )
    assert user_error_message(ValueError(text)) == "cannot read image x.jpg: image file is truncated"
    in_torch = text.replace(mcc_file, "/usr/lib/python3/site-packages/torch/nn/functional.py")
    assert user_error_message(ValueError(in_torch)) is None


def test_run_cli_prints_one_line_and_exits_2(capsys, monkeypatch):
    def mistake():
        raise UserError("--crop-size 65: not a multiple of the patch size 16")

    with pytest.raises(SystemExit) as exit_info:
        run_cli("mcc-x", mistake)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "mcc-x: error: --crop-size 65: not a multiple of the patch size 16\n"
    assert run_cli("mcc-x", lambda a, b=0: a + b, 1, b=2) == 3
    with pytest.raises(IndexError):  # a bug keeps its traceback
        run_cli("mcc-x", lambda: [][1])
    monkeypatch.setenv("MCC_TRACEBACK", "1")  # the debug switch: every traceback
    with pytest.raises(UserError):
        run_cli("mcc-x", mistake)


def _fails_in_one_line(capsys, function, *argv, match: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        function(list(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.strip().splitlines() if ": warning: " not in line]  # warnings: one line
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


PROGRAMS = {
    "mcc-train-voc": train_cli.main_voc,
    "mcc-train-coco": train_cli.main_coco,
    "mcc-evaluate": evaluate_cli.main,
    "mcc-pseudo-labels": pseudo_cli.main,
}


def _needs(name, root, checkpoint, tmp_path) -> list[str]:
    if name.startswith("mcc-train"):
        return ["--data-root", str(root), "--work-dir", str(tmp_path / "w"), "--max-iters", "2",
                "--warmup-iters", "0", "--model", "test_vit", "--pretrained", "false", "--crop-size", "64",
                "--num-workers", "0", "--val-split", "", "--device", "cpu"]  # fmt: skip
    extra = ["--out-dir", str(tmp_path / "o")] if name == "mcc-pseudo-labels" else []
    return ["--checkpoint", str(checkpoint), "--data-root", str(root), "--device", "cpu", *extra]


def _replace(argv: list[str], option: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(option) + 1] = value
    return argv


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_every_program_answers_a_missing_root_an_unknown_option_a_bad_device(
    name, synthetic, tmp_path, capsys
):
    root, checkpoint = synthetic
    argv = _needs(name, root, checkpoint, tmp_path)
    main = PROGRAMS[name]
    line = _fails_in_one_line(
        capsys, main, *_replace(argv, "--data-root", str(tmp_path / "nowhere")), match="nowhere"
    )
    assert line.startswith(f"{name}: error: dataset root not found")
    _fails_in_one_line(capsys, main, *argv, "--no-such-option", match="unrecognized arguments")
    _fails_in_one_line(capsys, main, *_replace(argv, "--device", "gpu0"), match="--device")
    if not torch.cuda.is_available():
        _fails_in_one_line(capsys, main, *_replace(argv, "--device", "cuda"), match="CUDA is not available")


@pytest.mark.parametrize("name", ["mcc-evaluate", "mcc-pseudo-labels"])
def test_every_checkpoint_mistake_is_one_line(name, synthetic, tmp_path, capsys):
    root, checkpoint = synthetic
    argv = _needs(name, root, checkpoint, tmp_path)
    main = PROGRAMS[name]
    _fails_in_one_line(capsys, main, *_replace(argv, "--checkpoint", str(tmp_path / "no.pt")), match="no.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    _fails_in_one_line(capsys, main, *_replace(argv, "--checkpoint", str(garbage)), match="garbage.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    _fails_in_one_line(capsys, main, *_replace(argv, "--checkpoint", str(truncated)), match="truncated")


def test_demo_and_pretrain_answer_mistakes_in_one_line(tmp_path, capsys):
    _fails_in_one_line(
        capsys, demo_cli.main, "--out-dir", str(tmp_path), "--num-val", "3", "--num-samples", "4",
        match="--num-samples",
    )  # fmt: skip
    _fails_in_one_line(capsys, demo_cli.main, "--steps", "x", match="--steps")
    garbage = tmp_path / "standin.pt"
    garbage.write_bytes(b"garbage")
    _fails_in_one_line(capsys, pretrain_cli.main, "--out", str(garbage), match=str(garbage))


def test_example_scripts_use_the_same_answer(tmp_path, capsys, monkeypatch):
    for script in ("train_voc.py", "evaluate.py", "make_pseudo_labels.py", "ablate.py", "seg_gap.py"):
        monkeypatch.setattr(sys, "argv", [script, "--no-such-option"])
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(EXAMPLES / script), run_name="__main__")
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and ": error: " in err[0], (script, err)


def test_console_script_in_a_subprocess(synthetic, tmp_path):
    """The installed entry point, as a user runs it: no traceback, one line, status 2."""
    root, _ = synthetic
    code = "import sys; from mcc.cli.evaluate import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", code, "--checkpoint", str(tmp_path / "missing.pt"), "--data-root", str(root)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"mcc-evaluate: error: checkpoint not found: {tmp_path}/missing.pt"
    ]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--model", "resnet18"], "--model: 'resnet18' is not a ViT-family model"),
        (["--vit", "dpeth=2"], "--vit dpeth=2: not an option of timm model 'test_vit'"),
        (["--vit", "depth=2"], "--mcc aux_layer="),
        (["--mcc", "mask_ratio=abc"], "--mcc mask_ratio='abc': expected float"),
        (["--mcc", "cam_scales=[1.0, abc]"], "--mcc cam_scales="),
        (["--mcc", "mask_ratio=1.5"], "--mcc: mask_ratio must be in [0, 1)"),
        (["--crop-size", "65"], "--crop-size 65: img_size 65 is not a multiple"),
        (["--crop-size", "0"], "argument --crop-size: must be >= 1, got 0"),
        (["--batch-size", "0"], "argument --batch-size: must be >= 1"),
        (["--batch-size", "64"], "fewer than one global batch of 64"),
        (["--bkg-thre", "1.5"], "argument --bkg-thre: must be in [0, 1], got 1.5"),
        (["--lr", "nan"], "argument --lr: must be a finite number > 0"),
        (["--resume", "nope.pt"], "resume: checkpoint not found: nope.pt"),
    ],
)
def test_training_mistakes_are_one_line(argv, match, synthetic, tmp_path, capsys):
    root, checkpoint = synthetic
    _fails_in_one_line(
        capsys, train_cli.main_voc, *_needs("mcc-train-voc", root, checkpoint, tmp_path), *argv, match=match
    )


def test_training_resume_from_another_model_is_one_line(synthetic, tmp_path, capsys):
    root, checkpoint = synthetic  # a test_vit checkpoint
    argv = [*_needs("mcc-train-voc", root, checkpoint, tmp_path), "--resume", str(checkpoint)]
    _fails_in_one_line(
        capsys,
        train_cli.main_voc,
        *_replace(argv, "--model", "vit_tiny_patch16_224"),
        match="was trained with model 'test_vit', this run builds 'vit_tiny_patch16_224'",
    )


def test_config_values_get_the_option_checks(synthetic, tmp_path, capsys):
    pytest.importorskip("yaml")
    root, checkpoint = synthetic
    config = tmp_path / "c.yaml"
    config.write_text("batch_size: 0\n")
    argv = [*_needs("mcc-train-voc", root, checkpoint, tmp_path), "--config", str(config)]
    _fails_in_one_line(capsys, train_cli.main_voc, *argv, match="argument --batch-size: must be >= 1")


@pytest.mark.parametrize("name", ["mcc-evaluate", "mcc-pseudo-labels"])
def test_thresholds_outside_0_1_are_refused(name, synthetic, tmp_path, capsys):
    root, checkpoint = synthetic
    argv = _needs(name, root, checkpoint, tmp_path)
    _fails_in_one_line(capsys, PROGRAMS[name], *argv, "--bkg-thre", "1.5", match="must be in [0, 1], got 1.5")


def test_demo_architecture_mistakes_are_one_line(tmp_path, capsys):
    _fails_in_one_line(
        capsys, demo_cli.main, "--heads", "5", match="--dim 96 must be a multiple of --heads 5"
    )
    _fails_in_one_line(
        capsys, demo_cli.main, "--size", "65", match="--size 65 must be a multiple of --patch 8"
    )
    _fails_in_one_line(capsys, demo_cli.main, "--threads", "0", match="argument --threads: must be >= 1")


@pytest.mark.parametrize("name", ["mcc-evaluate", "mcc-pseudo-labels"])
def test_a_root_without_classes_txt_against_a_smaller_network_is_refused_with_the_reason(
    name, synthetic, tmp_path, capsys
):
    root, checkpoint = synthetic  # 5 foreground classes
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    (copy / "classes.txt").unlink()
    argv = _replace(_needs(name, root, checkpoint, tmp_path), "--data-root", str(copy))
    if name == "mcc-pseudo-labels":
        argv += ["--split", "train"]
    with pytest.warns(UserWarning, match="PASCAL VOC class names"):
        line = _fails_in_one_line(capsys, PROGRAMS[name], *argv, match="has 21 classes")
    assert "the root has no classes.txt" in line and "write the 6 class names" in line


def test_shipped_configs_are_named_by_config(capsys):
    pytest.importorskip("yaml")
    assert train_cli.shipped_configs() == ["coco_released", "voc_paper", "voc_released"]
    for name in ("voc_released", "voc_released.yaml"):
        args = train_cli.parse_args(train_cli.build_parser("voc"), ["--config", name])
        assert args.data_root == "VOCdevkit/VOC2012" and args.work_dir == "work_dirs/mcc_voc_released"
    assert train_cli.parse_args(train_cli.build_parser("voc"), ["--config", "voc_paper"]).preset == "paper"
    with pytest.raises(SystemExit):
        train_cli.parse_args(train_cli.build_parser("voc"), ["--config", "voc_relased"])
    err = capsys.readouterr().err.strip()
    assert err.endswith("nor a config shipped with mcc: coco_released, voc_paper, voc_released)"), err
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((EXAMPLES.parent / "pyproject.toml").read_text())
    assert "configs/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["mcc"]  # in the wheel


def test_more_training_mistakes_are_one_line(synthetic, tmp_path, capsys):
    pytest.importorskip("yaml")
    root, checkpoint = synthetic
    argv = _needs("mcc-train-voc", root, checkpoint, tmp_path)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("batch_size: [1,\n")
    _fails_in_one_line(
        capsys, train_cli.main_voc, *argv, "--config", str(bad_yaml), match="is not valid YAML"
    )
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not weights" * 10)
    pretrained = [*_replace(argv, "--pretrained", "true"), "--pretrained-file", str(weights)]
    _fails_in_one_line(
        capsys, train_cli.main_voc, *pretrained, match=f"--pretrained-file {weights}: not loadable"
    )
    _fails_in_one_line(capsys, train_cli.main_voc, *argv, "--vit", "img_size=32", match="--crop-size")
    _fails_in_one_line(
        capsys, train_cli.main_voc, *argv, "--mcc", "cam_scales=[]", match="cam_scales must be"
    )
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    _fails_in_one_line(capsys, train_cli.main_voc, *_replace(argv, "--work-dir", str(a_file / "w")),
                       match="Not a directory")  # fmt: skip


def test_pythons_own_value_error_in_our_code_is_a_bug(tmp_path):
    """A failed unpacking in mcc's code is a bug (traceback), not a check of the user's input."""
    import mcc

    package = Path(mcc.__file__).parent
    source = tmp_path / "unpacking.py"
    source.write_text("def unpack(values):\n    first, second = values\n")
    namespace: dict = {}
    # compiled as if it were a module of the package: only the raise statement decides
    exec(compile(source.read_text(), str(package / "_unpacking_probe.py"), "exec"), namespace)
    error = _raised(lambda: namespace["unpack"]([1]))
    assert isinstance(error, ValueError)
    assert user_error_message(error) is None
