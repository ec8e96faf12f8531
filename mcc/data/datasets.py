"""Datasets over a VOC-layout root: validation samples and the aligned training views of MCC."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mcc.data.layout import IGNORE_INDEX, DatasetRoot, read_image, read_mask
from mcc.data.strong_view import StrongAugment
from mcc.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropGeometry,
    PhotometricAugment,
    normalize,
    pixel_stats,
    sample_crop_geometry,
    sample_resized_crop,
)

__all__ = ["TrainViews", "VOCSegmentation", "VOCTrainViews", "seed_worker"]


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for a DataLoader: seed ``random`` and NumPy from the worker's torch seed.

    The datasets here draw only from torch, whose per-worker seed the DataLoader derives from its
    ``generator``; this extends the same determinism to user code that calls ``random`` or NumPy.
    """
    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeding the legacy global state is the point


class _RootDataset(Dataset):
    """What both datasets expose of their :class:`DatasetRoot` (``self.data``)."""

    data: DatasetRoot

    @property
    def ids(self) -> list[str]:
        return self.data.ids

    @property
    def class_names(self) -> list[str]:
        return self.data.class_names

    @property
    def num_classes(self) -> int:
        """C, the number of label values, background included (VOC 21); masks hold values in [0, C)."""
        return self.data.num_classes

    @property
    def num_foreground_classes(self) -> int:
        """C - 1, background excluded (VOC 20): the width of ``cls_label``, ``MCCNet``'s ``num_classes``."""
        return self.data.num_classes - 1


