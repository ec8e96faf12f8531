"""Training command line (timm ``train.py`` style): ``mcc-train``, ``mcc-train-voc`` and ``mcc-train-coco``.

    mcc-train --images photos --labels tags.csv --classes classes.txt --pretrained-file deit_base.pth
    python -m mcc.cli.train --images VOC2012/JPEGImages --labels VOC2012/Annotations --val-root VOC2012
    mcc-train-voc --data-root VOCdevkit/VOC2012 --pretrained-file deit_base.pth
    torchrun --nproc_per_node=4 -m mcc.cli.train voc --data-root VOCdevkit/VOC2012 --amp
    python -m mcc.cli.train coco --data-root coco_voc_layout --max-iters 8000 --schedule scaled

Argument defaults (the published run of the dataset), optionally replaced by a YAML file (``--config``),
then by the command line; the resolved arguments are written to ``<work-dir>/args.yaml`` next to the
checkpoints. ``mcc-train`` reads image-level tags (a CSV, JSON, ``cls_labels_onehot.npy``, VOC XML or
COCO instances file, :func:`mcc.data.read_tags`) instead of a VOC-layout root and takes VOC's published
defaults (``--recipe coco`` for COCO's). The work is done by :func:`mcc.training.train`; see
docs/training.md and docs/own-data.md.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import random
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mcc.cli._common import (
    ArgumentParser,
    UserError,
    check_typed_defaults,
    device_arg,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
    unit_float,
)
from mcc.data import StrongAugment, TagImages, TagTrainViews, VOCSegmentation, VOCTrainViews, read_tags
from mcc.data.transforms import pixel_stats
from mcc.network import MCCConfig, MCCNet
from mcc.schedule import scaled_warmup_iters
from mcc.training import (
    BACKBONE_PRESETS,
    TrainSettings,
    build_vit,
    cleanup_distributed,
    init_distributed,
    train,
)

__all__ = [
    "DATASET_DEFAULTS",
    "build_parser",
    "main",
    "main_coco",
    "main_tags",
    "main_voc",
    "backbone_pixel_stats",
    "build_backbone",
    "mcc_config",
    "parse_args",
    "str2bool",
]

# The published runs (docs/method.md section 2); ``max_iters`` is also the base of ``--schedule scaled``.
DATASET_DEFAULTS = {
    "voc": dict(
        train_split="train_aug", val_split="val", max_iters=20000, batch_size=4, eval_every=2000, bkg_thre=0.5
    ),
    "coco": dict(
        train_split="train",
        val_split="val_part",
        max_iters=80000,
        batch_size=8,
        eval_every=8000,
        bkg_thre=0.45,
    ),
}
WARMUP_ITERS = 1500  # published warm-up of both datasets


def str2bool(text: str) -> bool:
    """``argparse`` type of boolean options: 1/0, true/false, yes/no, on/off."""
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _parse_value(text: str) -> Any:
    """A YAML scalar or list (``0.75``, ``true``, ``[1, 2]``, ``name``); Python literals without pyyaml."""
    try:
        import yaml
    except ImportError:
        lowered = text.strip().lower()
        if lowered in ("true", "false", "null", "none", "~"):
            return {"true": True, "false": False}.get(lowered)
        try:
            return ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            return text.strip()
    return yaml.safe_load(text)


def _mcc_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), _parse_value(value)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the description's line breaks."""


