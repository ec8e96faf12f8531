"""The training command line: help text, schedule checks and scaling, net_from_checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest
import torch

from mcc.cli import evaluate as evaluate_cli
from mcc.cli import pseudo_labels as pseudo_cli
from mcc.cli import train as train_cli
from mcc.network import MCCConfig, MCCNet
from mcc.training import CheckpointError, load_checkpoint, net_from_checkpoint, save_checkpoint

PARSERS = {
    "mcc-train-voc": lambda: train_cli.build_parser("voc"),
    "mcc-train-coco": lambda: train_cli.build_parser("coco"),
    "mcc-evaluate": evaluate_cli.build_parser,
    "mcc-pseudo-labels": pseudo_cli.build_parser,
}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help_text_and_shows_its_default(name):
    parser = PARSERS[name]()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"{name} {action.option_strings}: no help text"
        assert "default" in formatter._get_help_string(action), f"{name} {action.option_strings}"
    text = parser.format_help()
    assert text.count("(default:") >= len(parser._actions) - 1


def _args(dataset, *argv):
    return train_cli.parse_args(train_cli.build_parser(dataset), ["--data-root", "x", *argv])


def test_warmup_not_below_max_iters_is_an_error_that_says_what_to_do(capsys):
    with pytest.raises(SystemExit):
        _args("voc", "--max-iters", "800")  # published warm-up 1500
    err = capsys.readouterr().err
    assert "--warmup-iters 1500" in err and "--max-iters 800" in err and "--schedule scaled" in err
    with pytest.raises(SystemExit):
        _args("voc", "--max-iters", "10", "--warmup-iters", "10")
    assert _args("voc", "--max-iters", "10", "--warmup-iters", "9").max_iters == 10


def test_scaled_schedule_follows_max_iters():
    args = _args("voc", "--max-iters", "2000", "--schedule", "scaled")
    config = train_cli.mcc_config(args)
    released = MCCConfig.released("voc")
    assert train_cli.warmup_iters(args) == 150  # 1500 of 20000
    assert config == released.scaled_schedule(2000, 20000)
    assert config.seg_start_step == 200 and config.final_cam_positives_from == 1200
    # --mcc values win over the scaling; COCO scales against its own 80000 steps and keeps "never"
    args = _args("voc", "--max-iters", "2000", "--schedule", "scaled", "--mcc", "seg_start_step=5")
    assert train_cli.mcc_config(args).seg_start_step == 5
    coco = train_cli.mcc_config(_args("coco", "--max-iters", "8000", "--schedule", "scaled"))
    assert coco == MCCConfig.released("coco").scaled_schedule(8000, 80000)
    assert coco.seg_start_step == 800 and coco.final_cam_positives_from is None
    published = train_cli.mcc_config(_args("voc", "--max-iters", "1800", "--warmup-iters", "100"))
    assert published == released  # no scaling unless asked (train() then warns about the switches)


def test_vit_keywords_reach_the_checkpoint_record(tmp_path):
    assert _args("voc", "--vit", "drop_path_rate=0.1", "--vit", "patch_size=8").vit == [
        ("drop_path_rate", 0.1),
        ("patch_size", 8),
    ]
    config = tmp_path / "c.yaml"
    config.write_text("data_root: x\nvit:\n  depth: 2\n")
    args = train_cli.parse_args(train_cli.build_parser("voc"), ["--config", str(config)])
    assert args.vit == [("depth", 2)]


def test_values_parse_without_pyyaml(monkeypatch):
    with_yaml = [train_cli._parse_value(t) for t in ("0.75", "true", "[1, 2]", "name", "null")]
    monkeypatch.setitem(sys.modules, "yaml", None)
    without = [train_cli._parse_value(t) for t in ("0.75", "true", "[1, 2]", "name", "null")]
    assert with_yaml == without == [0.75, True, [1, 2], "name", None]


def test_unknown_mcc_field_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="not_a_field"):
        train_cli.mcc_config(_args("voc", "--mcc", "not_a_field=1"))


def test_net_from_checkpoint_rebuilds_the_network(synthetic, tmp_path):
    _, checkpoint = synthetic
    net = net_from_checkpoint(checkpoint).eval()
    state = load_checkpoint(checkpoint)
    again = net_from_checkpoint(state).eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.segment(images), again.segment(images))
    for key, value in state["model"].items():
        assert torch.equal(net.state_dict()[key], value), key

    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, {"model": state["model"]})
    with pytest.raises(CheckpointError, match="does not describe its network"):
        net_from_checkpoint(bare)
    broken = dict(state, model={k: v for k, v in state["model"].items() if "decoder" not in k})
    with pytest.raises(CheckpointError, match="do not fit"):
        net_from_checkpoint(broken)
    with pytest.raises(FileNotFoundError):
        net_from_checkpoint(tmp_path / "missing.pt")
    newer = dict(state["config"], mcc=dict(state["config"]["mcc"], field_from_the_future=1))
    with pytest.raises(CheckpointError, match="field_from_the_future"):
        net_from_checkpoint(dict(state, config=newer))
    # timm keywords recorded by --vit rebuild a non-default encoder
    record = dict(state["config"], extra=dict(state["config"]["extra"], model_kwargs={"embed_dim": 32}))
    with pytest.raises(CheckpointError, match="do not fit"):
        net_from_checkpoint(dict(state, config=record))


def test_net_from_checkpoint_reads_a_record_without_decoder_bias(synthetic):
    # Checkpoints written before MCCConfig.decoder_bias existed had a decoder with biases.
    _, checkpoint = synthetic
    state = load_checkpoint(checkpoint)
    net = net_from_checkpoint(state)
    with_bias = MCCNet(net.encoder.vit, net.num_classes, dataclasses.replace(net.config, decoder_bias=True))
    old_model = {k: v for k, v in with_bias.state_dict().items()}
    old_mcc = {k: v for k, v in state["config"]["mcc"].items() if k != "decoder_bias"}
    old = dict(state, model=old_model, config=dict(state["config"], mcc=old_mcc))
    rebuilt = net_from_checkpoint(old)
    assert rebuilt.config.decoder_bias
    assert torch.equal(rebuilt.decoder.conv6.bias, old_model["decoder.conv6.bias"])


@pytest.mark.parametrize("module", ["mcc.cli.evaluate", "mcc.cli.pseudo_labels"])
def test_modules_run_with_python_m(module):
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "--checkpoint" in done.stdout and "(default:" in done.stdout


def test_train_module_without_a_dataset_name_trains_from_tags(capsys):
    with pytest.raises(SystemExit):
        train_cli._module_main(["--max-iters", "3"])  # mcc-train: needs --images and --labels
    assert "--images and --labels required" in capsys.readouterr().err
    train_cli._module_main(["--help"])
    assert "{voc,coco}" in capsys.readouterr().out


def test_console_scripts_exit_with_status_zero(synthetic, tmp_path):
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    for name in ("mcc-train-voc", "mcc-train-coco", "mcc-evaluate", "mcc-pseudo-labels"):
        assert name in scripts
    root, checkpoint = synthetic
    module, function = scripts["mcc-evaluate"].split(":")
    code = f"import sys; from {module} import {function} as main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", code, "--checkpoint", str(checkpoint), "--data-root", str(root), "--device",
         "cpu", "--scales", "1.0", "--no-cams", "--max-images", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and "'split'" not in done.stderr, done.stderr  # no record printed
    assert "segmentation" in done.stdout


def _console_scripts() -> dict[str, str]:
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(_console_scripts()))
def test_console_script_functions_return_nothing(name):
    """A console script runs ``sys.exit(main())``: a returned record would print and exit with status 1."""
    import importlib
    import inspect

    module, function = _console_scripts()[name].split(":")
    annotation = inspect.signature(getattr(importlib.import_module(module), function)).return_annotation
    assert annotation in (None, "None"), f"{name}: {_console_scripts()[name]} returns {annotation}"
