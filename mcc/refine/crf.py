"""Fully connected CRF post-processing (Krähenbühl & Koltun 2011): ``pydensecrf`` or a PyTorch backend."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from mcc.refine.bilateral import bilateral_features
from mcc.refine.permutohedral import PermutohedralLattice

__all__ = ["DenseCRF"]

_INSTALL_HINT = 'DenseCRF needs the optional "crf" extra (pydensecrf2): pip install "mcc-wsss[crf]"'
_UNARIES = ("softmax", "logits", "energy")
_BACKENDS = ("pydensecrf", "torch")
_KERNELS = ("const", "diag", "full")
_NORMALIZATIONS = ("none", "before", "after", "symmetric")
# Image sizes whose spatial lattice a DenseCRF keeps (VOC has a handful of common sizes).
_CACHED_SIZES = 4


class DenseCRF:
    """Dense CRF with one Gaussian (smoothness) and one bilateral (appearance) kernel.

    Mean-field inference exactly as ``pydensecrf.densecrf.DenseCRF2D`` runs it: unary ``-log p`` from
    class probabilities, ``addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)``,
    ``addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, compat=bi_w)`` (Potts compatibilities) and
    ``iter_max`` steps of ``Q <- softmax(-unary + sum_k w_k * n_k * K_k(n_k * Q))`` with ``n_k`` the
    kernel's symmetric normalisation ``1 / sqrt(K_k 1)``. The defaults are those of the published
    evaluation (DeepLab's, used by AFA, ToCo and MCC): ``DenseCRF(10, 1, 1, 121, 5, 4)``.

    Two backends:

    * ``"pydensecrf"`` (default): the C++ library, per image on the CPU. Needs the ``crf`` extra:
      ``pip install "mcc-wsss[crf]"``; without it the constructor raises ``ImportError``.
    * ``"torch"``: the same inference in PyTorch on :class:`~mcc.refine.PermutohedralLattice` (the
      lattice Krähenbühl's code uses, reproduced operation for operation), batched over images, on CUDA
      or the CPU, no extra needed. On generated VOC-size images it gives the same label as pydensecrf on
      >= 99.9 % of the pixels (``docs/crf.md`` has the measured agreement and speed).

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
            ``"full"``; they differ only when kernel parameters are learnt, so inference is the same.
        normalization: kernel normalisation: ``"none"``, ``"before"``, ``"after"`` or ``"symmetric"``
            (pydensecrf's default).
        backend: ``"pydensecrf"`` or ``"torch"``.
        device: where the torch backend computes ``__call__`` (numpy in, numpy out); default CUDA when
            available, else the CPU. :meth:`inference` computes on its inputs' device.

    Example:
        >>> crf = DenseCRF()  # doctest: +SKIP
        >>> probs = crf(image_uint8_hw3, softmax_chw)  # doctest: +SKIP
        >>> label = probs.argmax(0)  # doctest: +SKIP
        >>> gpu_crf = DenseCRF(backend="torch", device="cuda")  # doctest: +SKIP
        >>> marginals = gpu_crf.inference(images_b3hw_uint8, probs_bchw)  # doctest: +SKIP
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
        backend: str = "pydensecrf",
        device: str | torch.device | None = None,
    ) -> None:
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        dcrf = None
        if backend == "pydensecrf":
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
        if kernel not in _KERNELS:
            raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
        if normalization not in _NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device must name a torch device, got {device!r}") from error
        if backend == "torch" and self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available")
        self._dcrf = dcrf
        self.backend = backend
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
        if dcrf is not None:
            kernels = {"const": dcrf.CONST_KERNEL, "diag": dcrf.DIAG_KERNEL, "full": dcrf.FULL_KERNEL}
            normalizations = {
                "none": dcrf.NO_NORMALIZATION,
                "before": dcrf.NORMALIZE_BEFORE,
                "after": dcrf.NORMALIZE_AFTER,
                "symmetric": dcrf.NORMALIZE_SYMMETRIC,
            }
            self._kernel = kernels[kernel]
            self._normalization = normalizations[normalization]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(iter_max={self.iter_max}, pos_xy_std={self.pos_xy_std}, "
            f"pos_w={self.pos_w}, bi_xy_std={self.bi_xy_std}, bi_rgb_std={self.bi_rgb_std}, "
            f"bi_w={self.bi_w}, unary={self.unary!r}, kernel={self.kernel!r}, "
            f"normalization={self.normalization!r}, backend={self.backend!r})"
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
        """Runs mean-field inference on one image.

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
        steps = self._steps(iter_max)
        if self.backend == "torch":
            images = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
            scores = torch.from_numpy(np.ascontiguousarray(probs)).unsqueeze(0)
            marginals = self._torch_inference(images.to(self.device), scores.to(self.device), steps)
            return marginals[0].cpu().numpy()
        return self._pydensecrf_inference(image, probs, steps)

    def inference(
        self, images: torch.Tensor, probs: torch.Tensor, *, iter_max: int | None = None
    ) -> torch.Tensor:
        """Runs mean-field inference on a batch of images, on the inputs' device.

        With the torch backend the whole batch goes through one lattice per kernel (each image keeps its
        own lattice points); with the pydensecrf backend the images are processed one by one on the CPU
        and the result is moved back to the inputs' device.

        Args:
            images: RGB images, ``uint8`` tensor of shape (B, 3, H, W) (0-255).
            probs: per-class scores, shape (B, C, H, W), float (see ``unary``), on the images' device.
            iter_max: overrides the number of iterations for this call.

        Returns:
            the marginals Q, shape (B, C, H, W), float32, on the inputs' device.

        Raises:
            ValueError: wrong dtypes, shapes or devices.
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a uint8 tensor of shape (B, 3, H, W), got {_describe(images)}")
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (0-255), got {images.dtype}")
        batch, _, height, width = images.shape
        if (
            not isinstance(probs, torch.Tensor)
            or probs.ndim != 4
            or probs.shape[0] != batch
            or tuple(probs.shape[2:]) != (height, width)
            or probs.shape[1] < 1
        ):
            raise ValueError(
                f"probs must have shape ({batch}, C, {height}, {width}) like images, got {_describe(probs)}"
            )
        if not probs.is_floating_point():
            raise ValueError(f"probs must be a floating-point tensor, got {probs.dtype}")
        if probs.device != images.device:
            raise ValueError(
                f"probs and images must be on the same device, got {probs.device} and {images.device}"
            )
        steps = self._steps(iter_max)
        if batch == 0:
            return probs.new_zeros(probs.shape, dtype=torch.float32)
        if self.backend == "torch":
            return self._torch_inference(images, probs, steps)
        results = [
            self._pydensecrf_inference(
                image.permute(1, 2, 0).cpu().numpy(), scores.detach().cpu().numpy(), steps
            )
            for image, scores in zip(images, probs)
        ]
        return torch.from_numpy(np.stack(results)).to(images.device)

    def _steps(self, iter_max: int | None) -> int:
        if iter_max is None:
            return self.iter_max
        if int(iter_max) != iter_max or iter_max < 0:
            raise ValueError(f"iter_max must be an integer >= 0, got {iter_max}")
        return int(iter_max)

    def _pydensecrf_inference(self, image: np.ndarray, probs: np.ndarray, steps: int) -> np.ndarray:
        height, width = image.shape[:2]
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

    def _torch_neg_unary(self, scores: torch.Tensor) -> torch.Tensor:
        """Minus the unary term for scores (B, C, N), float32, as :meth:`unary_energy` computes it."""
        if scores.dtype != torch.float64:
            scores = scores.float()
        if self.unary == "softmax":
            negative = scores.clamp(self.clip, 1.0).log_()
        elif self.unary == "logits":
            shifted = scores - scores.amax(dim=1, keepdim=True)
            negative = shifted.sub_(torch.log(torch.exp(shifted).sum(dim=1, keepdim=True)))
        else:
            negative = -scores
        return negative.float()

    def _normalized(self, lattice: PermutohedralLattice, weight: float) -> PermutohedralLattice:
        """One Potts term's lattice: Q -> w * n * K(n * Q) (pydensecrf subtracts its negative)."""
        norm = lattice.filter(lattice._splat_weight.new_ones(lattice.batch_size, lattice.num_pixels, 1))
        if self.normalization == "none":
            # pydensecrf computes a constant for this case but its filter never applies it.
            before = after = torch.ones_like(norm)
        else:
            # In double, stored in float32, as pydensecrf computes it.
            exponent = 0.5 if self.normalization == "symmetric" else 1.0
            scaled = (1.0 / (norm.double() + 1e-20) ** exponent).float()
            before = scaled if self.normalization in ("symmetric", "before") else torch.ones_like(norm)
            after = scaled if self.normalization in ("symmetric", "after") else torch.ones_like(norm)
        # The normalisation and the Potts weight go into the splat and slice weights, once.
        return lattice.scaled(before[..., 0], after[..., 0] * weight)

    def _gaussian(
        self, height: int, width: int, device: torch.device
    ) -> tuple[PermutohedralLattice, list[torch.Tensor] | None]:
        """The smoothness kernel's lattice: it depends only on the image size, so it is built once per
        size (a few recent sizes are kept) and shared by every image of a batch."""
        key = (height, width, str(device))
        cache = self.__dict__.setdefault("_gaussian_cache", {})
        if key not in cache:
            grid = torch.zeros(1, 3, height, width, device=device)
            features = bilateral_features(grid, 1.0, self.pos_xy_std)[..., :2].contiguous()
            lattice = self._normalized(PermutohedralLattice(features).reordered(), self.pos_w)
            # On the CPU the first and last blurs are folded into the splat and slice (2 passes over the
            # lattice fewer per iteration, built in about 10 ms at VOC size); CUDA keeps the lattice's.
            products = None
            if device.type == "cpu":
                products = lattice._fused_products()
                lattice._matrices = lattice._kept_matrices()  # its splat and slice are in the products
            while len(cache) >= _CACHED_SIZES:
                cache.pop(next(iter(cache)))
            cache[key] = lattice, products
        return cache[key]

    def _buffers(self, shapes: dict[str, tuple[int, ...]], device: torch.device) -> dict[str, torch.Tensor]:
        """Float32 buffers of the given shapes, reused from the previous call when they match.

        On the CPU, fresh memory for the dozen large buffers of a call costs page faults (about a tenth
        of a VOC-size call); reusing them keeps the last call's buffers (~100 MB at VOC size) alive.
        """
        held = self.__dict__.setdefault("_held_buffers", {})
        buffers = {}
        for name, shape in shapes.items():
            buffer = held.get(name)
            if buffer is None or tuple(buffer.shape) != shape or buffer.device != device:
                buffer = torch.empty(shape, dtype=torch.float32, device=device)
            buffers[name] = buffer
        if device.type == "cpu":
            self._held_buffers = buffers
        return buffers

    def _torch_inference(self, images: torch.Tensor, probs: torch.Tensor, steps: int) -> torch.Tensor:
        batch, num_classes, height, width = probs.shape
        if probs.device.type == "cpu" and batch > 1:
            # On the CPU one image at a time is faster (the lattices and Q stay in cache; measured 1.5x
            # per image at VOC size) and gives the same bits; on CUDA the batch is one computation.
            return torch.cat(
                [self._torch_batched(images[i : i + 1], probs[i : i + 1], steps) for i in range(batch)]
            )
        return self._torch_batched(images, probs, steps)

    def _torch_batched(self, images: torch.Tensor, probs: torch.Tensor, steps: int) -> torch.Tensor:
        """Mean-field inference on the whole batch as one computation (no loop over images)."""
        batch, num_classes, height, width = probs.shape
        pixels = height * width
        device = probs.device
        with torch.no_grad(), _no_autocast(device):
            # Pixel-major (N, B, C): the spatial lattice (one image) filters it as (N, B*C), the bilateral
            # one (every image its own points) as (N*B, C); neither needs a copy per iteration.
            negative_unary = self._torch_neg_unary(probs.detach().reshape(batch, num_classes, pixels))
            gaussian, fused = self._gaussian(height, width, device)
            features = bilateral_features(images.to(torch.float32), self.bi_rgb_std, self.bi_xy_std)
            bilateral = self._normalized(PermutohedralLattice(features), self.bi_w).interleaved()
            # Q and the kernels' outputs carry `width` >= C channels: the extra ones hold Q = 0 (energy
            # -inf), so they add nothing anywhere; 24 channels instead of 21 make the CPU's sparse products
            # about 1.2x faster (rows of 96 bytes) with the same bits in the real channels.
            channels = _padded_channels(num_classes)
            rows = (pixels, batch * channels)
            buffers = self._buffers(
                {
                    "neg_unary": (pixels, batch, channels),
                    "q": (pixels, batch, channels),
                    "energy": (pixels, batch, channels),
                    **{f"g{i}": (gaussian.num_points + 1, batch * channels) for i in range(2)},
                    **{f"b{i}": (bilateral.num_points + 1, channels) for i in range(2)},
                },
                device,
            )
            neg_unary, q, energy = buffers["neg_unary"], buffers["q"], buffers["energy"]
            neg_unary[..., :num_classes] = negative_unary.permute(2, 0, 1)
            neg_unary[..., num_classes:] = -math.inf
            gaussian_work = [buffers[f"g{i}"] for i in range(2)]
            bilateral_work = [buffers[f"b{i}"] for i in range(2)]
            _softmax(neg_unary, q)
            for _ in range(steps):
                # energy = (-unary + smooth) + appearance: each slice adds its result to energy in place.
                energy.copy_(neg_unary)
                if fused is None:
                    gaussian.filter_rows(
                        q.view(rows), out=energy.view(rows), work=gaussian_work, accumulate=True
                    )
                else:
                    _chain(fused, q.view(rows), energy.view(rows), gaussian_work)
                bilateral.filter_rows(
                    q.view(pixels * batch, channels),
                    out=energy.view(pixels * batch, channels),
                    work=bilateral_work,
                    accumulate=True,
                )
                _softmax(energy, q)
            marginals = q.new_empty(batch, num_classes, pixels)
            marginals.copy_(q.permute(1, 2, 0)[:, :num_classes])
            return marginals.view(batch, num_classes, height, width)


def _chain(products: list[torch.Tensor], values: torch.Tensor, out: torch.Tensor, work: list[torch.Tensor]):
    """out += products[-1] @ ... @ products[0] @ values, through the two work buffers (CPU)."""
    current = values
    for index, matrix in enumerate(products[:-1]):
        target = work[index % 2]
        torch.addmm(target, matrix, current, beta=0, out=target)
        current = target
    torch.addmm(out, products[-1], current, out=out)


def _padded_channels(num_classes: int) -> int:
    """Channels the torch backend computes with: C rounded up to a multiple of 8 when that adds at most
    a sixth (e.g. 21 -> 24), else C."""
    padded = -(-num_classes // 8) * 8
    return padded if 6 * (padded - num_classes) <= num_classes else num_classes


def _softmax(x: torch.Tensor, out: torch.Tensor) -> None:
    torch.ops.aten._softmax.out(x, -1, False, out=out)


def _no_autocast(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to disable
        return contextlib.nullcontext()


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
