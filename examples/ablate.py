"""Ablations of MCC on CPU: arms that differ in one thing, same data, seeds and budget, mean +- std.

    make ablation      # = HF_HUB_OFFLINE=1 .venv/bin/python examples/ablate.py --jobs 2

1. makes the pretrained stand-in once (``python -m mcc.cli.pretrain``: the small ViT trained as a
   classifier on a separate synthetic shapes set, not ImageNet) unless ``--standin`` exists;
2. writes one synthetic VOC (``mcc.data.make_synthetic_voc``, data seed 0) shared by every run;
3. trains every (arm, seed) with ``mcc.training.train`` and scores it with ``mcc.training.evaluate``
   on the synthetic validation split: CAM (threshold 0.5), CAM + PAR (one background level 0.5), the
   training target on the pixels it labels, and the segmentation (flip); runs already done with the same
   settings are skipped (each run's JSON is written atomically), and ``--jobs 2`` runs two at a time, one
   thread each;
4. writes ``results.json`` (every run, and per arm the mean, the std over seeds and the paired difference
   to the baseline of the same start), ``table.md`` and ``ablation.png`` (bars with error bars) to
   ``--out``.

Within one seed every arm starts from the same weights (the stand-in, or the same random
initialisation), sees the same batches, views and key masks, so ``arm - baseline`` per seed is a paired
difference. The arms (``--list`` prints them) are defined in ``ARMS``; see docs/ablation.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mcc.cli._common import ArgumentParser, HelpFormatter, run_cli
from mcc.data import StrongAugment, VOCSegmentation, VOCTrainViews, make_synthetic_voc
from mcc.network import MCCConfig, MCCNet
from mcc.training import ConfusionMatrix, TrainSettings, evaluate, train
from mcc.training.pretrain import ViTArch, load_standin

METRICS = ("cam", "pseudo", "pseudo_train", "seg")
METRIC_NAMES = {
    "cam": "CAM",
    "pseudo": "CAM+PAR",
    "pseudo_train": "training target",
    "seg": "segmentation",
}


@dataclass(frozen=True)
class Arm:
    """One ablation arm: where it starts and what it changes in the base configuration.

    Attributes:
        description: one line for the table.
        pretrained: start from the stand-in (True) or from random weights.
        overrides: :class:`~mcc.MCCConfig` fields changed from :func:`base_config`.
        reference: the arm it differs from in one thing (paired differences are taken against it).
    """

    description: str
    pretrained: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    reference: str | None = "base"


# The masked contrast as the paper's text has it (Eq. 10 InfoNCE, ratio 0.75, aux-CAM positives);
# the other paper-preset differences (plain cosine affinity, w_seg 1) are not the contrast and stay.
PAPER_CONTRAST = {
    "infonce_variant": "paper",
    "mask_ratio": 0.75,
    "positive_cam": "aux",
    "final_cam_positives_from": None,
}

# DuPL's and CoSA's options on top of released MCC, at the published fractions of the run (values that
# depend on the run length are functions of ``steps``, resolved by base_config): DuPL's dynamic threshold
# descends over steps 2000-20000 (10 %-100 %) to per-class targets (the synthetic classes have no hand-set
# targets: all take DuPL's common 0.55); its filter and consistency start at 8000 (40 %), the filter's
# 1000 pixels of a 448 px crop scale to 20 of a 64 px one; CoSA's EMA decay 0.9994 over 20000 steps keeps
# its horizon of 1 / (1 - 0.9994) = 1/12 of the run: 1 - 0.0006 * 20000 / steps.
DUPL_THRESHOLD = {
    "dynamic_thre": lambda steps, num_classes: (0.55,) * num_classes,
    "dynamic_thre_steps": lambda steps, num_classes: (steps // 10, steps),
}
DUPL_FILTER = {
    "gmm_filter_from": lambda steps, num_classes: int(0.4 * steps),
    "gmm_min_pixels": 20,
}
DUPL_CONSISTENCY = {
    "w_consistency": 0.05,
    "consistency_from": lambda steps, num_classes: int(0.4 * steps) + 1,
}
COSA_TEACHER = {
    "ema_teacher_decay": lambda steps, num_classes: max(0.0, 1 - 0.0006 * 20000 / steps),
    "w_seg_to_cam": 0.05,
}

ARMS: dict[str, Arm] = {
    "base": Arm("pretrained, no masked contrast (w_mcc = 0)", overrides={"w_mcc": 0.0}, reference=None),
    "mcc": Arm("+ masked contrast, released (ratio 0.95)"),
    "mcc_paper": Arm("+ masked contrast, paper variant (Eq. 10, ratio 0.75)", overrides=PAPER_CONTRAST),
    "mcc_r0.75": Arm("+ masked contrast, released, ratio 0.75", overrides={"mask_ratio": 0.75}),
    "mcc_r0.5": Arm("+ masked contrast, released, ratio 0.5", overrides={"mask_ratio": 0.5}),
    "mcc_warmup": Arm("+ masked contrast, released, w_mcc warm-up", overrides={"mcc_warmup_steps": -1}),
    "no_aff": Arm("released MCC without the affinity loss", overrides={"w_affinity": 0.0}, reference="mcc"),
    "no_par": Arm(
        "released MCC, target = thresholded CAM (no PAR)", overrides={"seg_target": "cam"}, reference="mcc"
    ),
    "dupl_threshold": Arm(
        "released MCC + DuPL's dynamic threshold", overrides=DUPL_THRESHOLD, reference="mcc"
    ),
    "dupl_filter": Arm("released MCC + DuPL's GMM label filter", overrides=DUPL_FILTER, reference="mcc"),
    "dupl_consistency": Arm(
        "released MCC + DuPL's strong-view consistency", overrides=DUPL_CONSISTENCY, reference="mcc"
    ),
    "cosa_teacher": Arm(
        "released MCC + CoSA's EMA teacher and seg-to-CAM", overrides=COSA_TEACHER, reference="mcc"
    ),
    "dupl_cosa_all": Arm(
        "released MCC + all four of them",
        overrides={**DUPL_THRESHOLD, **DUPL_FILTER, **DUPL_CONSISTENCY, **COSA_TEACHER},
        reference="mcc",
    ),
    "base_scratch": Arm(
        "from scratch, no masked contrast", pretrained=False, overrides={"w_mcc": 0.0}, reference=None
    ),
    "mcc_warmup_scratch": Arm(
        "from scratch, + masked contrast, w_mcc warm-up",
        pretrained=False,
        overrides={"mcc_warmup_steps": -1},
        reference="base_scratch",
    ),
    "mcc_scratch": Arm(
        "from scratch, + masked contrast (released)", pretrained=False, reference="base_scratch"
    ),
}
DEFAULT_ARMS = (
    "base",
    "mcc",
    "mcc_paper",
    "mcc_r0.75",
    "mcc_r0.5",
    "mcc_warmup",
    "no_aff",
    "no_par",
    "base_scratch",
    "mcc_scratch",
    "mcc_warmup_scratch",
)


DUPL_COSA_ARMS = ("mcc", "dupl_threshold", "dupl_filter", "dupl_consistency", "cosa_teacher", "dupl_cosa_all")


def base_config(steps: int, num_classes: int = 20, **overrides) -> MCCConfig:
    """The released preset with its schedule and sizes scaled to a short run on 64 px images.

    Schedule switches at the published fractions of the run (published, of 20000 steps: segmentation
    loss from step 2000 = 10 %, final-CAM positives from 12000 = 60 %). Key-mask cells of one token:
    the 8 x 8 token grid then has 64 cells (published: 7 x 7 = 49), so at ratio 0.95 about 4 % of the
    masked views drop every key (published 8 %; with 2 x 2 cells, 16 cells, it would be 44 %).
    ``mcc_warmup_steps=-1`` means half of the steps; an override that is a function is called with
    ``(steps, num_classes)``.
    """
    overrides = {k: v(steps, num_classes) if callable(v) else v for k, v in overrides.items()}
    if overrides.get("mcc_warmup_steps") == -1:
        overrides["mcc_warmup_steps"] = steps // 2
    scaled = {
        "seg_start_step": steps // 10,
        "final_cam_positives_from": int(0.6 * steps),
        "mask_scale": 1,
        "projector_dim": 256,
        "projector_hidden_dim": 256,
        "projector_bottleneck_dim": 64,
        "decoder_dim": 128,
        "decoder_dilation": 2,
    }
    return MCCConfig.released("voc", **{**scaled, **overrides})


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", default="runs/ablation", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--arms", default=",".join(DEFAULT_ARMS), help="comma-separated arm names (default: %(default)s)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default: %(default)s")
    parser.add_argument(
        "--steps", type=int, default=200, help="optimiser steps per run (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=6e-4, help="encoder lr, heads x10 (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=400, help="default: %(default)s")
    parser.add_argument("--num-val", type=int, default=50, help="default: %(default)s")
    parser.add_argument("--standin", default="runs/pretrain/standin_vit.pt", help="default: %(default)s")
    parser.add_argument(
        "--standin-args",
        default="",
        help="options of python -m mcc.cli.pretrain when the stand-in is made here, e.g. '--steps 100'",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at a time, one thread each (default: %(default)s)"
    )
    parser.add_argument("--list", action="store_true", help="print the arms and exit")
    parser.add_argument(
        "--no-run",
        action="store_true",
        help="only aggregate the runs already finished (e.g. while another ablate.py is still running)",
    )
    return parser


# -- one run ------------------------------------------------------------------------------------------------


def _setup(args: argparse.Namespace, arch: ViTArch) -> dict[str, Any]:
    """What every run of one ablation shares; a stored run is reused only when its setup is equal."""
    return {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "num_train": args.num_train,
        "num_val": args.num_val,
        "data_seed": 0,
        "arch": dataclasses.asdict(arch),
        "standin": str(args.standin),
    }


def _write_json(path: Path, value: Any) -> None:
    """Atomic write: a temporary file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(json.dumps(value, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_path(out: Path, arm: str, seed: int) -> Path:
    return out / "runs" / arm / f"seed{seed}.json"


def _claim(path: Path) -> bool:
    """Takes the lock file of a run (holding this process id); False if a live process holds it.

    Several ``ablate.py`` processes on one machine can then share a set of runs: each runs what no
    other is running. A lock whose process is gone (a killed run) is taken over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(path.read_text() or 0), 0)
                return False  # held by a live process
            except (ProcessLookupError, ValueError, FileNotFoundError):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except PermissionError:
                return False
        with os.fdopen(handle, "w") as file:
            file.write(str(os.getpid()))
        return True
    return False


def run_one(task: tuple[str, int, dict[str, Any], str]) -> dict[str, Any] | None:
    """Trains and scores one (arm, seed); writes and returns its record (None: another process has it)."""
    arm_name, seed, setup, out = task
    out = Path(out)
    lock = run_path(out, arm_name, seed).with_suffix(".lock")
    if not _claim(lock):
        return None
    try:
        done = run_path(out, arm_name, seed)
        if done.is_file():  # finished by another process since the task list was made
            record = json.loads(done.read_text())
            if record.get("setup") == setup:
                return record
        return _run_one(arm_name, seed, setup, out)
    finally:
        lock.unlink(missing_ok=True)


def _run_one(arm_name: str, seed: int, setup: dict[str, Any], out: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    arm = ARMS[arm_name]
    root = out / "data"
    steps = setup["steps"]
    arch = ViTArch(**setup["arch"])

    if arm.pretrained:
        vit, _ = load_standin(setup["standin"])
    else:
        torch.manual_seed(seed)
        vit = arch.build(num_classes=0)
    torch.manual_seed(seed)  # the heads: the same for every arm of one seed
    train_set = VOCTrainViews(root, "train", crop_size=arch.img_size, seed=seed)
    config = base_config(steps, train_set.num_foreground_classes, **arm.overrides)
    if config.w_consistency:  # DuPL's strong view, drawn after the other views (they stay the same)
        train_set.strong_view = StrongAugment()
    val_set = VOCSegmentation(root, "val")
    net = MCCNet(vit, train_set.num_foreground_classes, config)
    settings = TrainSettings(
        work_dir=str(out / "work" / arm_name / f"seed{seed}"),
        max_iters=steps,
        batch_size=setup["batch_size"],
        base_lr=setup["lr"],
        warmup_iters=steps // 10,
        seed=seed,
        num_workers=0,
        log_every=steps,
        eval_every=0,
        eval_at_end=False,
        save_every=0,
        save_best=False,
    )
    tic = time.perf_counter()
    result = train(net, train_set, settings, device="cpu", log=lambda message: None)
    trained = time.perf_counter()
    scores = evaluate(net, val_set, device="cpu", pseudo_labels=True, bkg_thre=0.5, flip=True)
    tail = result.history[-max(1, steps // 10) :]  # the last 10 % of the steps
    losses = {name: sum(h[name] for h in tail) / len(tail) for name in tail[0] if name not in ("step", "lr")}
    record = {
        "arm": arm_name,
        "seed": seed,
        "setup": setup,
        "config": dataclasses.asdict(config),
        "pretrained": arm.pretrained,
        "miou": {name: 100 * scores[name].miou for name in METRICS},
        "target_coverage": 100 * scores["pseudo_train_coverage"].pixel_accuracy,
        "final_losses": losses,
        "train_s": trained - tic,
        "eval_s": time.perf_counter() - trained,
    }
    _write_json(run_path(out, arm_name, seed), record)
    return record


# -- aggregation ---------------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> dict[str, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values)}


def background_baseline(root: Path) -> float:
    """mIoU (%) of labelling every validation pixel background."""
    val_set = VOCSegmentation(root, "val")
    matrix = ConfusionMatrix(val_set.num_classes)
    for index in range(len(val_set)):
        mask = val_set[index]["mask"]
        matrix.update(torch.zeros_like(mask), mask)
    return 100 * matrix.compute().miou


def summarise(records: list[dict[str, Any]], arms: list[str], background: float) -> dict[str, Any]:
    by_arm: dict[str, dict[int, dict]] = {}
    for record in records:
        by_arm.setdefault(record["arm"], {})[record["seed"]] = record
    summary: dict[str, Any] = {}
    for name in arms:
        runs = by_arm.get(name, {})
        if not runs:
            continue
        entry: dict[str, Any] = {
            "description": ARMS[name].description,
            "reference": ARMS[name].reference,
            "seeds": sorted(runs),
            "miou": {m: _mean_std([r["miou"][m] for r in runs.values()]) for m in METRICS},
            "target_coverage": _mean_std([r["target_coverage"] for r in runs.values()]),
            "positive_rate": _mean_std([r["final_losses"]["positive_rate"] for r in runs.values()]),
            "train_s": _mean_std([r["train_s"] for r in runs.values()]),
        }
        reference = by_arm.get(ARMS[name].reference or "", {})
        paired = sorted(set(runs) & set(reference))
        if paired:
            entry["difference"] = {
                m: _mean_std([runs[s]["miou"][m] - reference[s]["miou"][m] for s in paired]) for m in METRICS
            }
            entry["difference_seeds"] = paired
        summary[name] = entry
    return {"background_miou": background, "arms": summary, "shared_config": shared_config(records)}


def shared_config(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The config every run shares once the arms' own fields are set aside; None if two runs differ.

    A check that all runs were made by the same code and base configuration (no field changed between
    runs made at different times).
    """
    changed = {key for arm in ARMS.values() for key in arm.overrides}
    shared = None
    for record in records:
        rest = {k: v for k, v in record["config"].items() if k not in changed}
        if shared is None:
            shared = rest
        elif rest != shared:
            return None
    return shared


def markdown_table(summary: dict[str, Any]) -> str:
    header = "| arm | " + " | ".join(METRIC_NAMES[m] for m in METRICS) + " | seeds |"
    lines = [header, "|" + "---|" * (len(METRICS) + 2)]
    for name, entry in summary["arms"].items():
        cells = [f"{entry['miou'][m]['mean']:.1f} ± {entry['miou'][m]['std']:.1f}" for m in METRICS]
        lines.append(
            f"| `{name}`: {entry['description']} | " + " | ".join(cells) + f" | {len(entry['seeds'])} |"
        )
    background = f"{summary['background_miou']:.1f}"
    lines.append(f"| all-background prediction | {background} | {background} | | {background} | |")
    lines += ["", "Paired difference to the reference arm (same seeds), mean ± std over seeds:", ""]
    lines += ["| arm | vs | " + " | ".join(f"Δ {METRIC_NAMES[m]}" for m in METRICS) + " |"]
    lines.append("|" + "---|" * (len(METRICS) + 2))
    for name, entry in summary["arms"].items():
        if "difference" in entry:
            cells = [
                f"{entry['difference'][m]['mean']:+.1f} ± {entry['difference'][m]['std']:.1f}"
                for m in METRICS
            ]
            lines.append(f"| `{name}` | `{entry['reference']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """One panel per score: a bar per arm (mean over seeds) with the std over seeds as error bar.

    Stand-in arms are blue, from-scratch arms orange; the baselines (``w_mcc = 0``) are darker. The dashed
    line is the all-background prediction.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary["arms"])
    fig, axes = plt.subplots(2, 2, figsize=(max(8.0, 0.55 * len(arms) + 4), 7.5), sharex=True)
    colors = []
    for name in arms:
        scratch = not ARMS[name].pretrained
        baseline = ARMS[name].reference is None
        colors.append(
            ("#b35806" if baseline else "#f1a340") if scratch else ("#2c7bb6" if baseline else "#abd9e9")
        )
    for ax, metric in zip(axes.flat, METRICS):
        means = [summary["arms"][a]["miou"][metric]["mean"] for a in arms]
        stds = [summary["arms"][a]["miou"][metric]["std"] for a in arms]
        ax.bar(range(len(arms)), means, yerr=stds, capsize=3, color=colors, edgecolor="black", linewidth=0.5)
        ax.axhline(summary["background_miou"], color="black", linestyle="--", linewidth=1)
        seeds = {len(summary["arms"][a]["seeds"]) for a in arms}
        ax.set_title(f"{METRIC_NAMES[metric]} (mean ± std over {'/'.join(map(str, sorted(seeds)))} seeds)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylabel("mIoU (%)")
    for ax in axes[1]:
        ax.set_xticks(range(len(arms)), arms, rotation=45, ha="right")
    fig.suptitle("MCC ablations, synthetic VOC val (dashed: all-background prediction)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.list:
        for name, arm in ARMS.items():
            print(f"{name:14s} {arm.description}  {arm.overrides}")
        return {}
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise ValueError(f"--arms: unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    if args.jobs < 1 or args.steps < 10:
        raise ValueError("--jobs must be >= 1 and --steps >= 10")
    out = Path(args.out)
    torch.set_num_threads(1)

    standin = Path(args.standin)
    if any(ARMS[a].pretrained for a in arms):
        from mcc.cli.pretrain import ensure_standin

        ensure_standin(standin, args.standin_args.split())
        _, meta = load_standin(standin)
        arch = ViTArch(**torch.load(standin, map_location="cpu", weights_only=True)["arch"])
    else:
        meta, arch = {}, ViTArch()
    setup = _setup(args, arch)
    root = out / "data"
    if not (root / "classes.txt").is_file():
        make_synthetic_voc(root, args.num_train, args.num_val, arch.img_size, seed=0)

    records, tasks = [], []
    for seed in args.seeds:  # seed-major: a partial run covers every arm
        for arm in arms:
            path = run_path(out, arm, seed)
            if path.is_file():
                record = json.loads(path.read_text())
                if record.get("setup") == setup:
                    records.append(record)
                    continue
                print(f"{path}: made with other settings, running it again")
            tasks.append((arm, seed, setup, str(out)))
    if args.no_run:
        tasks = []
    print(f"{len(records)} run(s) done before, {len(tasks)} to run on {args.jobs} job(s)", flush=True)

    tic = time.perf_counter()
    if tasks:
        if args.jobs == 1:
            results = map(run_one, tasks)
        else:
            pool = multiprocessing.get_context("spawn").Pool(args.jobs)
            results = pool.imap_unordered(run_one, tasks)
        for record in results:
            if record is None:
                continue  # another ablate.py process is running it
            records.append(record)
            m = record["miou"]
            print(
                f"[{time.perf_counter() - tic:6.0f}s] {record['arm']:13s} seed {record['seed']}: "
                + " ".join(f"{METRIC_NAMES[k]} {m[k]:.1f}" for k in METRICS)
                + f" ({record['train_s']:.0f}s train)",
                flush=True,
            )
        if args.jobs > 1:
            pool.close()
            pool.join()

    summary = summarise(records, arms, background_baseline(root))
    results = {
        "command": "python examples/ablate.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "setup": setup,
        "standin": meta,
        **summary,
        "runs": sorted(records, key=lambda r: (r["arm"], r["seed"])),
    }
    _write_json(out / "results.json", results)
    table = markdown_table(summary)
    (out / "table.md").write_text(table)
    plot(summary, out / "ablation.png")
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'ablation.png'}")
    return results


if __name__ == "__main__":
    run_cli("ablate.py", main)