def build_parser(dataset: str, tags: bool = False) -> argparse.ArgumentParser:
    """The training command line with the published defaults of ``dataset`` ("voc" or "coco").

    With ``tags`` the command line of ``mcc-train``: the training images come from ``--images`` and
    ``--labels`` (image-level tags) instead of a VOC-layout root; ``dataset`` (``--recipe``) gives the
    defaults and the :class:`~mcc.MCCConfig` preset.
    """
    if dataset not in DATASET_DEFAULTS:
        raise ValueError(f"dataset must be one of {sorted(DATASET_DEFAULTS)}, got {dataset!r}")
    d = DATASET_DEFAULTS[dataset]
    if tags:
        parser = ArgumentParser(
            prog="mcc-train",
            description="Train MCC from image-level tags: a folder of images and a label file, no masks "
            "(single process, or torchrun --nproc_per_node=N). See docs/own-data.md.",
            formatter_class=HelpFormatter,
        )
    else:
        parser = ArgumentParser(
            prog=f"mcc-train-{dataset}",
            description=f"Train MCC on {dataset.upper()} (single process, or torchrun --nproc_per_node=N).",
            formatter_class=HelpFormatter,
        )
    parser.add_argument(
        "--config",
        default=None,
        help="YAML file of argument defaults (keys as below), or the name of one shipped with mcc: "
        f"{', '.join(shipped_configs())}",
    )
    data = parser.add_argument_group("data")
    if tags:
        data.add_argument(
            "--recipe",
            choices=sorted(DATASET_DEFAULTS),
            default=dataset,
            help="whose published run gives the defaults (steps, batch, thresholds) and the MCCConfig preset",
        )
        data.add_argument("--images", default=None, help="folder the label file's images are relative to")
        data.add_argument(
            "--labels",
            default=None,
            help="image-level labels: CSV (image,labels or image,<class>,...), JSON {image: [tags]}, "
            "cls_labels_onehot.npy, a folder of VOC XML (Annotations/) or a COCO instances JSON; required",
        )
        data.add_argument(
            "--classes",
            default=None,
            help="class names in order, one per line (None: the label file's, else sorted, with a warning)",
        )
        data.add_argument(
            "--ids", default=None, help="only the images of this list (one id per line, e.g. a split list)"
        )
        data.add_argument(
            "--val-root", default=None, help="validation root in VOC layout (with masks): CAM and seg mIoU"
        )
        data.add_argument("--val-split", default=d["val_split"], help="split of --val-root to score")
        data.add_argument(
            "--val-labels",
            default=None,
            help="validation tags (any --labels format): classification mAP and F1 at the end",
        )
        data.add_argument(
            "--val-images", default=None, help="folder of --val-labels' images (None: --images)"
        )
    else:
        data.add_argument(
            "--data-root", default=None, help="dataset root in VOC layout (docs/data.md); required"
        )
        data.add_argument("--train-split", default=d["train_split"], help="split list of the training images")
        data.add_argument("--val-split", default=d["val_split"], help="'' for no evaluation during training")
    data.add_argument(
        "--crop-size", type=positive_int, default=448, help="side of the training crops, pixels"
    )
    data.add_argument(
        "--num-workers", type=non_negative_int, default=4, help="DataLoader workers per process"
    )
    data.add_argument("--data-seed", type=int, default=0, help="seed of the random training views")

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="deit_base_patch16_224",
        help=f"timm ViT name, or a backbone preset ({', '.join(BACKBONE_PRESETS)}; see docs/backbones.md)",
    )
    model.add_argument(
        "--pretrained",
        type=str2bool,
        default=True,
        help="pretrained weights (timm hub, or --pretrained-file offline); false: random init",
    )
    model.add_argument("--pretrained-file", default=None, help="local weights file: no download")
    model.add_argument(
        "--pixel-mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
        help="per-channel mean of the image normalisation (None: the backbone's pretrained_cfg mean; "
        "ImageNet's for DeiT, CLIP's for clip-b16 and eva02-b14)",
    )  # fmt: skip
    model.add_argument(
        "--pixel-std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
        help="per-channel std of the image normalisation (None: the backbone's pretrained_cfg std)",
    )  # fmt: skip
    model.add_argument(
        "--vit", type=_mcc_override, action="append", default=[], metavar="KEY=VALUE",
        help="keyword of timm.create_model, e.g. --vit drop_path_rate=0.1 or --vit patch_size=8 (repeatable)",
    )  # fmt: skip
    model.add_argument("--preset", choices=("released", "paper"), default="released", help="MCCConfig preset")
    model.add_argument(
        "--mcc", type=_mcc_override, action="append", default=[], metavar="KEY=VALUE",
        help="override an MCCConfig field, e.g. --mcc mask_ratio=0.75 (repeatable)",
    )  # fmt: skip

    schedule = parser.add_argument_group("schedule")
    schedule.add_argument("--max-iters", type=positive_int, default=d["max_iters"], help="optimiser steps")
    schedule.add_argument(
        "--schedule",
        choices=("published", "scaled"),
        default="published",
        help=(
            "'published': the step switches as published (warm-up, start of the segmentation loss, "
            f"final-CAM positives); 'scaled': those switches times --max-iters / {d['max_iters']} "
            "(MCCConfig.scaled_schedule, for shorter or longer runs; --mcc values apply after scaling). "
            "Training warns about switches that a run never reaches"
        ),
    )
    schedule.add_argument(
        "--batch-size", type=positive_int, default=d["batch_size"], help="global, over all processes"
    )
    schedule.add_argument(
        "--accumulation-steps", type=positive_int, default=1, help="micro-batches per process"
    )
    schedule.add_argument(
        "--lr", type=positive_float, default=6e-5, help="encoder lr (heads x head_lr_scale)"
    )
    schedule.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    schedule.add_argument(
        "--warmup-iters",
        type=non_negative_int,
        default=WARMUP_ITERS,
        help="linear warm-up steps; must be below --max-iters (scaled too with --schedule scaled)",
    )
    schedule.add_argument("--seed", type=int, default=0, help="seed of the model, batch order and key masks")

    run = parser.add_argument_group("run")
    run.add_argument(
        "--work-dir",
        default="work_dirs/mcc_tags" if tags else f"work_dirs/mcc_{dataset}",
        help="checkpoints, config and logs",
    )
    run.add_argument("--resume", default=None, help="checkpoint path, or 'auto' (<work-dir>/last.pt if any)")
    run.add_argument(
        "--stop-after", type=positive_int, default=None, help="stop after N steps (resume later)"
    )
    run.add_argument(
        "--device", type=device_arg, default=None, help="cuda, cuda:N or cpu (None: cuda when available)"
    )
    run.add_argument(
        "--amp",
        action="store_true",
        help="bf16 autocast (CUDA; a GPU without bf16, before Ampere, gets fp16 with a gradient scaler)",
    )
    run.add_argument(
        "--tf32",
        action="store_true",
        help="TF32 matmuls and convolutions in float32 runs (CUDA, Ampere or newer): faster, with about "
        "1e-3 relative error per product; off by default, when float32 products are exact float32",
    )
    run.add_argument(
        "--dist-timeout",
        type=positive_float,
        default=1800.0,
        help="seconds a rank waits in a collective before failing",
    )
    run.add_argument("--log-every", type=positive_int, default=50, help="steps between log lines")
    run.add_argument(
        "--eval-every", type=non_negative_int, default=d["eval_every"], help="0: only at the end"
    )
    run.add_argument(
        "--eval-max-images", type=positive_int, default=None, help="score only the first N val images"
    )
    run.add_argument("--bkg-thre", type=unit_float, default=d["bkg_thre"], help="CAM background threshold")
    run.add_argument(
        "--save-every", type=non_negative_int, default=2000, help="steps between writes of last.pt"
    )
    run.add_argument("--best-metric", choices=("seg", "cam"), default="seg", help="mIoU that picks best.pt")
    run.add_argument("--tensorboard", action="store_true", help="log to <work-dir>/tb")
    parser.set_defaults(dataset=dataset, source="tags" if tags else "root")
    return parser


