"""Makes docs/figures/cam_pipeline.png: image, CAM, three-way label, PAR label, ground truth.

Everything is computed by the library on synthetic images (``mcc.data.synthetic_voc``). No classifier
is trained here: a stand-in ``cam_fn`` sees the ground-truth mask through 16-pixel tokens, squares the
token coverage (thin parts and edges fade, like a CAM that fires on discriminative parts) and blurs it
over neighbouring tokens (activation leaking onto the background). ``multi_scale_cam`` runs it at
scales 1.0, 0.5, 1.5 with flips; ``cam_to_label`` and ``refine_cams_with_background`` (with ``PAR``)
turn the CAM into labels. Needs only numpy and PIL.

    python docs/figures/make_cam_figure.py            # writes docs/figures/cam_pipeline.png
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from mcc.cam import cam_to_label, multi_scale_cam
from mcc.data.layout import voc_palette
from mcc.data.synthetic_voc import SYNTHETIC_CLASSES, render_synthetic_sample
from mcc.refine import PAR, refine_cams_with_background

NUM_FG = len(SYNTHETIC_CLASSES) - 1
TOKEN = 16
TITLES = ("image", "CAM (multi_scale_cam)", "three-way (0.25 / 0.7)", "PAR label", "ground truth")


def stand_in_cam_fn(inputs: torch.Tensor) -> tuple[torch.Tensor, None]:
    """``inputs`` (N, 3 + NUM_FG, h, w): RGB then one-hot foreground masks; returns token-grid maps."""
    coverage = F.avg_pool2d(inputs[:, 3:], TOKEN, ceil_mode=True)
    return F.avg_pool2d(coverage.square(), 3, stride=1, padding=1, count_include_pad=False), None


def heat(values: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) float, a jet-like colour map."""
    x = values[..., None] * 4
    return np.clip(1.5 - np.abs(x - np.array([3.0, 2.0, 1.0])), 0, 1)


def colour_label(label: np.ndarray) -> Image.Image:
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    return image.convert("RGB")


def labelled_accuracy(label: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(fraction of pixels labelled, accuracy on them)."""
    labelled = label != 255
    return float(labelled.mean()), float((label[labelled] == truth[labelled]).mean())


def make_figure(seeds, size: int) -> tuple[Image.Image, list[str]]:
    panels, notes = [], []
    par = PAR()
    for seed in seeds:
        image_u8, truth = render_synthetic_sample(np.random.default_rng(seed), size)
        image = torch.from_numpy(image_u8).permute(2, 0, 1)[None].float() / 255
        onehot = F.one_hot(torch.from_numpy(truth).long(), NUM_FG + 1).permute(2, 0, 1)[None, 1:].float()
        cls_label = (onehot.flatten(2).amax(2) > 0).float()  # image label from the mask

        cam, _ = multi_scale_cam(stand_in_cam_fn, torch.cat([image, onehot], 1), scales=(1.0, 0.5, 1.5))
        three_way = cam_to_label(cam, cls_label, low_thre=0.25, high_thre=0.7)[0].numpy()
        refined = refine_cams_with_background(par, image, cam, cls_label)[0].numpy()

        score = (cam * cls_label[:, :, None, None]).amax(1)[0].numpy()
        overlay = 0.45 * image_u8 / 255 + 0.55 * heat(score)
        row = [
            Image.fromarray(image_u8),
            Image.fromarray((overlay * 255 + 0.5).astype(np.uint8)),
            colour_label(three_way),
            colour_label(refined),
            colour_label(truth),
        ]
        panels.append(row)
        for name, label in (("three-way", three_way), ("PAR", refined)):
            covered, accuracy = labelled_accuracy(label, truth)
            notes.append(f"seed {seed} {name:9}: {covered:6.1%} of pixels labelled, {accuracy:6.1%} correct")

    gap, header = 4, 16
    width = len(TITLES) * size + (len(TITLES) - 1) * gap
    height = header + len(panels) * size + (len(panels) - 1) * gap
    figure = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default()
    for col, title in enumerate(TITLES):
        draw.text((col * (size + gap) + 2, 2), title, fill="black", font=font)
    for row, images in enumerate(panels):
        for col, panel in enumerate(images):
            figure.paste(panel, (col * (size + gap), header + row * (size + gap)))
    return figure, notes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "cam_pipeline.png")
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 5, 11])
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()
    torch.manual_seed(0)
    figure, notes = make_figure(args.seeds, args.size)
    # 256 colours are plenty for flat label panels and keep the PNG small.
    figure.quantize(256, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print("\n".join(notes))
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
