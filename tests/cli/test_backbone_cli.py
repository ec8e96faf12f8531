"""The training command with backbone presets: offline weights in one line, the backbone's pixel statistics
from the data to the checkpoint and back into evaluation."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import timm
import torch

from mcc.cli import evaluate as evaluate_cli
from mcc.cli import train as train_cli
from mcc.data import IMAGENET_MEAN, IMAGENET_STD, VOCSegmentation, VOCTrainViews, normalize
from mcc.training import BACKBONE_PRESETS, BackbonePreset, load_checkpoint, net_from_checkpoint

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY = [
    "--pretrained", "false", "--crop-size", "64", "--batch-size", "2", "--num-workers", "0",
    "--device", "cpu", "--warmup-iters", "0", "--log-every", "1", "--train-split", "train",
    "--val-split", "", "--eval-every", "0", "--mcc", "decoder_dim=32", "--mcc", "projector_dim=32",
    "--mcc", "projector_hidden_dim=64", "--mcc", "projector_bottleneck_dim=16",
]  # fmt: skip
# the clip-b16 preset (CLIP's statistics, pre-norm, dynamic_img_size) at a tiny width and depth
TINY_CLIP = ["--model", "clip-b16", "--vit", "depth=3", "--vit", "embed_dim=32", "--vit", "num_heads=2"]


def _train(root, work, *argv: str) -> None:
    train_cli.main(
        "voc", ["--data-root", str(root), "--work-dir", str(work), "--max-iters", "1", *TINY, *argv]
    )


def test_offline_pretrained_weights_fail_in_one_line(synthetic, tmp_path):
    root, _ = synthetic
    assert not timm.models.get_pretrained_cfg("test_vit").file  # weights come from the hub only
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    argv = ["--data-root", str(root), "--model", "test_vit", "--max-iters", "1", "--warmup-iters", "0",
            "--pretrained", "true", "--crop-size", "64", "--work-dir", str(tmp_path / "w")]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "mcc.cli.train", "voc", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) <= 2 and "Traceback" not in done.stderr, done.stderr
    assert "--pretrained-file" in lines[-1] and "--pretrained false" in lines[-1] and "test_vit" in lines[-1]


def test_missing_pretrained_file_fails_in_one_line(synthetic, tmp_path, capsys):
    root, _ = synthetic
    with pytest.raises(SystemExit) as exit_info:
        _train(root, tmp_path / "w", "--model", "test_vit", "--pretrained-file", str(tmp_path / "no.pth"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pretrained-file" in err[0] and "no.pth" in err[0]


def test_published_deit_run_keeps_the_imagenet_statistics(synthetic):
    root, _ = synthetic
    deit = SimpleNamespace(pretrained_cfg=timm.models.get_pretrained_cfg("deit_base_patch16_224").to_dict())
    args = train_cli.parse_args(train_cli.build_parser("voc"), ["--data-root", str(root)])
    assert args.model == "deit_base_patch16_224" and args.pixel_mean is None
    mean, std = train_cli.backbone_pixel_stats(deit, args)
    assert (mean, std) == (IMAGENET_MEAN, IMAGENET_STD)  # exactly: the views are bit-identical
    published = VOCTrainViews(root, "train", crop_size=64, seed=0)[0]
    with_stats = VOCTrainViews(root, "train", crop_size=64, seed=0, mean=mean, std=std)[0]
    for key in ("x", "v1", "v2"):
        assert torch.equal(published[key], with_stats[key])
    clip = SimpleNamespace(
        pretrained_cfg=timm.models.get_pretrained_cfg("vit_base_patch16_clip_224.openai").to_dict()
    )
    assert train_cli.backbone_pixel_stats(clip) == (CLIP_MEAN, CLIP_STD)
    eva = timm.models.get_pretrained_cfg(BACKBONE_PRESETS["eva02-b14"].timm_name.split(".")[0])
    assert train_cli.backbone_pixel_stats(SimpleNamespace(pretrained_cfg=eva.to_dict()))[0] == CLIP_MEAN
    explicit = train_cli.parse_args(
        train_cli.build_parser("voc"), ["--data-root", "x", "--pixel-mean", "0.5", "0.5", "0.5"]
    )
    assert train_cli.backbone_pixel_stats(clip, explicit) == ((0.5, 0.5, 0.5), CLIP_STD)
    assert train_cli.backbone_pixel_stats(SimpleNamespace()) == (IMAGENET_MEAN, IMAGENET_STD)


def test_older_checkpoints_evaluate_with_imagenet_statistics(synthetic):
    _, checkpoint = synthetic  # recorded without pixel statistics
    assert "pixel_mean" not in load_checkpoint(checkpoint)["config"]["extra"]
    net = net_from_checkpoint(checkpoint)
    assert torch.equal(net.pixel_mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.equal(net.pixel_std.flatten(), torch.tensor(IMAGENET_STD))


def test_clip_preset_trains_and_evaluates_with_clip_statistics(synthetic, tmp_path, monkeypatch):
    root, _ = synthetic
    seen = {}
    original = train_cli.train

    def spy_train(net, train_set, settings, **kwargs):
        seen.update(net=net, train_set=train_set)
        return original(net, train_set, settings, **kwargs)

    monkeypatch.setattr(train_cli, "train", spy_train)
    _train(root, tmp_path / "clip", *TINY_CLIP)
    assert seen["train_set"].mean == CLIP_MEAN and seen["train_set"].std == CLIP_STD
    torch.testing.assert_close(seen["net"].pixel_mean.flatten(), torch.tensor(CLIP_MEAN), rtol=0, atol=0)
    torch.testing.assert_close(seen["net"].pixel_std.flatten(), torch.tensor(CLIP_STD), rtol=0, atol=0)

    state = load_checkpoint(tmp_path / "clip" / "last.pt")
    extra = state["config"]["extra"]
    assert extra["model"] == "clip-b16" and state["step"] == 1
    assert tuple(extra["pixel_mean"]) == CLIP_MEAN and tuple(extra["pixel_std"]) == CLIP_STD
    net = net_from_checkpoint(state)
    assert torch.equal(net.pixel_mean.flatten(), torch.tensor(CLIP_MEAN))
    assert torch.equal(net.pixel_std.flatten(), torch.tensor(CLIP_STD))

    # the evaluation command normalises the images with the recorded statistics
    seen.clear()
    original_evaluate = evaluate_cli.evaluate

    def spy_evaluate(net, dataset, **kwargs):
        seen.update(net=net, dataset=dataset)
        return original_evaluate(net, dataset, **kwargs)

    monkeypatch.setattr(evaluate_cli, "evaluate", spy_evaluate)
    record = evaluate_cli.run(
        ["--checkpoint", str(tmp_path / "clip" / "last.pt"), "--data-root", str(root), "--device", "cpu",
         "--scales", "1.0", "--no-flip", "--max-images", "1", "--no-pseudo"]
    )  # fmt: skip
    assert record["scores"]["seg"]["miou"] is not None
    raw = VOCSegmentation(root, "val", normalize_images=False)[0]["image"]
    torch.testing.assert_close(
        seen["dataset"][0]["image"], normalize(raw, CLIP_MEAN, CLIP_STD), rtol=0, atol=0
    )


def test_presets_are_exported_with_docs_and_named_in_the_help():
    import mcc.training

    assert {"BACKBONE_PRESETS", "BackbonePreset"} <= set(mcc.training.__all__)
    assert all(isinstance(p, BackbonePreset) for p in BACKBONE_PRESETS.values())
    assert BackbonePreset.__doc__ and "docs/backbones.md" in (mcc.training.__doc__ or "")
    text = " ".join(train_cli.build_parser("voc").format_help().split())
    assert "docs/backbones.md" in text
    for name in BACKBONE_PRESETS:
        assert name in text, name


def test_library_refuses_data_normalised_otherwise_than_the_network(synthetic, tmp_path):
    from mcc.training import evaluate, make_pseudo_labels, select_ids
    from mcc.training.evaluation import check_pixel_stats

    root, checkpoint = synthetic
    net = net_from_checkpoint(checkpoint).eval()  # ImageNet statistics
    clip_val = VOCSegmentation(root, "val", mean=CLIP_MEAN, std=CLIP_STD)
    with pytest.raises(ValueError, match="dataset normalises images with mean"):
        evaluate(net, clip_val, cams=False, pseudo_labels=False, max_images=1)
    with pytest.raises(ValueError, match="pixel_mean"):
        make_pseudo_labels(net, select_ids(clip_val, clip_val.ids[:1]), tmp_path / "pl")
    assert not (tmp_path / "pl").exists() or not any((tmp_path / "pl").iterdir())
    check_pixel_stats(net, VOCSegmentation(root, "val"))  # the same statistics pass
    check_pixel_stats(net, VOCSegmentation(root, "val", normalize_images=False, mean=CLIP_MEAN, std=CLIP_STD))
    with pytest.raises(ValueError, match="train_set"):
        from mcc.training import TrainSettings, train

        views = VOCTrainViews(root, "train", crop_size=64, seed=0, mean=CLIP_MEAN, std=CLIP_STD)
        train(
            net, views, TrainSettings(work_dir=str(tmp_path / "w"), max_iters=1, batch_size=1, warmup_iters=0)
        )
