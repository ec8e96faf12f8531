"""Every hyper-parameter of an MCC training step, with its source."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

__all__ = ["DUPL_VOC_THRESHOLDS", "MCCConfig"]

# DuPL's per-class targets of the dynamic foreground threshold on VOC (train_final_voc.py): 0.70 for
# aeroplane, bicycle, bird, boat, chair and train, 0.55 for the other 14 classes.
DUPL_VOC_THRESHOLDS = (
    0.70, 0.70, 0.70, 0.70, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55,
    0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55,
)  # fmt: skip


@dataclass(frozen=True)
class MCCConfig:
    """Hyper-parameters of the MCC objective and its training schedule.

    Two presets: :meth:`released` reproduces the authors' published code (the numbers of
    docs/method.md section 5), :meth:`paper` follows the paper's text where it differs. Sources:
    "paper" = the MCC paper (Sec. IV-A unless noted), "code" = the published MCC/ToCo code, as recorded
    in docs/method.md section 7.

    Attributes:
        aux_layer: block whose tokens feed the auxiliary classifier, Python index (-3 = 10th of 12;
            paper, after ToCo).
        cam_scales: scales of the multi-scale CAM that makes the labels (code: 1.0, 0.5, 1.5).
        low_thre: beta_bg, background threshold of the three-way labels and positiveness (paper: 0.25).
        high_thre: beta_fg, foreground threshold (paper: 0.7).
        ignore_index: label of uncertain / unsupervised pixels (code: 255).
        mask_ratio: probability that a key cell is dropped (paper: 0.75; code run: 0.95).
        mask_scale: side of a key-mask cell in tokens (paper: 4).
        num_views: masked local views per image (code: 8).
        mu: positiveness threshold of Eq. 8 (paper: 0.2).
        positive_cam: CAM that judges positiveness, "aux" (paper, Eq. 9) or "final".
        final_cam_positives_from: step from which (``step >= final_cam_positives_from``) the final CAM
            judges positiveness whatever ``positive_cam`` says. Code, VOC: 12001, since the published
            loop switches when its 0-based ``n_iter > 12000`` (``step`` is that ``n_iter``); COCO and
            paper: never, None (docs/method.md section 7).
        temperature: InfoNCE temperature tau (paper: 0.5).
        infonce_eps: constant in the InfoNCE denominators (code: 1e-4).
        infonce_variant: "reference" (the published code's formula) or "paper" (Eq. 10).
        momentum: EMA momentum of the teacher projector (paper: 0.9).
        projector_dim: projector output size (code: 1024).
        projector_hidden_dim: projector MLP width (code: 2048).
        projector_bottleneck_dim: projector bottleneck before the weight-normalised layer (code: 256).
        affinity_absolute: use |cos| in the affinity loss (code) or plain cos (paper Eq. 12).
        w_cls: weight of the classification loss (paper Eq. 7: 1).
        w_cls_aux: weight of the auxiliary classification loss (paper Eq. 7: 1).
        w_affinity: lambda_a (paper: 0.2).
        w_mcc: lambda_m (paper: 0.5).
        w_seg: weight of the segmentation loss once active (code: 0.1; paper Eq. 7: 1).
        seg_start_step: the segmentation and regularised losses count from this step on
            (``step >= seg_start_step``). Code: VOC 2001, COCO 8001, since the published loop weighs
            them 0 while its 0-based ``n_iter <= 2000`` (COCO 8000); the paper does not say, so
            :meth:`paper` keeps these values (docs/method.md section 7).
        w_reg: weight of the regularised loss :func:`~mcc.losses.dense_energy_loss` once active (code:
            0.05; paper: 0, the paper's text has no such term). At weight 0 the term is not computed.
        reg_energy_weight: the loss's own factor ``weight`` (code: 1e-7).
        reg_sigma_rgb: colour bandwidth of its bilateral filter, 0-255 units (code: 15).
        reg_sigma_xy: spatial bandwidth of its bilateral filter in crop pixels (code: 100).
        reg_scale_factor: the loss runs at this fraction of the crop size (code: 0.5).
        par_image: the image PAR sees when making the segmentation pseudo label: "uint8" (code: the
            de-normalised crop cast to uint8 with truncation, then / 255) or "float" (the continuous
            de-normalised crop clamped to [0, 1]). The paper does not say; :meth:`paper` keeps "uint8"
            (docs/method.md section 7).
        par_dilations: PAR neighbourhood dilations (code: 1, 2, 4, 8, 12, 24).
        par_iters: PAR iterations (code: 10).
        par_down_scale: PAR runs at 1/down_scale of the crop (code: 2).
        freeze_pos_embed: no gradient for the position embedding (code: frozen).
        head_lr_scale: learning-rate multiple of classifiers, projector and decoder (code: 10).
        decoder_dim: LargeFOV width (code: 512).
        decoder_dilation: LargeFOV dilation (code: 5).
        decoder_bias: LargeFOV convolutions with biases (code: False, its convolutions have none).
        decoder_init: LargeFOV weight initialisation: "default" (code: PyTorch's default conv init, the
            published ``_init_weights`` is never called) or "kaiming" (Kaiming-normal fan-out weights, zero
            biases, what that unused method would do). The paper does not say; :meth:`paper` keeps the
            code's False / "default" (docs/method.md section 7).
        seg_target: segmentation target of the training step: ``"par"`` (the final CAM refined by PAR,
            paper and code) or ``"cam"`` (the three-way thresholded final CAM, no PAR; an ablation
            knock-out, not part of the method).
        mcc_warmup_steps: ramp ``w_mcc`` linearly from 0 over this many steps (0 = full weight from the
            first step, as paper and code do; an option for small or from-scratch runs, see
            docs/ablation.md).

    Options from DuPL (Wu et al., CVPR 2024; github.com/Wu0409/DuPL) and CoSA (Yang et al., ECCV 2024;
    github.com/youshyee/CoSA), all off by default (docs/dupl_cosa.md):

    Attributes:
        dynamic_thre: DuPL's dynamic foreground threshold of the token labels and the segmentation
            pseudo label: per-class targets (C values; ``"dupl_voc"`` = :data:`DUPL_VOC_THRESHOLDS`), or
            None (off: ``high_thre`` throughout). Each class descends from ``dynamic_thre_start`` to its
            target (:func:`~mcc.cam.cosine_threshold`); an image uses the max over its classes
            (:func:`~mcc.cam.image_threshold`). Positiveness keeps ``high_thre``.
        dynamic_thre_start: the value the descent starts from; None = ``high_thre`` (DuPL: 0.7).
        dynamic_thre_steps: ``(begin, end)``: ``high_thre`` before ``begin``, the descent over
            ``end - begin`` steps from it (DuPL VOC: 2000, 20000).
        gmm_filter_from: DuPL's noise filter (:func:`~mcc.refine.gmm_noise_filter`) on the segmentation
            pseudo label from this step on, with the decoder's own per-pixel loss; None = off (DuPL: 8000
            of 20000). The filtered label feeds the segmentation and consistency losses.
        gmm_min_pixels: the filter's ``min_pixels`` (DuPL: 1000 at 448 x 448 crops).
        gmm_min_mean_gap: its ``min_mean_gap`` (DuPL: 1.0).
        gmm_prob_thre: its ``prob_thre`` (DuPL: 0.95).
        w_consistency: weight of DuPL's :func:`~mcc.losses.consistency_loss` of the strong view
            (DuPL: 0.05); 0 = off. Needs the batch's ``strong`` view
            (``VOCTrainViews(strong_view=StrongAugment())``).
        consistency_from: the consistency term counts from this step on (DuPL: 8001, as its loop weighs
            it 0 while ``n_iter <= 8000``).
        consistency_conf_thre: its ``conf_thre`` (DuPL: 0.9).
        strong_scale: the network sees the strong view resized by this factor (DuPL: 0.75).
        ema_teacher_decay: CoSA's teacher: the labels (CAMs for positiveness, token and segmentation
            labels) come from an EMA copy of the network, ``AveragedModel(net,
            multi_avg_fn=get_ema_multi_avg_fn(decay))`` passed as ``teacher``; None = off (CoSA: 0.9994).
            :func:`~mcc.training.train` keeps it.
        w_seg_to_cam: weight of CoSA's :func:`~mcc.losses.seg_to_cam_loss` from the teacher's
            segmentation, from ``seg_start_step`` on (CoSA: 0.05); needs ``ema_teacher_decay``.
        seg_to_cam_temperature: its ``temperature`` (CoSA: 0.01).
    """

    aux_layer: int = -3
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5)
    low_thre: float = 0.25
    high_thre: float = 0.7
    ignore_index: int = 255
    mask_ratio: float = 0.95
    mask_scale: int = 4
    num_views: int = 8
    mu: float = 0.2
    positive_cam: Literal["aux", "final"] = "aux"
    final_cam_positives_from: int | None = 12001
    temperature: float = 0.5
    infonce_eps: float = 1e-4
    infonce_variant: Literal["reference", "paper"] = "reference"
    momentum: float = 0.9
    projector_dim: int = 1024
    projector_hidden_dim: int = 2048
    projector_bottleneck_dim: int = 256
    affinity_absolute: bool = True
    w_cls: float = 1.0
    w_cls_aux: float = 1.0
    w_affinity: float = 0.2
    w_mcc: float = 0.5
    w_seg: float = 0.1
    seg_start_step: int = 2001
    w_reg: float = 0.05
    reg_energy_weight: float = 1e-7
    reg_sigma_rgb: float = 15.0
    reg_sigma_xy: float = 100.0
    reg_scale_factor: float = 0.5
    par_image: Literal["uint8", "float"] = "uint8"
    par_dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    par_iters: int = 10
    par_down_scale: int = 2
    freeze_pos_embed: bool = True
    head_lr_scale: float = 10.0
    decoder_dim: int = 512
    decoder_dilation: int = 5
    decoder_bias: bool = False
    decoder_init: Literal["default", "kaiming"] = "default"
    seg_target: Literal["par", "cam"] = "par"
    mcc_warmup_steps: int = 0
    dynamic_thre: tuple[float, ...] | None = None
    dynamic_thre_start: float | None = None
    dynamic_thre_steps: tuple[int, int] = (2000, 20000)
    gmm_filter_from: int | None = None
    gmm_min_pixels: int = 1000
    gmm_min_mean_gap: float = 1.0
    gmm_prob_thre: float = 0.95
    w_consistency: float = 0.0
    consistency_from: int = 8001
    consistency_conf_thre: float = 0.9
    strong_scale: float = 0.75
    ema_teacher_decay: float | None = None
    w_seg_to_cam: float = 0.0
    seg_to_cam_temperature: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.low_thre < self.high_thre <= 1.0:
            raise ValueError(f"need 0 <= low_thre < high_thre <= 1, got {self.low_thre}, {self.high_thre}")
        if self.positive_cam not in ("aux", "final"):
            raise ValueError(f"positive_cam must be 'aux' or 'final', got {self.positive_cam!r}")
        if self.infonce_variant not in ("reference", "paper"):
            raise ValueError(f"infonce_variant must be 'reference' or 'paper', got {self.infonce_variant!r}")
        if self.num_views < 1 or self.mask_scale < 1:
            raise ValueError("num_views and mask_scale must be >= 1")
        if not self.cam_scales or not all(s > 0 for s in self.cam_scales):
            raise ValueError(f"cam_scales must be a non-empty sequence of factors > 0, got {self.cam_scales}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")
        if self.par_image not in ("uint8", "float"):
            raise ValueError(f"par_image must be 'uint8' or 'float', got {self.par_image!r}")
        if self.decoder_init not in ("default", "kaiming"):
            raise ValueError(f"decoder_init must be 'default' or 'kaiming', got {self.decoder_init!r}")
        for name in ("reg_sigma_rgb", "reg_sigma_xy", "reg_scale_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.seg_target not in ("par", "cam"):
            raise ValueError(f"seg_target must be 'par' or 'cam', got {self.seg_target!r}")
        if self.mcc_warmup_steps < 0:
            raise ValueError(f"mcc_warmup_steps must be >= 0, got {self.mcc_warmup_steps}")
        self._check_dupl_cosa()

    def _check_dupl_cosa(self) -> None:
        if self.dynamic_thre == "dupl_voc":
            object.__setattr__(self, "dynamic_thre", DUPL_VOC_THRESHOLDS)
        if self.dynamic_thre is not None:
            if isinstance(self.dynamic_thre, str) or not all(
                isinstance(t, int | float) and 0.0 <= t <= 1.0 for t in self.dynamic_thre
            ):
                raise ValueError(
                    "dynamic_thre must be None, 'dupl_voc' or per-class thresholds in [0, 1], "
                    f"got {self.dynamic_thre!r}"
                )
            object.__setattr__(self, "dynamic_thre", tuple(float(t) for t in self.dynamic_thre))
            low = min((*self.dynamic_thre, self.dynamic_start))
            if low < self.low_thre:
                raise ValueError(f"dynamic_thre: thresholds must be >= low_thre ({self.low_thre}), got {low}")
        begin, end = self.dynamic_thre_steps
        if not 0 <= begin <= end - 2:
            raise ValueError(
                f"dynamic_thre_steps must be (begin, end) with 0 <= begin <= end - 2, got {(begin, end)}"
            )
        if self.gmm_min_pixels < 0:
            raise ValueError(f"gmm_min_pixels must be >= 0, got {self.gmm_min_pixels}")
        if not 0.0 <= self.gmm_prob_thre <= 1.0:
            raise ValueError(f"gmm_prob_thre must be in [0, 1], got {self.gmm_prob_thre}")
        if not 0.0 < self.strong_scale <= 1.0:
            raise ValueError(f"strong_scale must be in (0, 1], got {self.strong_scale}")
        if self.ema_teacher_decay is not None and not 0.0 <= self.ema_teacher_decay < 1.0:
            raise ValueError(f"ema_teacher_decay must be None or in [0, 1), got {self.ema_teacher_decay}")
        if self.w_seg_to_cam != 0.0 and self.ema_teacher_decay is None:
            raise ValueError("w_seg_to_cam needs the EMA teacher's segmentation: set ema_teacher_decay too")
        if not self.seg_to_cam_temperature > 0:
            raise ValueError(f"seg_to_cam_temperature must be > 0, got {self.seg_to_cam_temperature}")

    @classmethod
    def released(cls, dataset: Literal["voc", "coco"] = "voc", **overrides) -> MCCConfig:
        """The published code's settings: ratio 0.95, reference InfoNCE, final-CAM positives on VOC, rloss."""
        if dataset not in ("voc", "coco"):
            raise ValueError(f"dataset must be 'voc' or 'coco', got {dataset!r}")
        base = cls() if dataset == "voc" else cls(seg_start_step=8001, final_cam_positives_from=None)
        return dataclasses.replace(base, **overrides)

    @classmethod
    def paper(cls, dataset: Literal["voc", "coco"] = "voc", **overrides) -> MCCConfig:
        """The paper's text: ratio 0.75, aux-CAM positives, InfoNCE of Eq. 10, plain cos, w_seg 1, no rloss.

        Where the paper's text is silent (schedule boundaries, the image PAR sees, the decoder's biases and
        initialisation) it keeps the published code's values.
        """
        base = cls.released(dataset)
        paper = dataclasses.replace(
            base,
            mask_ratio=0.75,
            positive_cam="aux",
            final_cam_positives_from=None,
            infonce_variant="paper",
            affinity_absolute=False,
            w_seg=1.0,
            w_reg=0.0,
        )
        return dataclasses.replace(paper, **overrides)

    def scaled_schedule(self, max_iters: int, published_iters: int = 20000) -> MCCConfig:
        """This config with its step switches moved to a run of ``max_iters`` steps.

        The switches are absolute steps of the published run (VOC 20000 steps, COCO 80000): a much
        shorter run with them unchanged never trains the decoder. ``seg_start_step`` and
        ``final_cam_positives_from`` (when set) become :func:`~mcc.schedule.scale_step`
        ``(step, max_iters, published_iters)``, i.e. ``round(step * max_iters / published_iters)``, at
        least 1, and so do the steps of the DuPL options (``dynamic_thre_steps``, ``gmm_filter_from``,
        ``consistency_from``); every other field is unchanged. Scale the warm-up with
        :func:`~mcc.schedule.scaled_warmup_iters` (``TrainSettings(warmup_iters=...)``).

        Args:
            max_iters: length of the run, >= 1.
            published_iters: length of the run the switches belong to (VOC 20000; use 80000 for the
                COCO preset).

        Returns:
            a new :class:`MCCConfig`.

        Example:
            >>> MCCConfig.released().scaled_schedule(800).seg_start_step  # 2001 of 20000 steps
            80
        """
        from mcc.schedule import scale_step

        def scaled(step: int | None) -> int | None:
            return None if step is None else scale_step(step, max_iters, published_iters)

        begin, end = self.dynamic_thre_steps
        begin = scaled(begin) if begin > 0 else 0
        end = max(scaled(end), begin + 2)  # a descent needs two steps
        return dataclasses.replace(
            self,
            seg_start_step=scaled(self.seg_start_step),
            final_cam_positives_from=scaled(self.final_cam_positives_from),
            dynamic_thre_steps=(begin, end),
            gmm_filter_from=scaled(self.gmm_filter_from),
            consistency_from=scaled(self.consistency_from),
        )

    def positives_from_final_cam(self, step: int) -> bool:
        """Whether the final CAM (rather than the aux CAM) judges positiveness at ``step``."""
        switch = self.final_cam_positives_from
        return self.positive_cam == "final" or (switch is not None and step >= switch)

    def seg_weight(self, step: int) -> float:
        """Weight of the segmentation loss at ``step`` (0 before ``seg_start_step``)."""
        return self.w_seg if step >= self.seg_start_step else 0.0

    def reg_weight(self, step: int) -> float:
        """Weight of the regularised loss at ``step``: ``w_reg`` from ``seg_start_step`` on, else 0."""
        return self.w_reg if step >= self.seg_start_step else 0.0

    @property
    def dynamic_start(self) -> float:
        """The value the dynamic threshold descends from: ``dynamic_thre_start``, or ``high_thre``."""
        return self.high_thre if self.dynamic_thre_start is None else self.dynamic_thre_start

    def gmm_filter_on(self, step: int) -> bool:
        """Whether the noise filter acts on the segmentation pseudo label at ``step``."""
        return self.gmm_filter_from is not None and step >= self.gmm_filter_from

    def consistency_weight(self, step: int) -> float:
        """Weight of the consistency term at ``step``: ``w_consistency`` from ``consistency_from`` on."""
        return self.w_consistency if step >= self.consistency_from else 0.0

    def seg_to_cam_weight(self, step: int) -> float:
        """Weight of the seg-to-CAM term at ``step``: ``w_seg_to_cam`` from ``seg_start_step`` on."""
        return self.w_seg_to_cam if step >= self.seg_start_step else 0.0

    def mcc_weight(self, step: int) -> float:
        """Weight of the masked contrast at ``step``: ``w_mcc``, ramped over ``mcc_warmup_steps``."""
        if step >= self.mcc_warmup_steps:
            return self.w_mcc
        return self.w_mcc * (step + 1) / self.mcc_warmup_steps
