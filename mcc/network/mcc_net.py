"""The single-stage MCC network (ToCo-style) and its training step (docs/method.md sections 1-3)."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mcc._checks import check_finite
from mcc.attention import KeyMaskedViT, ScaledBernoulliKeyMask, patch_vit
from mcc.cam import cosine_threshold, image_threshold, multi_scale_cam, multi_scale_cam_seg
from mcc.cam import labels as cam_labels
from mcc.cam.extractor import CamFunction
from mcc.cam.labels import _inside, _label_from_cam
from mcc.cam.multi_scale import _deferred_multi_scale_cam, resize_to_patch_multiple
from mcc.losses import (
    MomentumProjector,
    affinity_labels,
    affinity_loss,
    consistency_loss,
    dense_energy_loss,
    mcc_infonce,
    positive_views,
    seg_to_cam_loss,
)
from mcc.losses._utils import autocast_off, full_precision
from mcc.losses.segmentation import _segmentation_loss
from mcc.network.config import MCCConfig
from mcc.network.decoder import LargeFOV
from mcc.refine import PAR, gmm_noise_filter
from mcc.refine.background import _refine

__all__ = ["MCCLabels", "MCCLosses", "MCCNet", "MCCTrainingStep"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MCCLosses(NamedTuple):
    """The loss terms of one training step (each a scalar tensor) and their weighted sum.

    Attributes:
        total: ``w_cls cls + w_cls_aux cls_aux + w_affinity affinity + w_mcc mcc + w_seg(step) seg``.
        cls: multilabel soft-margin loss of the final classifier (Eq. 6).
        cls_aux: the same for the auxiliary classifier.
        affinity: token affinity loss (Eq. 12).
        mcc: masked collaborative contrast (Eq. 10).
        seg: segmentation loss against the PAR-refined pseudo label (counted from ``seg_start_step``).
        reg: regularised loss :func:`~mcc.losses.dense_energy_loss` of the decoder output (counted with
            weight ``w_reg`` from ``seg_start_step``; a zero tensor, not computed, while that weight is 0).
        consistency: DuPL's :func:`~mcc.losses.consistency_loss` of the strong view (weight
            ``w_consistency`` from ``consistency_from``; a zero tensor, not computed, while that is 0).
        seg_to_cam: CoSA's :func:`~mcc.losses.seg_to_cam_loss` from the EMA teacher's segmentation
            (weight ``w_seg_to_cam`` from ``seg_start_step``; a zero tensor, not computed, while 0).
        positive_rate: fraction of local views judged positive (a statistic, no gradient).
    """

    total: torch.Tensor
    cls: torch.Tensor
    cls_aux: torch.Tensor
    affinity: torch.Tensor
    mcc: torch.Tensor
    seg: torch.Tensor
    reg: torch.Tensor
    consistency: torch.Tensor
    seg_to_cam: torch.Tensor
    positive_rate: torch.Tensor

    def as_dict(self) -> dict[str, float]:
        """Plain floats for logging (one host sync per term)."""
        return {name: float(value.detach()) for name, value in self._asdict().items()}


class MCCLabels(NamedTuple):
    """The supervision a training step derives from the CAMs of ``x`` (no gradient).

    Attributes:
        cam: multi-scale final CAM, (B, C, H, W) in [0, 1].
        cam_aux: multi-scale auxiliary CAM, (B, C, H, W) in [0, 1].
        key_mask: dropped keys of the local views, bool (B, V, h*w).
        positive: positiveness of each local view (Eq. 8), bool (B, V).
        token_label: three-way token labels for the affinity loss (Eq. 11), long (B, h, w).
        pseudo_label: PAR-refined segmentation pseudo label, long (B, H, W).
        teacher_seg: with a teacher (CoSA), its segmentation logits summed over scales and flips,
            (B, C+1, H, W) (:func:`~mcc.cam.multi_scale_cam_seg`); None without one.
    """

    cam: torch.Tensor
    cam_aux: torch.Tensor
    key_mask: torch.Tensor
    positive: torch.Tensor
    token_label: torch.Tensor
    pseudo_label: torch.Tensor
    teacher_seg: torch.Tensor | None = None


class MCCNet(nn.Module):
    """Encoder, classifiers, LargeFOV decoder and momentum projector of MCC.

    * encoder: a :class:`~mcc.attention.KeyMaskedViT` around any timm ViT (``net.encoder.vit``);
    * ``classifier`` / ``aux_classifier``: global max pooling + 1x1 conv without bias over the final
      (normed) / ``aux_layer`` (un-normed) patch tokens; their weights applied to the token maps are the CAMs;
    * ``decoder``: LargeFOV on the final patch tokens, ``num_classes + 1`` outputs (background first);
    * ``projector``: :class:`~mcc.losses.MomentumProjector` on class tokens.

    Args:
        vit: a timm ``VisionTransformer`` (e.g. ``timm.create_model("deit_base_patch16_224",
            pretrained=True)``).
        num_classes: foreground classes C, background excluded (VOC 20, COCO 80): a dataset's
            ``num_foreground_classes``, not its ``num_classes`` (which counts background).
        config: training hyper-parameters (default :meth:`MCCConfig.released`).
        pixel_mean: per-channel mean the input images were normalised with (to give PAR RGB in [0, 1]).
        pixel_std: per-channel std the input images were normalised with.

    Example:
        >>> import timm
        >>> net = MCCNet(timm.create_model("test_vit", pretrained=False), num_classes=20)
        >>> net(torch.randn(1, 3, 160, 160)).shape    # segmentation logits at token resolution
        torch.Size([1, 21, 10, 10])
    """

    def __init__(
        self,
        vit: nn.Module,
        num_classes: int,
        config: MCCConfig | None = None,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.config = config or MCCConfig.released()
        self.num_classes = num_classes
        cfg = self.config
        if cfg.dynamic_thre is not None and len(cfg.dynamic_thre) != num_classes:
            raise ValueError(
                f"config.dynamic_thre has {len(cfg.dynamic_thre)} per-class thresholds, the network "
                f"{num_classes} classes"
            )
        if hasattr(vit, "reset_classifier"):
            vit.reset_classifier(0)  # timm's own head is unused here (and would stall DDP)
        self.encoder: KeyMaskedViT = patch_vit(vit, aux_layer=cfg.aux_layer)
        dim = self.encoder.embed_dim
        self.classifier = nn.Conv2d(dim, num_classes, 1, bias=False)
        self.aux_classifier = nn.Conv2d(dim, num_classes, 1, bias=False)
        self.decoder = LargeFOV(
            dim, num_classes + 1, cfg.decoder_dim, cfg.decoder_dilation, cfg.decoder_bias, cfg.decoder_init
        )
        self.projector = MomentumProjector(
            dim,
            out_dim=cfg.projector_dim,
            hidden_dim=cfg.projector_hidden_dim,
            bottleneck_dim=cfg.projector_bottleneck_dim,
            momentum=cfg.momentum,
        )
        self.par = PAR(dilations=cfg.par_dilations, num_iter=cfg.par_iters)
        self.mask_sampler = ScaledBernoulliKeyMask(cfg.mask_ratio, cfg.mask_scale)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)
        # 0-255 constants rounded once from float64, as the published code's 58.395, 123.675, ...
        std_255 = (torch.tensor(pixel_std, dtype=torch.float64) * 255).float().view(1, 3, 1, 1)
        mean_255 = (torch.tensor(pixel_mean, dtype=torch.float64) * 255).float().view(1, 3, 1, 1)
        self.register_buffer("_std_255", std_255, persistent=False)
        self.register_buffer("_mean_255", mean_255, persistent=False)
        if cfg.freeze_pos_embed and getattr(vit, "pos_embed", None) is not None:
            vit.pos_embed.requires_grad_(False)

    # -- optimiser ------------------------------------------------------------------------------------------

    def param_groups(self, weight_decay: float = 0.01) -> list[dict]:
        """Optimiser parameter groups: the encoder at 1x, heads/projector/decoder at ``head_lr_scale``.

        Each group carries an ``lr_scale`` entry; set ``group["lr"] = lr * group["lr_scale"]`` every step
        (e.g. with :func:`~mcc.poly_warmup_lr`). Frozen parameters (the position embedding by default, the
        teacher projector) are left out.
        """
        encoder = [p for p in self.encoder.parameters() if p.requires_grad]
        heads = [*self.classifier.parameters(), *self.aux_classifier.parameters(), *self.decoder.parameters()]
        heads += [p for p in self.projector.student_parameters() if p.requires_grad]
        return [
            {"params": encoder, "lr_scale": 1.0, "weight_decay": weight_decay},
            {"params": heads, "lr_scale": self.config.head_lr_scale, "weight_decay": weight_decay},
        ]

    # -- inference ------------------------------------------------------------------------------------------

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], (B, 3, H, W), of images normalised with ``pixel_mean``/``pixel_std``."""
        return (images * self.pixel_std + self.pixel_mean).clamp(0, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Segmentation logits (B, C+1, h, w) at token resolution for images (B, 3, H, W)."""
        return self.decoder(self.encoder(images).patches)

    def cams(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw CAMs of the final and auxiliary classifiers, each (B, C, h, w) at token resolution.

        This is the ``cam_fn`` of :func:`~mcc.multi_scale_cam`.

        Raises:
            ValueError: ``images`` is not a floating (B, 3, H, W) tensor with H and W multiples of the
                patch size.
        """
        self._check_images(images, patch_multiple=True)
        tokens = self.encoder(images)
        return self._cam(tokens.patches, self.classifier), self._cam(tokens.aux, self.aux_classifier)

    def cam_function(self, aux: bool = False) -> CamFunction:
        """This network's CAM function for :class:`~mcc.CAMExtractor`: images of any size are resized to
        whole patches, the maps are the final classifier's (``aux=True``: the auxiliary one's)."""
        patch = self.encoder.patch_size

        def fn(images: torch.Tensor) -> torch.Tensor:
            return self.cams(resize_to_patch_multiple(images, patch))[1 if aux else 0]

        return CamFunction(fn, self.num_classes, tuple(self.config.cam_scales))

    def cams_and_segmentation(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw CAMs (final, auxiliary) and segmentation logits of one forward, at token resolution.

        This is the ``fn`` of :func:`~mcc.multi_scale_cam_seg` (CoSA's teacher pass).
        """
        self._check_images(images, patch_multiple=True)
        tokens = self.encoder(images)
        return (
            self._cam(tokens.patches, self.classifier),
            self._cam(tokens.aux, self.aux_classifier),
            self.decoder(tokens.patches),
        )

    @torch.no_grad()
    def multi_scale_cams(
        self, images: torch.Tensor, scales: Sequence[float] | None = None, flip: bool = True
    ):
        """Multi-scale + flip CAMs ``(cam, cam_aux)``, each (B, C, H, W) in [0, 1].

        docs/method.md section 2, step 2.

        Raises:
            ValueError: ``images`` is not a floating (B, 3, H, W) tensor with H and W multiples of the
                patch size, or a scale whose size ``(int(s * H), int(s * W))`` is not such a multiple.
        """
        scales = tuple(scales or self.config.cam_scales)
        self._check_images(images, patch_multiple=True)
        self._check_scaled_sizes(tuple(images.shape[-2:]), scales, "scales")
        return multi_scale_cam(self.cams, images, scales, flip)

    def check_crop_size(self, size: int | tuple[int, int]) -> None:
        """Raises ``ValueError`` unless training crops of ``size`` can be used with this network.

        A training step takes the multi-scale CAM of every crop at ``config.cam_scales``, so the crop
        and each scaled crop (``int(s * side)``) must be whole patches: with patch 16 and the published
        scales (1.0, 0.5, 1.5) the crop side must be a multiple of 32 (448 is). Call it before a long
        run; :func:`~mcc.training.train` and the training commands do.

        Args:
            size: crop side, or ``(height, width)``.
        """
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        scales = tuple(dict.fromkeys((1.0, *self.config.cam_scales)))
        self._check_scaled_sizes((height, width), scales, "crop size")

    def _check_scaled_sizes(self, size: tuple[int, int], scales, name: str) -> None:
        patch = self.encoder.patch_size
        height, width = size
        for s in scales:
            h, w = int(s * height), int(s * width)
            if h < patch[0] or w < patch[1] or h % patch[0] or w % patch[1]:
                valid = [c for c in range(patch[0], 4097, patch[0]) if self._whole(c, scales)][:4]
                raise ValueError(
                    f"{name}: factor {s} gives {h}x{w} from {height}x{width}, not a multiple of the patch "
                    f"size {patch[0]}x{patch[1]} (CAMs need whole patches; with CAM scales {tuple(scales)} "
                    f"square sides such as {', '.join(map(str, valid))}, ... work)"
                )

    def _whole(self, side: int, scales) -> bool:
        patch = max(self.encoder.patch_size)
        return all(int(s * side) >= patch and int(s * side) % patch == 0 for s in scales)

    @torch.no_grad()
    def segment(
        self, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False
    ) -> torch.Tensor:
        """Segmentation logits (B, C+1, H, W) at the input size, multi-scale, flip (docs/method.md section 4).

        Each scale resizes the images to the nearest multiple of the patch size; logits are upsampled to
        (H, W), summed over the flips and maximised over the scales (VOC evaluation: 1.0, 1.25, 1.5 + flip).
        Any H and W are accepted.

        Raises:
            ValueError: ``images`` is not a floating (B, 3, H, W) tensor, or ``scales`` is empty or has a
                factor <= 0.
        """
        self._check_images(images)
        if len(scales) == 0 or any(not s > 0 for s in scales):
            raise ValueError(f"scales must be a non-empty sequence of factors > 0, got {tuple(scales)}")
        height, width = images.shape[-2:]
        patch = self.encoder.patch_size
        result = None
        for scale in scales:
            size = (
                max(patch[0], round(scale * height / patch[0]) * patch[0]),
                max(patch[1], round(scale * width / patch[1]) * patch[1]),
            )
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            batch = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled
            logits = F.interpolate(self(batch), size=(height, width), mode="bilinear", align_corners=False)
            if flip:
                logits = logits[: len(images)] + logits[len(images) :].flip(-1)
            result = logits if result is None else torch.maximum(result, logits)
        return result

    # -- training -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def make_labels(
        self,
        x: torch.Tensor,
        cls_label: torch.Tensor,
        img_box: torch.Tensor | None,
        step: int,
        *,
        key_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        teacher: MCCNet | None = None,
    ) -> MCCLabels:
        """Everything a training step derives from the CAMs, without gradient.

        docs/method.md section 2, steps 2-4, 8, 9.

        Args:
            x: main crops, (B, 3, H, W), normalised with ``pixel_mean``/``pixel_std``.
            cls_label: multi-hot image labels, (B, C); a zero row (an image with no foreground class) is
                background wherever its CAM labels say so and its local views are all negative.
            img_box: valid region of each crop, (B, 4) integer rows ``(y0, y1, x0, x1)`` (this order, not
                ``(x0, y0, x1, y1)``) in pixels, end exclusive, non-empty and inside ``H x W``; outside it
                nothing is supervised (a box holding no whole token leaves the token labels all ignored).
                None = whole crop. Checked once here (one host sync on an accelerator).
            step: optimiser steps already taken (selects the CAM that judges positiveness).
            key_mask: dropped keys of the V local views, bool (B, V, h*w); drawn with the config's
                :class:`~mcc.attention.ScaledBernoulliKeyMask` and ``generator`` when None.
            generator: random source of the key masks.
            teacher: CoSA's EMA teacher (``config.ema_teacher_decay``): a network of the same build, e.g.
                ``AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9994)).module``, whose CAMs and
                segmentation make the labels; None = this network's CAMs.

        Returns:
            :class:`MCCLabels`.

        Raises:
            ValueError: an ``img_box`` that is not (B, 4) integer rows ``(y0, y1, x0, x1)``, non-empty and
                inside the crop.
        """
        self._check_step(step)
        box = self._check_label_inputs(x, cls_label, img_box)
        teacher_seg = None
        if teacher is None:
            cam, cam_aux = self.multi_scale_cams(x)
        else:  # CoSA: labels from the EMA teacher, its segmentation for the seg-to-CAM loss
            cam, cam_aux, teacher_seg = multi_scale_cam_seg(
                teacher.cams_and_segmentation, x, self.config.cam_scales
            )
        return self._labels_from_cams(x, cls_label, box, step, cam, cam_aux, key_mask, generator, teacher_seg)

    def _check_label_inputs(self, x, cls_label, img_box) -> torch.Tensor | None:
        """The checked box of :meth:`make_labels`, checked once (a box on the host is read there, no sync)."""
        self._check_cls_label(cls_label, x.shape[0])
        if img_box is None:
            return None
        return cam_labels.check_img_box(img_box, x.shape[0], x.shape[-2:], x.device)

    @torch.no_grad()
    def _labels_from_cams(
        self, x, cls_label, box, step, cam, cam_aux, key_mask, generator, teacher_seg=None
    ) -> MCCLabels:
        """:meth:`make_labels` after the multi-scale CAMs (``box``: checked by ``_check_label_inputs``)."""
        cfg = self.config
        batch = x.shape[0]
        grid = self.encoder.grid_size(x)
        # Image labels may stay on the host (as the training loop keeps them): the classes present in the
        # batch are then read there, without a device sync.
        host_cls_label = cls_label
        cls_label = cls_label.to(x.device, non_blocking=True)
        # The labels below take the box as masks (pixel and token units).
        inside = None if box is None else _inside(box, x.shape[-2:])
        token_inside = None if box is None else _inside(self._box_to_tokens(box), grid)
        high_thre = self.foreground_threshold(cls_label, step)  # DuPL's dynamic threshold when set

        # Key masks and positiveness of the local views (Eq. 8-9) on the CAM at token resolution.
        if key_mask is None:
            key_mask = self.mask_sampler(batch, grid, cfg.num_views, generator=generator, device=x.device)
        positive_cam = cam if cfg.positives_from_final_cam(step) else cam_aux
        positive_cam = F.interpolate(positive_cam, size=grid, mode="bicubic", align_corners=False)
        positive = positive_views(positive_cam, cls_label, key_mask, cfg.low_thre, cfg.high_thre, cfg.mu)

        # Token labels for the affinity loss (Eq. 11) from the aux CAM, the box in token units.
        aux_tokens = F.interpolate(cam_aux, size=grid, mode="bilinear", align_corners=False)
        token_label = _label_from_cam(
            aux_tokens, cls_label, None, cfg.low_thre, high_thre, token_inside, cfg.ignore_index
        )

        # The segmentation pseudo label: final CAM refined by PAR on the RGB crop.
        if cfg.seg_target == "cam":  # ablation knock-out: the three-way CAM label, no PAR
            pseudo_label = _label_from_cam(
                cam, cls_label, None, cfg.low_thre, high_thre, inside, cfg.ignore_index
            )
        else:
            pseudo_label = _refine(
                self.par,
                self._par_image(x),
                cam,
                host_cls_label,
                high_thre,
                cfg.low_thre,
                inside,
                cfg.ignore_index,
                cfg.par_down_scale,
            )
        return MCCLabels(cam, cam_aux, key_mask, positive, token_label, pseudo_label, teacher_seg)

    def foreground_threshold(self, cls_label: torch.Tensor, step: int) -> float | torch.Tensor:
        """The foreground threshold of the token and segmentation labels at ``step``.

        ``config.high_thre``, or with ``config.dynamic_thre`` from ``dynamic_thre_steps[0]`` on DuPL's
        per-image threshold (B,): the max over the image's classes of the cosine descent.
        """
        cfg = self.config
        begin, end = cfg.dynamic_thre_steps
        if cfg.dynamic_thre is None or step < begin:
            return cfg.high_thre
        device = cls_label.device
        start = torch.full((self.num_classes,), cfg.dynamic_start, device=device)
        targets = torch.tensor(cfg.dynamic_thre, device=device)
        return image_threshold(cosine_threshold(step - begin, start, targets, end - begin), cls_label)

    def training_losses(
        self,
        x: torch.Tensor,
        v1: torch.Tensor,
        v2: torch.Tensor,
        cls_label: torch.Tensor,
        img_box: torch.Tensor | None,
        step: int,
        *,
        key_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        fast: bool = True,
        labels: MCCLabels | None = None,
        strong: torch.Tensor | None = None,
        teacher: MCCNet | None = None,
    ) -> MCCLosses:
        """Computes one training step's losses (docs/method.md section 2); call ``.total.backward()`` after.

        Updates the teacher projector once (EMA, before use), as the published code does at every step.

        Args:
            x: main crops, (B, 3, H, W), normalised with ``pixel_mean``/``pixel_std``.
            v1: second global views, (B, 3, H1, W1).
            v2: local views geometrically aligned with ``x`` (same crop and flip), (B, 3, H, W).
            cls_label: multi-hot image labels, (B, C); a zero row (an image with no foreground class) is
                background wherever its CAM labels say so and its local views are all negative.
            img_box: valid region of each crop, (B, 4) integer rows ``(y0, y1, x0, x1)`` (this order, not
                ``(x0, y0, x1, y1)``) in pixels, end exclusive, non-empty and inside ``H x W``; outside it
                nothing is supervised. None = whole crop. Checked once per call.
            step: optimiser steps already taken (drives the schedule switches of the config).
            key_mask: dropped keys of the V local views, bool (B, V, h*w); drawn with the config's
                :class:`~mcc.attention.ScaledBernoulliKeyMask` and ``generator`` when None.
            generator: random source of the key masks.
            fast: the exact shortcuts of docs/method.md section 3 (teacher tokens = detached student global
                tokens, first global view = the main forward, token dropping for the masked views).
                ``fast=False`` runs every pass separately, as published; both give the same losses and
                gradients up to float rounding.
            labels: the output of :meth:`make_labels` for this batch (then ``key_mask``, ``generator``
                and ``teacher`` are not used); computed here when None.
            strong: DuPL's strong view of ``x``, (B, 3, H, W), mirrored as a whole
                (``VOCTrainViews(strong_view=StrongAugment())`` gives it as ``strong``); needed while
                the consistency term counts (``config.w_consistency``).
            teacher: CoSA's EMA teacher (see :meth:`make_labels`); needed with
                ``config.ema_teacher_decay``. With ``fast``, no ``labels`` and no ``teacher``, the
                label pass takes the CAMs of the unflipped crop at scale 1.0 from the gradient pass (the
                same weights on the same input, so the same labels) when nothing in the encoder is
                random: no dropout or stochastic depth active in train mode (otherwise the two passes
                would draw different masks, and the label pass runs on its own, as published).

        Returns:
            :class:`MCCLosses`.

        Raises:
            ValueError: bad shapes (named), a missing ``strong`` view or ``teacher`` the config needs.
        """
        cfg = self.config
        self._check_step(step)
        self._check_batch(x, v1, v2, cls_label, img_box)
        self._check_options(x, step, labels, strong, teacher)
        if labels is None and teacher is None and fast and self._label_pass_reuses_main(x):
            # The label pass without its unflipped scale-1.0 pass, then the gradient pass, whose tokens of
            # x give those CAMs (docs/method.md section 3); make_labels' checks, in its order.
            box = self._check_label_inputs(x, cls_label, img_box)
            finish = self._deferred_cams(x, cls_label)
            main, student_global, teacher_global = self._encode_global(x, v1)
            with torch.no_grad():
                direct = (
                    self._cam(main.patches.detach(), self.classifier),
                    self._cam(main.aux.detach(), self.aux_classifier),
                )
            cam, cam_aux = finish(direct)
            labels = self._labels_from_cams(x, cls_label, box, step, cam, cam_aux, key_mask, generator)
            self._check_labels(labels, x)
            local = self.encoder(v2, labels.key_mask).cls
        else:
            if labels is None:  # make_labels checks img_box
                labels = self.make_labels(
                    x, cls_label, img_box, step, key_mask=key_mask, generator=generator, teacher=teacher
                )
            elif img_box is not None:
                cam_labels.check_img_box(img_box, x.shape[0], x.shape[-2:])
            self._check_labels(labels, x)
            # Forward passes with gradient.
            main, student_global, teacher_global, local = self._encode(x, v1, v2, labels.key_mask, fast)
        batch = x.shape[0]
        cls_label = cls_label.to(x.device, non_blocking=True)

        # Classification (Eq. 6), main and auxiliary.
        logits = self.classifier(F.adaptive_max_pool2d(main.patches, 1)).flatten(1)
        logits_aux = self.aux_classifier(F.adaptive_max_pool2d(main.aux, 1)).flatten(1)
        with autocast_off(logits):  # the losses in float32 whatever the autocast dtype of the logits
            target = cls_label.float()
            loss_cls = F.multilabel_soft_margin_loss(full_precision(logits), target)
            loss_cls_aux = F.multilabel_soft_margin_loss(full_precision(logits_aux), target)

        # Masked collaborative contrast (Eq. 10): teacher on global views, student on global + local.
        self.projector.update_teacher()
        teacher = self.projector.forward_teacher(teacher_global)
        student = self.projector(torch.cat([student_global, local], dim=1))
        global_positive = labels.positive.new_ones(batch, student_global.shape[1])
        positive = torch.cat([global_positive, labels.positive], dim=1)
        loss_mcc = mcc_infonce(
            teacher, student, positive, cfg.temperature, cfg.infonce_eps, cfg.infonce_variant
        )

        # Token affinity (Eq. 12) on the final tokens.
        aff_label = affinity_labels(labels.token_label, cfg.ignore_index)
        loss_affinity = affinity_loss(main.patches, aff_label, absolute=cfg.affinity_absolute)

        # Segmentation against the PAR-refined pseudo label.
        seg_logits = self.decoder(main.patches)
        with autocast_off(seg_logits):  # upsampled in float32: the logits of both losses below
            seg_logits = F.interpolate(
                full_precision(seg_logits), size=x.shape[-2:], mode="bilinear", align_corners=False
            )
        # our own pseudo label: its values need no check (which would cost a device sync per step)
        seg_label = labels.pseudo_label
        if cfg.gmm_filter_on(step):  # DuPL: drop the noisy mode of the decoder's own per-pixel loss
            seg_label = self._filter_label(seg_logits, seg_label)
        loss_seg = _segmentation_loss(seg_logits, seg_label, cfg.ignore_index)

        # The published regularised loss on the same logits; skipped while its weight is 0.
        reg_weight = cfg.reg_weight(step)
        if reg_weight != 0.0:
            loss_reg = dense_energy_loss(
                self._image_255(x),
                seg_logits,
                labels.pseudo_label,
                img_box,
                weight=cfg.reg_energy_weight,
                sigma_rgb=cfg.reg_sigma_rgb,
                sigma_xy=cfg.reg_sigma_xy,
                scale_factor=cfg.reg_scale_factor,
                ignore_index=cfg.ignore_index,
            )
        else:
            loss_reg = loss_seg.new_zeros(())

        # DuPL's consistency: confident predictions on the label's ignored pixels, learnt by the strong view.
        consistency_weight = cfg.consistency_weight(step)
        if consistency_weight != 0.0:
            loss_consistency = consistency_loss(
                self._strong_logits(strong, x.shape[-2:]),
                seg_logits,
                seg_label,
                conf_thre=cfg.consistency_conf_thre,
                ignore_index=cfg.ignore_index,
            )
        else:
            loss_consistency = loss_seg.new_zeros(())

        # CoSA's seg-to-CAM: the teacher's segmentation supervises the student's CAM.
        seg_to_cam_weight = cfg.seg_to_cam_weight(step)
        if seg_to_cam_weight != 0.0:
            loss_seg_to_cam = seg_to_cam_loss(
                self._cam(main.patches, self.classifier),
                labels.teacher_seg,
                cls_label,
                temperature=cfg.seg_to_cam_temperature,
            )
        else:
            loss_seg_to_cam = loss_seg.new_zeros(())

        total = (
            cfg.w_cls * loss_cls
            + cfg.w_cls_aux * loss_cls_aux
            + cfg.w_affinity * loss_affinity
            + cfg.mcc_weight(step) * loss_mcc
            + cfg.seg_weight(step) * loss_seg
            + reg_weight * loss_reg
            + consistency_weight * loss_consistency
            + seg_to_cam_weight * loss_seg_to_cam
        )
        positive_rate = labels.positive.float().mean()
        return MCCLosses(
            total,
            loss_cls,
            loss_cls_aux,
            loss_affinity,
            loss_mcc,
            loss_seg,
            loss_reg,
            loss_consistency,
            loss_seg_to_cam,
            positive_rate,
        )

    def _filter_label(self, seg_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        with torch.no_grad():
            pixel_loss = F.cross_entropy(
                seg_logits.detach().float(), label, ignore_index=cfg.ignore_index, reduction="none"
            )
        return gmm_noise_filter(
            pixel_loss,
            label,
            min_pixels=cfg.gmm_min_pixels,
            min_mean_gap=cfg.gmm_min_mean_gap,
            prob_thre=cfg.gmm_prob_thre,
            ignore_index=cfg.ignore_index,
        )

    def _strong_logits(self, strong: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # DuPL: the network sees the strong view at 0.75 scale; its logits are flipped back onto x and
        # resized to the label size.
        small = F.interpolate(
            strong, scale_factor=self.config.strong_scale, mode="bilinear", align_corners=False
        )
        logits = self.decoder(self.encoder(small).patches).flip(-1)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def _check_options(self, x, step, labels, strong, teacher) -> None:
        cfg = self.config
        if cfg.consistency_weight(step) != 0.0:
            if strong is None:
                raise ValueError(
                    "strong: config.w_consistency needs DuPL's strong view of x "
                    "(VOCTrainViews(strong_view=StrongAugment()) gives it as 'strong')"
                )
            if not torch.is_tensor(strong) or strong.shape != x.shape:
                shape = tuple(strong.shape) if torch.is_tensor(strong) else type(strong).__name__
                raise ValueError(f"strong must have the shape of x {tuple(x.shape)}, got {shape}")
            patch = self.encoder.patch_size
            size = [int(side * cfg.strong_scale) for side in x.shape[-2:]]
            if size[0] % patch[0] or size[1] % patch[1] or min(size) < 1:
                raise ValueError(
                    f"strong: {cfg.strong_scale} x {tuple(x.shape[-2:])} gives {tuple(size)}, not a multiple "
                    f"of the patch size {tuple(patch)} (choose the crop size or config.strong_scale so it is)"
                )
        if labels is None and cfg.ema_teacher_decay is not None and teacher is None:
            raise ValueError(
                "teacher: config.ema_teacher_decay needs the EMA teacher "
                "(AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay)).module); train() keeps one"
            )
        if cfg.seg_to_cam_weight(step) != 0.0 and labels is not None and labels.teacher_seg is None:
            raise ValueError("labels.teacher_seg: config.w_seg_to_cam needs labels made with a teacher")

    def _encode(self, x, v1, v2, key_mask, fast: bool):
        """Main tokens of x, student / teacher global class tokens (B, 2, D), local class tokens (B, V, D)."""
        if fast:
            main, student_global, teacher_global = self._encode_global(x, v1)
            local = self.encoder(v2, key_mask).cls
        else:
            main = self.encoder(x)
            student_global = torch.stack([self.encoder(x).cls, self.encoder(v1).cls], dim=1)
            with torch.no_grad():
                teacher_global = torch.stack([self.encoder(x).cls, self.encoder(v1).cls], dim=1)
            local = self.encoder(v2, key_mask, drop_tokens=False).cls
        return main, student_global, teacher_global, local

    def _encode_global(self, x, v1):
        """The fast path's global pass: main tokens of x, student / teacher global class tokens (B, 2, D)."""
        # Only the class tokens of v1 are read: its last block computes them alone.
        if v1.shape == x.shape:
            both = self.encoder._forward_partly_class_only(torch.cat([x, v1]), x.shape[0])
            batch = x.shape[0]
            main = both._replace(cls=both.cls[:batch])
            cls_v1 = both.cls[batch:]
        else:
            main = self.encoder(x)
            cls_v1 = self.encoder._forward_partly_class_only(v1, 0).cls
        student_global = torch.stack([main.cls, cls_v1], dim=1)
        return main, student_global, student_global.detach()

    def _deferred_cams(self, x: torch.Tensor, cls_label: torch.Tensor):
        """:meth:`multi_scale_cams` of x without the unflipped full-size pass; ``finish(cams(x))`` ends it.

        With ``cls_label`` on the host (no device sync to read it), the full-size maps are made for the
        classes present in the batch only, zeros elsewhere: every label multiplies the CAMs by
        ``cls_label`` or takes the present classes, so the labels are the same (the step does not return
        these CAMs).
        """
        scales = tuple(self.config.cam_scales)
        self._check_images(x, patch_multiple=True)
        self._check_scaled_sizes(tuple(x.shape[-2:]), scales, "scales")
        classes = None
        if cls_label.device.type == "cpu":
            classes = (cls_label != 0).any(0).nonzero()[:, 0].to(x.device, non_blocking=True)
        return _deferred_multi_scale_cam(self.cams, x, scales, True, defer_direct=True, classes=classes)

    def _label_pass_reuses_main(self, x: torch.Tensor) -> bool:
        """Whether the label pass can take the CAMs of x at full size from the gradient pass.

        Only when they are the same computation: a CAM scale keeps x's size, and the encoder draws nothing
        at random (dropout and stochastic depth are inactive, or have probability 0; no rotary-embedding
        augmentation), so the two passes of the same weights on the same input agree.
        """
        height, width = x.shape[-2:]
        if not any((int(s * height), int(s * width)) == (height, width) for s in self.config.cam_scales):
            return False
        return not _draws_at_random(self.encoder.vit)

    def _image_255(self, x: torch.Tensor) -> torch.Tensor:
        # RGB 0-255 of the normalised input, neither clamped nor rounded (the rloss image)
        return x.to(torch.promote_types(x.dtype, torch.float32)) * self._std_255 + self._mean_255

    def _par_image(self, x: torch.Tensor) -> torch.Tensor:
        # RGB in [0, 1] for PAR: the published 8-bit image (truncated to uint8, / 255) or the continuous one
        if self.config.par_image == "float":
            return self.denormalize(x)
        return self._image_255(x).trunc().clamp(0, 255) / 255.0

    def _box_to_tokens(self, img_box: torch.Tensor) -> torch.Tensor:
        # Tokens wholly inside the pixel box: starts round up, ends round down (end exclusive).
        patch_h, patch_w = self.encoder.patch_size
        y0, y1, x0, x1 = img_box.unbind(-1)
        return torch.stack(
            [-(-y0 // patch_h), y1 // patch_h, -(-x0 // patch_w), x1 // patch_w], dim=-1
        ).long()

    @staticmethod
    def _cam(tokens: torch.Tensor, classifier: nn.Conv2d) -> torch.Tensor:
        return F.conv2d(tokens, classifier.weight)

    def _check_cls_label(self, cls_label: torch.Tensor, batch: int) -> None:
        shape = tuple(getattr(cls_label, "shape", ()))
        if shape == (batch, self.num_classes):
            check_finite(cls_label, "cls_label")  # CPU tensors (no host sync); see mcc._checks
            return
        message = f"cls_label must have shape (B, C) = ({batch}, {self.num_classes}), got {shape}"
        if len(shape) == 2 and shape[0] == batch and shape[1] == self.num_classes - 1:
            message += (
                f": the network was built with num_classes={self.num_classes}, which seems to count "
                "background; MCCNet's num_classes counts foreground classes only (pass the dataset's "
                f"num_foreground_classes = num_classes - 1, i.e. {self.num_classes - 1})"
            )
        else:
            message += " (C = foreground classes, background not counted)"
        raise ValueError(message)

    def _check_images(self, images: torch.Tensor, patch_multiple: bool = False) -> None:
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"images must have shape (B, 3, H, W), got {shape}")
        if not images.is_floating_point():
            raise ValueError(
                f"images must be floating (normalised with pixel_mean/pixel_std), got {images.dtype}"
            )
        self._check_dtype(images, "images")
        check_finite(images, "images")
        patch = self.encoder.patch_size
        if patch_multiple and (images.shape[-2] % patch[0] or images.shape[-1] % patch[1]):
            raise ValueError(
                f"images: {images.shape[-2]}x{images.shape[-1]} is not a multiple of the patch size "
                f"{patch[0]}x{patch[1]} (resize first, or use segment, which resizes)"
            )

    def _check_dtype(self, images: torch.Tensor, name: str) -> None:
        weight = self.classifier.weight.dtype
        autocast = torch.is_autocast_enabled(images.device.type) and images.dtype != torch.float64
        if images.dtype != weight and not autocast:  # autocast casts all but float64
            raise ValueError(
                f"{name} are {images.dtype} but the network's weights are {weight}: pass "
                f"{name}.to({weight}), move the network with net.to({images.dtype}), or run under "
                "torch.autocast"
            )

    @staticmethod
    def _check_step(step: object) -> None:
        try:
            value = None if isinstance(step, bool) else operator.index(step)
        except TypeError:
            value = None
        if value is None or value < 0:
            raise ValueError(f"step must be an integer >= 0 (optimiser steps already taken), got {step!r}")

    def _check_labels(self, labels: MCCLabels, x: torch.Tensor) -> None:
        batch, grid = x.shape[0], self.encoder.grid_size(x)
        expected = {
            "cam": (batch, self.num_classes, *x.shape[-2:]),
            "cam_aux": (batch, self.num_classes, *x.shape[-2:]),
            "token_label": (batch, *grid),
            "pseudo_label": (batch, *x.shape[-2:]),
        }
        for name, shape in expected.items():
            if tuple(getattr(labels, name).shape) != shape:
                raise ValueError(
                    f"labels.{name} must have shape {shape}, got {tuple(getattr(labels, name).shape)}"
                )
        views = labels.key_mask.shape[1] if labels.key_mask.dim() == 3 else -1
        if labels.key_mask.shape != (batch, views, grid[0] * grid[1]) or labels.positive.shape != (
            batch,
            views,
        ):
            raise ValueError(
                f"labels.key_mask must have shape ({batch}, V, {grid[0] * grid[1]}) and labels.positive "
                f"({batch}, V), got {tuple(labels.key_mask.shape)} and {tuple(labels.positive.shape)}"
            )

    def _check_batch(self, x, v1, v2, cls_label, img_box) -> None:
        for name, view in (("x", x), ("v1", v1), ("v2", v2)):
            if not torch.is_tensor(view) or view.dim() != 4 or view.shape[1] != 3:
                raise ValueError(
                    f"{name} must have shape (B, 3, H, W), got {tuple(getattr(view, 'shape', ()))}"
                )
            if view.shape[0] != x.shape[0]:
                raise ValueError(f"{name} has batch {view.shape[0]}, x has {x.shape[0]}")
            self._check_dtype(view, name)
            check_finite(view, name)  # CPU tensors only (no host sync in the training step)
        if v2.shape != x.shape:
            raise ValueError(
                f"v2 must be aligned with x (same shape {tuple(x.shape)}), got {tuple(v2.shape)}"
            )
        self._check_cls_label(cls_label, x.shape[0])
        if img_box is not None and img_box.shape != (x.shape[0], 4):
            raise ValueError(
                f"img_box must have shape (B, 4) = ({x.shape[0]}, 4), got {tuple(img_box.shape)}"
            )


def _draws_at_random(module: nn.Module) -> bool:
    """Whether a forward of ``module`` in its current mode draws random numbers (dropout, drop path, ...)."""
    for m in module.modules():
        if not m.training:
            continue
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if getattr(m, "drop_prob", 0.0) or getattr(m, "aug_active", False):
            return True
    return False


class MCCTrainingStep(nn.Module):
    """An :class:`MCCNet` whose ``forward`` is :meth:`MCCNet.training_losses`.

    DistributedDataParallel synchronises gradients of what runs through ``forward``; wrap this module
    (``DDP(MCCTrainingStep(net))``) rather than the net when the training step should run under DDP.
    """

    def __init__(self, net: MCCNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, *args, **kwargs) -> MCCLosses:
        return self.net.training_losses(*args, **kwargs)