class VOCSegmentation(_RootDataset):
    """Images with their masks, e.g. for validation or for scoring pseudo labels.

    Args:
        root: dataset root in VOC layout (see :mod:`mcc.data.layout`).
        split: split name, e.g. ``"val"``.
        mask_dir: mask folder; default ``SegmentationClassAug`` if present, else ``SegmentationClass``.
        masks: False for splits without ground truth (VOC ``test``): samples then carry only image and id.
        validate: check every id when built (files exist, masks match their images). Mask values are
            always checked while deriving the image labels (cached, see ``DatasetRoot.image_labels``).
        normalize_images: normalise the image with ``mean``/``std`` (True) or return RGB in [0, 1].
        mean: per-channel pixel mean of the normalisation: the backbone's (``vit.pretrained_cfg["mean"]``;
            CLIP and EVA-02 differ from ImageNet, docs/backbones.md). Default ImageNet's.
        std: per-channel pixel standard deviation; default ImageNet's.

    A sample is a dict:

    * ``image``: (3, H, W) float32, the whole image at its own size;
    * ``mask``: (H, W) int64, class indices, 255 = ignore;
    * ``cls_label``: (C - 1,) float32, multi-hot over foreground classes;
    * ``id``: str.

    Images differ in size, so batch with ``batch_size=1`` (or a collate that pads).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "val",
        *,
        mask_dir: str | None = None,
        masks: bool = True,
        validate: bool = True,
        normalize_images: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.mean, self.std = pixel_stats(mean, std)
        self.data = DatasetRoot(root, split, mask_dir=mask_dir, masks=masks, validate=validate)
        self.labels = self.data.image_labels() if masks else None
        self.normalize_images = normalize_images

    def __len__(self) -> int:
        return len(self.data.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.data.ids[index]
        image = read_image(self.data.image_path(image_id))
        if self.normalize_images:
            tensor = normalize(image, self.mean, self.std)
        else:
            tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0
        sample = {"image": tensor, "id": image_id}
        if self.labels is not None:
            mask = read_mask(self.data.mask_path(image_id), self.num_classes, size=image.size)
            sample["mask"] = torch.from_numpy(mask).long()
            sample["cls_label"] = torch.from_numpy(self.labels[index])
        return sample


class TrainViews(Dataset):
    """The three training views of MCC from decoded images: the augmentation every training set shares.

    Subclasses say where the images and labels come from: :class:`VOCTrainViews` (a VOC-layout root)
    and :class:`~mcc.data.TagTrainViews` (image files with image-level tags). They call
    :meth:`_init_views`, set ``labels`` ((N, C - 1) float32) and ``class_names`` (background first) and
    implement ``__len__`` and ``_load(index) -> (RGB PIL image, id)``; :meth:`views` does the rest, so
    the same image, label, seed and index give identical tensors whatever the source.
    """

    _default = object()
    labels: np.ndarray
    class_names: list[str]

    def _init_views(
        self,
        *,
        crop_size: int,
        scale_range: tuple[float, float],
        flip_p: float,
        global_size: int | None,
        global_scale: tuple[float, float],
        x_photometric,
        v1_photometric,
        v2_photometric,
        seed: int | None,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        strong_view: StrongAugment | None = None,
    ) -> None:
        """Checks and stores the view settings (the arguments of :class:`VOCTrainViews` of that name)."""
        self.mean, self.std = pixel_stats(mean, std)
        if strong_view is not None and not callable(strong_view):
            raise ValueError(f"strong_view: expected a StrongAugment or None, got {type(strong_view)}")
        self.strong_view = strong_view
        if crop_size <= 0:
            raise ValueError(f"crop_size: expected a positive int, got {crop_size}")
        if global_size is not None and global_size <= 0:
            raise ValueError(f"global_size: expected a positive int or None, got {global_size}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range: expected 0 < low <= high, got {scale_range}")
        if not 0 < global_scale[0] <= global_scale[1] <= 1:
            raise ValueError(f"global_scale: expected 0 < low <= high <= 1, got {global_scale}")
        if not 0 <= flip_p <= 1:
            raise ValueError(f"flip_p: expected a probability in [0, 1], got {flip_p}")
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.flip_p = flip_p
        self.global_size = global_size or crop_size
        self.global_scale = global_scale
        self.x_photometric = PhotometricAugment() if x_photometric is self._default else x_photometric
        self.v1_photometric = (
            PhotometricAugment(blur_p=0.1, solarize_p=0.2)
            if v1_photometric is self._default
            else v1_photometric
        )
        self.v2_photometric = (
            PhotometricAugment(blur_p=0.5) if v2_photometric is self._default else v2_photometric
        )
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's views when ``seed`` is set (like ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def _generator(self, index: int) -> torch.Generator:
        if self.seed is None:
            seed = int(torch.randint(2**62, ()))
        else:
            seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, np.uint64)[0])
        return torch.Generator().manual_seed(seed)

    def _finish(self, region: Image.Image, photometric: PhotometricAugment | None, generator) -> torch.Tensor:
        if photometric is not None:
            region = photometric(region, generator)
        return normalize(region, self.mean, self.std)

    def _load(self, index: int) -> tuple[Image.Image, str]:
        raise NotImplementedError

    def views(self, image: Image.Image, index: int) -> tuple[dict, CropGeometry]:
        """``x``, ``v1``, ``v2``, ``cls_label`` and ``img_box`` of sample ``index`` from its decoded image.

        Returns:
            the sample (without ``id``) and the crop geometry of ``x`` and ``v2`` (to crop a mask alike).
        """
        generator = self._generator(index)
        # one child generator per view: each view's stream is independent of the others' settings
        x_gen, v1_gen, v2_gen = (
            torch.Generator().manual_seed(int(s)) for s in torch.randint(2**62, (3,), generator=generator)
        )

        geometry = sample_crop_geometry(
            image.height, image.width, self.crop_size, self.scale_range, self.flip_p, generator
        )
        region = geometry.crop(image, Image.Resampling.BILINEAR)
        x_region = region if self.x_photometric is None else self.x_photometric(region, x_gen)
        x = geometry.paste(normalize(x_region, self.mean, self.std))
        v2 = geometry.paste(self._finish(region, self.v2_photometric, v2_gen))

        top, left, height, width = sample_resized_crop(
            image.height, image.width, self.global_scale, (3 / 4, 4 / 3), v1_gen
        )
        flip_v1 = torch.rand((), generator=v1_gen).item() < self.flip_p
        view = image.resize(
            (self.global_size, self.global_size),
            Image.Resampling.BILINEAR,
            box=(left, top, left + width, top + height),
        )
        if flip_v1:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        v1 = self._finish(view, self.v1_photometric, v1_gen)

        sample = {
            "x": x,
            "v1": v1,
            "v2": v2,
            "cls_label": torch.from_numpy(self.labels[index]),
            "img_box": torch.tensor(geometry.box, dtype=torch.long),
        }
        if self.strong_view is not None:
            # drawn last, so the other views do not depend on whether this one is made
            strong_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (), generator=generator)))
            strong = normalize(self.strong_view(x_region, strong_gen), self.mean, self.std)
            sample["strong"] = geometry.paste(strong).flip(-1)  # DuPL's strong view is always mirrored
        return sample, geometry

    def __getitem__(self, index: int) -> dict:
        image, image_id = self._load(index)
        sample, _ = self.views(image, index)
        sample["id"] = image_id
        return sample


class VOCTrainViews(TrainViews, _RootDataset):
    """The three training views of MCC (docs/method.md section 2) with the image-level label.

    * ``x``: rescale by a factor in ``scale_range``, horizontal flip, ``crop_size`` crop with zero padding
      (after normalisation, so padding is the mean colour), then ``x_photometric``.
    * ``v2``: the same crop and flip as ``x`` (one :class:`~mcc.data.transforms.CropGeometry` serves
      both, so masks judged on ``x`` apply to ``v2`` pixel for pixel), its own ``v2_photometric``.
    * ``v1``: random resized crop of the whole image (area ``global_scale``), independent flip, resized
      to ``global_size``, ``v1_photometric`` (with solarize).

    Randomness: with ``seed`` set, sample ``i`` is a pure function of ``(seed, epoch, i)`` - identical
    across runs, worker counts and orders; call :meth:`set_epoch` every epoch for fresh views (with
    ``persistent_workers=False``, so workers see it). With ``seed=None`` each sample draws a seed from
    torch's default generator, which a DataLoader seeds per worker from its ``generator``:
    ``DataLoader(ds, generator=torch.Generator().manual_seed(s), worker_init_fn=seed_worker)`` then
    gives identical batches across runs with the same ``num_workers``.

    Args:
        root: dataset root in VOC layout.
        split: split name, e.g. ``"train_aug"``.
        crop_size: side of ``x`` and ``v2`` (448 in the paper).
        scale_range: range of the random rescale of ``x``.
        flip_p: probability of the horizontal flips (of ``x``/``v2``, and independently of ``v1``).
        global_size: side of ``v1``; default ``crop_size``.
        global_scale: area range of ``v1``'s random resized crop.
        x_photometric: photometric augmentation of ``x``; default jitter p=0.8, grayscale p=0.2, blur p=1.
        v1_photometric: of ``v1``; default jitter p=0.8, grayscale p=0.2, blur p=0.1, solarize p=0.2.
        v2_photometric: of ``v2``; default jitter p=0.8, grayscale p=0.2, blur p=0.5.
            Pass ``None`` for any of the three to turn its photometric changes off.
        seed: see above.
        return_mask: also return ``mask``, the ground truth under ``x``'s geometry (for scoring pseudo
            labels during training and for tests; never a training signal in weak supervision).
        mask_dir, validate, mean, std: as in :class:`VOCSegmentation` (default ImageNet's statistics;
            pass the backbone's, the same as :class:`~mcc.MCCNet`'s ``pixel_mean``/``pixel_std``).
        strong_view: DuPL's strong perturbation (:class:`~mcc.data.StrongAugment`), or None. When set,
            each sample also holds ``strong``: ``x`` (after its photometric changes) perturbed by it,
            pasted like ``x`` and then mirrored as a whole (DuPL flips every strong view), the input of
            the consistency term (``MCCConfig.w_consistency``).

    A sample is a dict:

    * ``x``, ``v2``: (3, crop_size, crop_size) float32, normalised with ``mean``/``std``;
    * ``v1``: (3, global_size, global_size) float32, normalised with ``mean``/``std``;
    * ``cls_label``: (C - 1,) float32, multi-hot over foreground classes;
    * ``img_box``: (4,) int64, ``(y0, y1, x0, x1)``: rows/columns of the crop covered by the image;
    * with ``strong_view``: ``strong``, (3, crop_size, crop_size) float32, normalised, mirrored;
    * ``id``: str; with ``return_mask``: ``mask``, (crop_size, crop_size) int64, 255 outside the box.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train_aug",
        *,
        crop_size: int = 448,
        scale_range: tuple[float, float] = (0.5, 2.0),
        flip_p: float = 0.5,
        global_size: int | None = None,
        global_scale: tuple[float, float] = (0.4, 1.0),
        x_photometric: PhotometricAugment | None = TrainViews._default,
        v1_photometric: PhotometricAugment | None = TrainViews._default,
        v2_photometric: PhotometricAugment | None = TrainViews._default,
        seed: int | None = None,
        return_mask: bool = False,
        mask_dir: str | None = None,
        validate: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        strong_view: StrongAugment | None = None,
    ) -> None:
        self._init_views(
            crop_size=crop_size,
            scale_range=scale_range,
            flip_p=flip_p,
            global_size=global_size,
            global_scale=global_scale,
            x_photometric=x_photometric,
            v1_photometric=v1_photometric,
            v2_photometric=v2_photometric,
            seed=seed,
            mean=mean,
            std=std,
            strong_view=strong_view,
        )
        self.data = DatasetRoot(root, split, mask_dir=mask_dir, validate=validate)
        self.labels = self.data.image_labels()
        self.return_mask = return_mask

    def __len__(self) -> int:
        return len(self.data.ids)

    def _load(self, index: int) -> tuple[Image.Image, str]:
        image_id = self.data.ids[index]
        return read_image(self.data.image_path(image_id)), image_id

    def __getitem__(self, index: int) -> dict:
        image, image_id = self._load(index)
        sample, geometry = self.views(image, index)
        sample["id"] = image_id
        if self.return_mask:
            mask = read_mask(self.data.mask_path(image_id), self.num_classes, size=image.size)
            mask_region = geometry.crop(Image.fromarray(mask), Image.Resampling.NEAREST)
            sample["mask"] = geometry.paste(
                torch.from_numpy(np.asarray(mask_region).copy()).long(), IGNORE_INDEX
            )
        return sample
