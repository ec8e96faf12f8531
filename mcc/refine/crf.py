"""Fully connected CRF post-processing (Krähenbühl & Koltun 2011) through ``pydensecrf``."""

from __future__ import annotations

import numpy as np

__all__ = ["DenseCRF"]

_INSTALL_HINT = 'DenseCRF needs the optional "crf" extra (pydensecrf2): pip install "mcc-wsss[crf]"'
_UNARIES = ("softmax", "logits", "energy")


class DenseCRF:
    """Dense CRF with one Gaussian (smoothness) and one bilateral (appearance) kernel.

    A thin wrapper over ``pydensecrf.densecrf.DenseCRF2D``: unary ``-log p`` from class probabilities,
    ``addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)``,
    ``addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, compat=bi_w)`` and ``iter_max`` steps of
    mean-field inference. The defaults are those of the published evaluation (DeepLab's, used by AFA,
    ToCo and MCC): ``DenseCRF(10, 1, 1, 121, 5, 4)``.

    Needs the ``crf`` extra: ``pip install "mcc-wsss[crf]"``; without it the constructor raises
    ``ImportError``.

    Args:
        iter_max: mean-field iterations, >= 0.
        pos_xy_std: spatial std (pixels) of the Gaussian kernel, > 0.
        pos_w: weight (Potts compatibility) of the Gaussian kernel.
        bi_xy_std: spatial std (pixels) of the bilateral kernel, > 0.
        bi_rgb_std: colour std (0-255 units) of the bilateral kernel, > 0.
        bi_w: weight (Potts compatibility) of the bilateral kernel.
        unary: what the second argument of ``__call__`` holds: ``"softmax"`` class probabilities
            (unary = -log max(p, clip)), ``"logits"`` unnormalised scores (unary = -log_softmax), or
            ``"energy"`` the unary itself (e.g. a negative log-likelihood), used as is.
        clip: smallest probability before the log (``"softmax"`` only), in (0, 1).
        kernel: shape of the kernels' feature metric: ``"const"``, ``"diag"`` (pydensecrf's default) or
            ``"full"``.
        normalization: kernel normalisation: ``"none"``, ``"before"``, ``"after"`` or ``"symmetric"``
            (pydensecrf's default).

    Example:
        >>> crf = DenseCRF()  # doctest: +SKIP
        >>> probs = crf(image_uint8_hw3, softmax_chw)  # doctest: +SKIP
        >>> label = probs.argmax(0)  # doctest: +SKIP
    """

    def __init__(
        self,
        iter_max: int = 10,
        pos_xy_std: float = 1,
        pos_w: float = 1,
        bi_xy_std: float = 121,
        bi_rgb_std: float = 5,
        bi_w: float = 4,
        *,
        unary: str = "softmax",
        clip: float = 1e-5,
        kernel: str = "diag",
        normalization: str = "symmetric",
    ) -> None:
        try:
            import pydensecrf.densecrf as dcrf
        except ImportError as error:
            raise ImportError(_INSTALL_HINT) from error
        if int(iter_max) != iter_max or iter_max < 0:
            raise ValueError(f"iter_max must be an integer >= 0, got {iter_max}")
        for name, value in (("pos_xy_std", pos_xy_std), ("bi_xy_std", bi_xy_std), ("bi_rgb_std", bi_rgb_std)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if unary not in _UNARIES:
            raise ValueError(f"unary must be one of {_UNARIES}, got {unary!r}")
        if not 0 < clip < 1:
            raise ValueError(f"clip must be in (0, 1), got {clip}")
        kernels = {"const": dcrf.CONST_KERNEL, "diag": dcrf.DIAG_KERNEL, "full": dcrf.FULL_KERNEL}
        normalizations = {
            "none": dcrf.NO_NORMALIZATION,
            "before": dcrf.NORMALIZE_BEFORE,
            "after": dcrf.NORMALIZE_AFTER,
            "symmetric": dcrf.NORMALIZE_SYMMETRIC,
        }
        if kernel not in kernels:
            raise ValueError(f"kernel must be one of {tuple(kernels)}, got {kernel!r}")
        if normalization not in normalizations:
            raise ValueError(f"normalization must be one of {tuple(normalizations)}, got {normalization!r}")
        self._dcrf = dcrf
        self.iter_max = int(iter_max)
        self.pos_xy_std = pos_xy_std
        self.pos_w = pos_w
        self.bi_xy_std = bi_xy_std
        self.bi_rgb_std = bi_rgb_std
        self.bi_w = bi_w
        self.unary = unary
        self.clip = clip
        self.kernel = kernel
        self.normalization = normalization
        self._kernel = kernels[kernel]
        self._normalization = normalizations[normalization]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(iter_max={self.iter_max}, pos_xy_std={self.pos_xy_std}, "
            f"pos_w={self.pos_w}, bi_xy_std={self.bi_xy_std}, bi_rgb_std={self.bi_rgb_std}, "
            f"bi_w={self.bi_w}, unary={self.unary!r}, kernel={self.kernel!r}, "
            f"normalization={self.normalization!r})"
        )

    def unary_energy(self, scores: np.ndarray) -> np.ndarray:
        """The unary term for ``scores`` of shape (C, H, W): float32, shape (C, H*W), C-contiguous."""
        # The input's own precision (float32 at least), as pydensecrf.utils.unary_from_softmax computes it.
        scores = np.asarray(scores)
        if scores.dtype != np.float64:
            scores = scores.astype(np.float32, copy=False)
        if self.unary == "softmax":
            energy = -np.log(np.clip(scores, self.clip, 1.0))
        elif self.unary == "logits":
            shifted = scores - scores.max(axis=0, keepdims=True)
            energy = np.log(np.exp(shifted).sum(axis=0, keepdims=True)) - shifted
        else:
            energy = scores
        return np.ascontiguousarray(energy.reshape(scores.shape[0], -1), dtype=np.float32)

    def __call__(self, image: np.ndarray, probs: np.ndarray, *, iter_max: int | None = None) -> np.ndarray:
        """Runs mean-field inference.

        Args:
            image: the RGB image, ``uint8`` array of shape (H, W, 3).
            probs: per-class scores, shape (C, H, W), float; class probabilities by default (see
                ``unary``), e.g. the softmax of the segmentation logits at image size.
            iter_max: overrides the number of iterations for this call.

        Returns:
            the marginals Q, shape (C, H, W), float32, each pixel's column summing to 1; ``argmax(0)``
            is the label.

        Raises:
            ValueError: ``image`` is not uint8 (H, W, 3), or ``probs`` is not (C, H, W) with the same
                H, W.
        """
        image = np.asarray(image)
        probs = np.asarray(probs)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 of shape (H, W, 3), got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        if probs.ndim != 3 or probs.shape[1:] != (height, width) or probs.shape[0] < 1:
            raise ValueError(f"probs must have shape (C, {height}, {width}) like image, got {probs.shape}")
        steps = self.iter_max if iter_max is None else int(iter_max)
        if steps < 0:
            raise ValueError(f"iter_max must be >= 0, got {iter_max}")
        num_classes = probs.shape[0]
        crf = self._dcrf.DenseCRF2D(width, height, num_classes)
        crf.setUnaryEnergy(self.unary_energy(probs))
        crf.addPairwiseGaussian(
            sxy=self.pos_xy_std, compat=self.pos_w, kernel=self._kernel, normalization=self._normalization
        )
        crf.addPairwiseBilateral(
            sxy=self.bi_xy_std,
            srgb=self.bi_rgb_std,
            rgbim=np.ascontiguousarray(image),
            compat=self.bi_w,
            kernel=self._kernel,
            normalization=self._normalization,
        )
        marginals = crf.inference(steps)
        return np.asarray(marginals, dtype=np.float32).reshape(num_classes, height, width)
