"""How hard the masked contrast pulls on the encoder, against the classification loss: a diagnostic.

    python examples/mcc_gradients.py --data runs/ablation/data --standin runs/pretrain/standin_vit.pt

For a random start and the pretrained stand-in (and any ``--checkpoint`` of ``examples/ablate.py``
runs, ``runs/ablation/work/<arm>/seed<k>/last.pt``), on ``--batches`` training batches of the
ablation's data and config (``ablate.base_config``) at each mask ratio, prints and writes to ``--out``:

* ``grad_ratio``: ``|grad of w_mcc * mcc|`` over ``|grad of cls + cls_aux|`` on the encoder's
  parameters (the contrast's pull against the classification's), with ``w_mcc = 0.5`` (the released
  weight) also for checkpoints of ``w_mcc = 0`` arms;
* ``cos``: the cosine between those two gradients (negative: they pull apart);
* ``positive_rate``: the fraction of masked views judged positive, and ``all_dropped``: the fraction of
  masked views whose keys are all dropped (their class token sees no patch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablate import base_config  # noqa: E402

from mcc.cli._common import ArgumentParser, HelpFormatter, run_cli  # noqa: E402
from mcc.data import VOCTrainViews  # noqa: E402
from mcc.network import MCCConfig, MCCNet  # noqa: E402
from mcc.training import load_checkpoint  # noqa: E402
from mcc.training.pretrain import ViTArch, load_standin  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data", default="runs/ablation/data", help="synthetic VOC root of the ablation")
    parser.add_argument("--standin", default="runs/pretrain/standin_vit.pt", help="stand-in weights file")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="last.pt files of ablation runs")
    parser.add_argument(
        "--ratios", type=float, nargs="+", default=[0.5, 0.75, 0.95], help="mask ratios to probe"
    )
    parser.add_argument("--batches", type=int, default=4, help="training batches averaged per probe")
    parser.add_argument("--steps", type=int, default=200, help="the ablation's run length (its config)")
    parser.add_argument("--out", default="runs/ablation/gradients.json", help="JSON file of the results")
    return parser


def measure(net: MCCNet, batches: list[dict], step: int) -> dict[str, float]:
    encoder = [p for p in net.encoder.parameters() if p.requires_grad]
    sums = {"grad_ratio": 0.0, "cos": 0.0, "positive_rate": 0.0, "all_dropped": 0.0}
    for index, batch in enumerate(batches):
        generator = torch.Generator().manual_seed(index)
        labels = net.make_labels(batch["x"], batch["cls_label"], batch["img_box"], step, generator=generator)
        losses = net.training_losses(
            batch["x"], batch["v1"], batch["v2"], batch["cls_label"], batch["img_box"], step, labels=labels
        )
        cfg = net.config
        cls = torch.autograd.grad(
            cfg.w_cls * losses.cls + cfg.w_cls_aux * losses.cls_aux, encoder, retain_graph=True
        )
        mcc = torch.autograd.grad(cfg.w_mcc * losses.mcc, encoder, allow_unused=True)
        g_cls = torch.cat([g.flatten() for g in cls])
        g_mcc = torch.cat(
            [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(mcc, encoder)]
        )
        sums["grad_ratio"] += float(g_mcc.norm() / g_cls.norm())
        sums["cos"] += float(torch.nn.functional.cosine_similarity(g_mcc, g_cls, dim=0))
        sums["positive_rate"] += float(losses.positive_rate)
        sums["all_dropped"] += float(labels.key_mask.all(-1).float().mean())
    return {k: v / len(batches) for k, v in sums.items()}


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    data = VOCTrainViews(args.data, "train", crop_size=64, seed=0)
    loader = DataLoader(data, batch_size=8, shuffle=False)
    batches = [b for _, b in zip(range(args.batches), loader)]
    starts = {"random": None, "standin": args.standin, **{c: c for c in args.checkpoint}}
    results = {}
    for name, source in starts.items():
        for ratio in args.ratios:
            config = base_config(args.steps, mask_ratio=ratio)
            torch.manual_seed(0)
            if source is None:
                vit = ViTArch().build(0)
            elif name == "standin":
                vit, _ = load_standin(source)
            else:
                vit = ViTArch().build(0)
            net = MCCNet(vit, data.num_classes - 1, config)
            step = 0
            if source is not None and name != "standin":
                state = load_checkpoint(source)
                net.load_state_dict(state["model"])
                saved = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"]["mcc"].items()}
                net.config = dataclasses.replace(MCCConfig(**saved), mask_ratio=ratio, w_mcc=0.5)
                net.mask_sampler.ratio = ratio
                step = int(state["step"]) - 1
            results[f"{name} @ {ratio}"] = row = measure(net, batches, step)
            print(
                f"{name:40s} ratio {ratio:.2f}: " + " ".join(f"{k} {v:.3f}" for k, v in row.items()),
                flush=True,
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2) + "\n"
    )
    return results


if __name__ == "__main__":
    run_cli("mcc_gradients.py", main)