def shipped_configs() -> list[str]:
    """Names of the ``--config`` files shipped with the package (``mcc/configs/<name>.yaml``)."""
    folder = resources.files("mcc").joinpath("configs")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def config_path(text: str) -> Path | None:
    """The file of ``--config``: a path, else a shipped config's name (``voc_released``, with or without
    ``.yaml``); None when neither exists."""
    path = Path(text)
    if path.is_file():
        return path
    name = text[: -len(".yaml")] if text.endswith(".yaml") else text
    if "/" not in name and name in shipped_configs():
        return Path(str(resources.files("mcc").joinpath("configs", f"{name}.yaml")))
    return None


def build_tags_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """``mcc-train``'s parser, with the defaults of the ``--recipe`` named in ``argv`` (default VOC)."""
    pre = ArgumentParser(prog="mcc-train", add_help=False)
    pre.add_argument("--recipe", choices=sorted(DATASET_DEFAULTS), default="voc")
    known, _ = pre.parse_known_args(argv)
    return build_parser(known.recipe, tags=True)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Defaults < YAML file of ``--config`` < command line; checks what argparse alone cannot."""
    config_parser = ArgumentParser(prog=parser.prog, add_help=False)
    config_parser.add_argument("--config", default=None)
    known, _ = config_parser.parse_known_args(argv)
    if known.config:
        try:
            import yaml
        except ImportError:
            parser.error("--config needs pyyaml: pip install pyyaml (or the 'examples' extra)")
        path = config_path(known.config)
        if path is None:
            parser.error(
                f"--config: file not found: {known.config} (nor a config shipped with mcc: "
                f"{', '.join(shipped_configs())})"
            )
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            parser.error(f"--config: {path} is not valid YAML: {' '.join(str(error).split())}")
        if not isinstance(values, dict):
            parser.error(f"--config: {path} must hold a mapping of argument names to values")
        values = {key.replace("-", "_"): value for key, value in values.items()}
        valid = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - valid)
        if unknown:
            parser.error(f"--config: unknown keys in {path}: {', '.join(unknown)}")
        for key in ("mcc", "vit"):
            if isinstance(values.get(key), dict):
                values[key] = list(values[key].items())
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    if known.config:
        check_typed_defaults(parser, args)
    if getattr(args, "source", "root") == "tags":
        args.dataset = args.recipe
        missing = [name for name in ("images", "labels") if not getattr(args, name)]
        if missing:
            parser.error(
                f"{' and '.join('--' + m for m in missing)} required (on the command line or in --config); "
                "for a VOC-layout root use mcc-train-voc / mcc-train-coco (python -m mcc.cli.train voc ...)"
            )
    elif not args.data_root:
        parser.error("--data-root is required (on the command line or in --config)")
    if args.max_iters < 1:
        parser.error(f"--max-iters must be >= 1, got {args.max_iters}")
    warmup = warmup_iters(args)
    if warmup >= args.max_iters:
        parser.error(
            f"--warmup-iters {warmup} is not below --max-iters {args.max_iters}: the run would end inside "
            "the warm-up at a tiny learning rate. Pass --schedule scaled (the published schedule scaled "
            "to --max-iters) or a smaller --warmup-iters."
        )
    return args


def warmup_iters(args: argparse.Namespace) -> int:
    """The warm-up length the run uses (``--warmup-iters``, scaled with ``--schedule scaled``)."""
    if getattr(args, "schedule", "published") != "scaled":
        return args.warmup_iters
    published = DATASET_DEFAULTS[args.dataset]["max_iters"]
    return scaled_warmup_iters(args.max_iters, published, args.warmup_iters)


def mcc_config(args: argparse.Namespace) -> MCCConfig:
    """The preset of ``args.preset`` for ``args.dataset``, scaled by ``--schedule``, with ``--mcc`` overrides.

    Raises:
        ValueError: an ``--mcc`` key that is not an :class:`~mcc.MCCConfig` field (the message names it).
    """
    overrides = dict(args.mcc)
    fields = {f.name for f in dataclasses.fields(MCCConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"--mcc: unknown MCCConfig fields: {', '.join(unknown)}")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    config = getattr(MCCConfig, args.preset)(args.dataset)
    if getattr(args, "schedule", "published") == "scaled":
        config = config.scaled_schedule(args.max_iters, DATASET_DEFAULTS[args.dataset]["max_iters"])
    for key, value in overrides.items():
        overrides[key] = _override_value(key, value, getattr(config, key))
    try:
        return dataclasses.replace(config, **overrides)
    except (TypeError, ValueError) as error:
        raise UserError(f"--mcc: {error}") from error


def _override_value(key: str, value: Any, preset: Any) -> Any:
    """``value`` of ``--mcc key=value`` in the type of the preset's value (int -> float allowed)."""

    def fits(item: Any, like: Any) -> bool:
        if isinstance(like, bool) or like is None:
            return isinstance(item, bool) or like is None
        if isinstance(like, int | float):
            return isinstance(item, int | float) and not isinstance(item, bool)
        return isinstance(item, type(like))

    if isinstance(preset, tuple):
        ok = isinstance(value, tuple) and all(fits(v, preset[0]) for v in value) if preset else True
    else:
        ok = fits(value, preset)
    if not ok:
        kind = f"a list like {list(preset)}" if isinstance(preset, tuple) else type(preset).__name__
        raise UserError(f"--mcc {key}={value!r}: expected {kind} (the preset has {preset!r})")
    if isinstance(preset, float) and isinstance(value, int):
        return float(value)
    return value


def build_backbone(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None):
    """The encoder of ``--model`` (:func:`~mcc.training.build_vit`); missing weights exit in one line.

    Raises:
        SystemExit: (status 2, through ``parser.exit``) the pretrained weights can be neither downloaded
            nor found in the local cache (offline), or ``--pretrained-file`` does not exist: one line
            that says what to pass instead. Without ``parser`` the original exception propagates.
    """
    if "img_size" in dict(args.vit):
        raise UserError("--vit img_size: the crop size is --crop-size (timm's img_size follows it)")
    try:
        return build_vit(
            args.model, args.pretrained, args.pretrained_file, img_size=args.crop_size, **dict(args.vit)
        )
    except ValueError as error:
        if parser is None:
            raise
        message = str(error)
        if message.startswith("img_size"):
            message = f"--crop-size {args.crop_size}: {message}"
        elif message.startswith("name:"):
            message = f"--model{message[len('name') :]}"
        elif message.startswith("pretrained_file"):
            message = f"--pretrained-file{message[len('pretrained_file') :]}"
        elif any(message.startswith(f"{key}=") for key, _ in args.vit):
            message = f"--vit {message}"
        raise UserError(message) from error
    except (ConnectionError, FileNotFoundError) as error:
        if parser is None:
            raise
        if isinstance(error, FileNotFoundError):
            message = f"--pretrained-file: {error}"
        else:
            message = (
                f"cannot download the pretrained weights of --model {args.model} (offline or the hub is "
                "unreachable, and they are not cached): pass --pretrained-file PATH (a local weights file "
                "of that model) or --pretrained false (random initialisation)"
            )
        parser.exit(2, f"{parser.prog}: error: {message}\n")


def backbone_pixel_stats(
    vit, args: argparse.Namespace | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image normalisation of a run: ``--pixel-mean``/``--pixel-std`` where given, else the backbone's.

    The backbone's are ``vit.pretrained_cfg["mean"/"std"]``, the statistics its pretrained weights expect
    (ImageNet's for DeiT and DINOv2/v3, CLIP's for CLIP and EVA-02, 0.5 for AugReg ViTs); ImageNet's when
    it has none.

    Returns:
        (mean, std), three floats each.

    Raises:
        ValueError: statistics that are not three numbers (std positive).
    """
    from mcc.data import IMAGENET_MEAN, IMAGENET_STD

    cfg = getattr(vit, "pretrained_cfg", None) or {}
    mean = getattr(args, "pixel_mean", None) or cfg.get("mean") or IMAGENET_MEAN
    std = getattr(args, "pixel_std", None) or cfg.get("std") or IMAGENET_STD
    return pixel_stats(mean, std)


def seed_everything(seed: int) -> None:
    """Seeds Python's ``random``, NumPy's global state and torch."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the global state is what third-party code draws from
    torch.manual_seed(seed)


def write_args(args: argparse.Namespace, work_dir: Path) -> None:
    """Writes the resolved arguments to ``work_dir/args.yaml`` (usable as ``--config``; JSON, which is
    also YAML, when pyyaml is not installed)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    values = {k: (dict(v) if k in ("mcc", "vit") else v) for k, v in vars(args).items()}
    try:
        import yaml
    except ImportError:
        text = json.dumps(values, indent=2, sort_keys=True, default=str) + "\n"
    else:
        text = yaml.safe_dump(values, sort_keys=True)
    (work_dir / "args.yaml").write_text(text)


def _read_ids(path: str, parser: argparse.ArgumentParser) -> list[str]:
    file = Path(path)
    if not file.is_file():
        parser.error(f"--ids: file not found: {file}")
    return [line.split()[0] for line in file.read_text().splitlines() if line.strip()]


def read_training_tags(args: argparse.ArgumentParser, parser: argparse.ArgumentParser):
    """The training and validation tags of ``mcc-train`` (:func:`~mcc.data.read_tags`), checked before any
    work: a bad label file, tag, missing image or class mismatch exits with one line (status 2).

    Returns:
        (training :class:`~mcc.data.ImageTags`, validation tags or None).
    """
    ids = _read_ids(args.ids, parser) if args.ids else None
    try:
        tags = read_tags(args.labels, args.images, args.classes, ids=ids)
        val_tags = None
        if args.val_labels:
            val_tags = read_tags(args.val_labels, args.val_images or args.images, tags.class_names[1:])
    except (FileNotFoundError, ValueError) as error:
        parser.error(" ".join(str(error).split()))
    if args.val_root:
        try:
            root = VOCSegmentation(args.val_root, args.val_split, validate=False)
        except (FileNotFoundError, ValueError) as error:
            parser.error(f"--val-root: {error}")
        if list(root.class_names) != list(tags.class_names):
            parser.error(
                f"--val-root {args.val_root} has the classes {root.class_names[1:]} (classes.txt, or VOC's), "
                f"the training labels {tags.class_names[1:]}: they must be the same, in the same order "
                "(give --classes, or write the root's classes.txt)",
            )
    return tags, val_tags


def set_tf32(enabled: bool) -> None:
    """``--tf32``: matmul precision "high" and TF32 convolutions, else full float32 for both."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled


def main(dataset: str, argv: list[str] | None = None) -> None:
    """Parses the command line and trains (``mcc-train``, ``mcc-train-voc``, ``mcc-train-coco``); a user's
    mistake is one line on stderr and exit status 2 (:func:`mcc.cli._common.run_cli`).

    Args:
        dataset: ``"voc"`` or ``"coco"`` (a VOC-layout root), or ``"tags"`` (``mcc-train``).
        argv: the arguments (default ``sys.argv[1:]``).
    """
    run_cli("mcc-train" if dataset == "tags" else f"mcc-train-{dataset}", _main, dataset, argv)


def _main(dataset: str, argv: list[str] | None = None) -> None:
    from_tags = dataset == "tags"
    parser = build_tags_parser(argv) if from_tags else build_parser(dataset)
    args = parse_args(parser, argv)
    dataset = args.dataset
    try:
        config = mcc_config(args)
    except ValueError as error:
        parser.error(str(error))
    tags, val_tags = read_training_tags(args, parser) if from_tags else (None, None)
    context = init_distributed(args.device, timeout_s=args.dist_timeout)
    set_tf32(args.tf32)
    try:
        seed_everything(args.seed)  # same seed on every rank: DDP also broadcasts rank 0's weights
        model_kwargs = dict(args.vit)
        # the data first: its mistakes are found before a download; the datasets draw no random numbers
        if from_tags:
            train_set = TagTrainViews(tags, crop_size=args.crop_size, seed=args.data_seed)
            val_set = VOCSegmentation(args.val_root, args.val_split) if args.val_root else None
        else:
            train_set = VOCTrainViews(
                args.data_root, args.train_split, crop_size=args.crop_size, seed=args.data_seed
            )
            val_set = VOCSegmentation(args.data_root, args.val_split) if args.val_split else None
        vit = build_backbone(args, parser)
        try:
            mean, std = backbone_pixel_stats(vit, args)
        except ValueError as error:
            parser.error(str(error))
        # the data and the network use the statistics of the backbone's weights (CLIP, EVA-02: CLIP's)
        for dataset_ in (train_set, val_set):
            if dataset_ is not None:
                dataset_.mean, dataset_.std = mean, std
        if config.w_consistency:  # DuPL's consistency term needs its strong view of every crop
            train_set.strong_view = StrongAugment()
        try:
            net = MCCNet(vit, train_set.num_foreground_classes, config, pixel_mean=mean, pixel_std=std)
        except ValueError as error:
            hint = " (MCCConfig fields are set with --mcc KEY=VALUE, e.g. --mcc aux_layer=-2)"
            raise UserError(f"{error}{hint if 'aux_layer' in str(error) else ''}") from error
        try:
            net.check_crop_size(args.crop_size)
        except ValueError as error:
            parser.error(f"--crop-size {args.crop_size}: {error}")
        settings = TrainSettings(
            work_dir=args.work_dir,
            max_iters=args.max_iters,
            batch_size=args.batch_size,
            accumulation_steps=args.accumulation_steps,
            base_lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_iters=warmup_iters(args),
            seed=args.seed,
            num_workers=args.num_workers,
            amp=args.amp,
            log_every=args.log_every,
            eval_every=args.eval_every if val_set is not None else 0,
            eval_max_images=args.eval_max_images,
            eval_bkg_thre=args.bkg_thre,
            save_every=args.save_every,
            best_metric=args.best_metric,
            resume=args.resume,
            stop_after=args.stop_after,
            tensorboard=args.tensorboard,
        )
        if context.is_main:
            write_args(args, Path(args.work_dir))
            what = f"tags of {args.labels}" if from_tags else dataset
            print(
                f"{what}: {len(train_set)} training images, {train_set.num_foreground_classes} classes, "
                f"world size {context.world_size}, {context.device}"
            )
            if args.schedule == "scaled":
                print(
                    f"schedule scaled to {args.max_iters} steps: warm-up {settings.warmup_iters}, "
                    f"segmentation loss from {config.seg_start_step}, "
                    f"final-CAM positives from {config.final_cam_positives_from}"
                )
        extra = {
            "model": args.model,
            "model_kwargs": model_kwargs,
            "crop_size": args.crop_size,
            "pixel_mean": list(mean),
            "pixel_std": list(std),
            "dataset": "tags" if from_tags else dataset,
            "class_names": list(train_set.class_names),
            "args": vars(args),
        }
        result = train(
            net,
            train_set,
            settings,
            val_set=val_set,
            context=context,
            extra_config=json.loads(json.dumps(extra, default=str)),
        )
        if val_tags is not None:
            _score_tags(net, val_tags, mean, std, args, context, result.step)
        if context.is_main:
            best = "none" if result.best is None else f"{100 * result.best[0]:.2f} at step {result.best[1]}"
            print(
                f"done: {result.step} steps, best {settings.best_metric} mIoU {best}, "
                f"files in {args.work_dir}"
            )
    finally:
        cleanup_distributed()
        sys.stdout.flush()


def _score_tags(net, val_tags, mean, std, args, context, step: int) -> None:
    """Classification mAP / F1 of the trained network on ``--val-labels``, added to ``metrics.json``."""
    from mcc.training.outputs import write_json
    from mcc.training.predict import evaluate_tags

    dataset = TagImages(val_tags, mean=mean, std=std)
    record = evaluate_tags(
        net,
        dataset,
        device=context.device,
        max_images=args.eval_max_images,
        rank=context.rank,
        world_size=context.world_size,
        autocast_dtype=torch.bfloat16 if args.amp and context.device.type == "cuda" else None,
    )
    if not context.is_main:
        return
    path = Path(args.work_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics["tags"] = {"iteration": step, "labels": str(args.val_labels), "scores": record}
    write_json(path, metrics)
    print(
        f"tags of {args.val_labels} ({record['num_images']} images): mAP "
        f"{_pct(record['map'])}, F1 {_pct(record['f1'])} (threshold {record['threshold']})"
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main_tags(argv: list[str] | None = None) -> None:
    """Console script ``mcc-train``: train from image-level tags (``--images``, ``--labels``)."""
    main("tags", argv)


def main_voc(argv: list[str] | None = None) -> None:
    """Console script ``mcc-train-voc``."""
    main("voc", argv)


def main_coco(argv: list[str] | None = None) -> None:
    """Console script ``mcc-train-coco``."""
    main("coco", argv)


def _module_main(argv: list[str] | None = None) -> None:
    """``python -m mcc.cli.train [voc|coco] [options]``: ``mcc-train`` without a first argument,
    ``mcc-train-voc`` / ``mcc-train-coco`` with one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DATASET_DEFAULTS:
        main(argv[0], argv[1:])
        return
    if argv[:1] in (["-h"], ["--help"]):
        print(
            "usage: python -m mcc.cli.train [options]             (mcc-train: from tags, options below)\n"
            "       python -m mcc.cli.train {voc,coco} [options]  (mcc-train-voc / mcc-train-coco: a "
            "VOC-layout root; python -m mcc.cli.train voc --help)\n"
        )
        print(build_tags_parser(argv).format_help())
        return
    main("tags", argv)


if __name__ == "__main__":
    _module_main()
