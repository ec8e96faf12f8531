"""The permutohedral lattice (Adams, Baek & Davis 2010) in PyTorch, batched over images.

A Gaussian filter in a d-dimensional feature space, ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`` up to a
constant factor, is approximated in three linear steps: *splat* every pixel's value onto the d+1 vertices
of the lattice simplex that holds its (scaled, elevated) feature vector with barycentric weights, *blur*
the lattice along each of its d+1 axes with the kernel (1/2, 1, 1/2), and *slice* the result back at
every pixel with the same barycentric weights.

This implementation follows, operation for operation and in float32, the SSE path of the C++ lattice
that Krähenbühl's dense CRF introduced and that the rloss ``bilateralfilter`` extension ships, so that
its output is the same to the last bit on the CPU (see ``docs/crf.md``):

* feature scale ``sqrt(2/3) (d+1) / sqrt((i+1)(i+2))``, elevation from coordinate d down to 1;
* the nearest 0-coloured point by rounding half to even;
* the rank of the elevated coordinates by pairwise comparison, ties going to the later coordinate;
* blur along directions 0, 1, ..., d in that order, ``new = old + 0.5 (n1 + n2)``, missing neighbours 0,
  no normalisation;
* slice weights ``barycentric * alpha`` with ``alpha = 1 / (1 + 2^-d)``;
* every lattice point sums its splats in pixel order;
* when the number of pixels is not a multiple of 4, the C++ code processes 4 pixels at a time and also
  inserts the lattice points of its padding lanes (all-zero feature vectors); they receive no splat but
  take part in the blur. ``simd_padding=True`` reproduces that.

The lattice is built once from the features (sort-based: ``torch.unique`` with ``return_inverse``, so
the result does not depend on thread timing) and :meth:`PermutohedralLattice.filter` can then be applied
to any number of value channels, e.g. at every mean-field iteration of a dense CRF.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch

__all__ = ["PermutohedralLattice"]

# Each image's lattice points are looked up by one int64 key; the batch index is its most significant part.
_INT64_LIMIT = 2**62


class PermutohedralLattice:
    """A permutohedral lattice built from per-pixel features, batched over images.

    Args:
        features: position of every pixel in feature space, shape (B, N, d), float32 or float64, already
            divided by the standard deviations (e.g. ``(x/sxy, y/sxy, r/srgb, g/srgb, b/srgb)``). Images
            never share lattice points.
        simd_padding: also insert the lattice points of the all-zero padding features the C++ SSE code
            adds when ``N`` is not a multiple of 4 (they take part in the blur only); True reproduces that
            code exactly; False is the plain algorithm (it differs by up to 1e-5 relative on VOC-size
            images, more on tiny ones: 7e-3 on a 13x11 image).

    Attributes:
        batch_size, num_pixels, dim: B, N and d.
        num_points: number of lattice points over the whole batch.

    Example:
        >>> feats = torch.rand(2, 100, 5) * 4
        >>> lattice = PermutohedralLattice(feats)
        >>> lattice.filter(torch.ones(2, 100, 3)).shape
        torch.Size([2, 100, 3])
    """

    def __init__(self, features: torch.Tensor, *, simd_padding: bool = True) -> None:
        if not isinstance(features, torch.Tensor) or features.ndim != 3:
            raise ValueError(f"features must be a tensor of shape (B, N, d), got {_describe(features)}")
        if features.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"features must be float32 or float64, got {features.dtype}")
        batch, num_pixels, dim = features.shape
        if batch < 1 or num_pixels < 1 or dim < 1:
            raise ValueError(f"features must have B, N, d >= 1, got shape {tuple(features.shape)}")
        if not bool(torch.isfinite(features).all()):
            raise ValueError("features must be finite")
        self.batch_size, self.num_pixels, self.dim = batch, num_pixels, dim
        self.dtype, self.device = features.dtype, features.device
        with torch.no_grad():
            self._build(features.detach(), simd_padding)

    def _constants(self) -> tuple[torch.Tensor, float, float]:
        """Feature scale (d,), 1/(d+1) and alpha, rounded to float32 where the C++ code rounds them."""
        d = self.dim
        single = self.dtype == torch.float32
        inv_std_dev = math.sqrt(2.0 / 3.0) * (d + 1)
        if single:
            inv_std_dev = float(torch.tensor(inv_std_dev, dtype=torch.float32))
        scale = [1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev for i in range(d)]
        scale_t = torch.tensor(scale, dtype=self.dtype, device=self.device)
        inv_dplus1 = float(torch.tensor(1.0 / (d + 1), dtype=self.dtype))
        one = torch.tensor(1.0, dtype=self.dtype)
        alpha = float(one / (one + torch.tensor(2.0**-d, dtype=self.dtype)))
        return scale_t, inv_dplus1, alpha

    def _build(self, features: torch.Tensor, simd_padding: bool) -> None:
        batch, num_pixels, d = features.shape
        device, dtype = self.device, self.dtype
        pad = (-num_pixels) % 4 if simd_padding else 0
        if pad:
            features = torch.cat([features, features.new_zeros(batch, pad, d)], dim=1)
        scale, inv_dplus1, self._alpha = self._constants()

        # Elevate onto the hyperplane sum = 0 of R^{d+1} (Adams et al. 2010, p. 5), coordinate d down to 1.
        elevated = features.new_empty(*features.shape[:2], d + 1)
        running = features.new_zeros(features.shape[:2])
        for j in range(d, 0, -1):
            scaled = features[..., j - 1] * scale[j - 1]
            elevated[..., j] = running - scaled * float(j)
            running = running + scaled
        elevated[..., 0] = running

        # Nearest 0-coloured lattice point; torch.round rounds half to even like the SSE conversion.
        rounded = torch.round(elevated * inv_dplus1)
        rem0 = rounded * float(d + 1)
        coord_sum = rounded.sum(-1).to(torch.int64)

        # rank[i]: for each pair i < j, i gains 1 if diff_i < diff_j, else j gains 1 (ties go to j).
        diff = elevated - rem0
        less = diff.unsqueeze(-1) < diff.unsqueeze(-2)  # less[..., i, j] = diff_i < diff_j
        upper = torch.ones(d + 1, d + 1, dtype=torch.bool, device=device).triu(1)
        rank = (less & upper).sum(-1) + (~less & upper).sum(-2)
        rank = rank + coord_sum.unsqueeze(-1)
        wrap = (rank < 0).to(torch.int64) * (d + 1) - (rank >= d + 1).to(torch.int64) * (d + 1)
        rank = rank + wrap
        rem0 = rem0 + wrap.to(dtype)

        # Barycentric weights (p. 10): slot p = v[rank d-p] - v[rank d-p+1], slot 0 wraps around.
        offsets = (elevated - rem0) * inv_dplus1
        by_rank = torch.zeros_like(offsets).scatter_(-1, rank, offsets)
        weights = torch.empty_like(offsets)
        weights[..., 0] = by_rank[..., d] + (1.0 - by_rank[..., 0])
        weights[..., 1:] = by_rank[..., :d].flip(-1) - by_rank[..., 1:].flip(-1)

        vertex = self._index_points(rem0[..., :d].round().to(torch.int64), rank[..., :d])
        # (B*N, d+1): the lattice point of each pixel's vertex r and its barycentric weight.
        self._vertex = vertex.view(batch, -1, d + 1)[:, :num_pixels].reshape(-1, d + 1)
        self._splat_weight = weights[:, :num_pixels].reshape(-1, d + 1)
        self._slice_weight = self._splat_weight * self._alpha
        self._matrices: dict[str, torch.Tensor] = {}

    def _index_points(self, rem0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        """Sorted unique lattice points, each vertex's point index and each point's blur neighbours.

        Vertex r of a pixel's simplex has the key ``rem0 + canonical[r][rank]`` (first d coordinates),
        ``canonical[r][k] = r``, or ``r - (d+1)`` for ``k > d - r``. Keys are packed into one int64 per
        vertex (mixed radix, the image index most significant) without forming the keys themselves.

        Args:
            rem0: the 0-coloured point, shape (B, Np, d), int64.
            rank: the ranks of the first d coordinates, shape (B, Np, d), int64.

        Returns:
            the lattice point of every vertex, shape (B*Np*(d+1),), pixel-major.
        """
        batch, _, d = rem0.shape
        device = rem0.device
        # Keys lie within d of rem0 and their neighbours within d of the keys.
        low = rem0.amin(dim=(0, 1)) - 2 * d
        span = rem0.amax(dim=(0, 1)) + 2 * d + 1 - low
        spans = [int(s) for s in span.tolist()]
        strides = [1] * d
        for i in range(d - 2, -1, -1):
            strides[i] = strides[i + 1] * spans[i + 1]
        block = strides[0] * spans[0]
        if block * batch >= _INT64_LIMIT:
            raise ValueError(
                "features span too many lattice points for 64-bit keys; use larger standard deviations"
            )
        stride_t = torch.tensor(strides, device=device)
        image = torch.arange(batch, device=device).view(batch, 1)
        base = ((rem0 - low) * stride_t).sum(-1) + image * block  # (B, Np)
        # sum_i stride_i [rank_i >= t] for t = 0..d+1, from the strides placed at their ranks.
        by_rank = torch.zeros(*rank.shape[:2], d + 2, dtype=torch.int64, device=device)
        by_rank.scatter_(-1, rank, stride_t.expand_as(rank))
        suffix = by_rank.flip(-1).cumsum(-1).flip(-1)  # suffix[..., t] = sum over ranks >= t
        remainder = torch.arange(d + 1, device=device)
        all_ones = sum(strides)
        packed = (
            base.unsqueeze(-1) + remainder * all_ones - (d + 1) * suffix[..., d + 1 - remainder]
        )  # (B, Np, d+1)
        points, vertex = torch.unique(packed.reshape(-1), sorted=True, return_inverse=True)
        num_points = points.numel()
        self.num_points = num_points

        # Neighbours along axis j: key - 1 + (d+1) e_j and key + 1 - (d+1) e_j (only d coordinates kept).
        neighbours = []
        for j in range(d + 1):
            step = all_ones - ((d + 1) * strides[j] if j < d else 0)
            pair = []
            for query in (points - step, points + step):
                found = torch.searchsorted(points, query).clamp_(max=num_points - 1)
                hit = points[found] == query
                index = torch.where(hit, found, torch.full_like(found, num_points))
                # The extra row num_points holds zeros and stays zero through the blur.
                pair.append(torch.cat([index, index.new_tensor([num_points])]))
            neighbours.append(tuple(pair))
        self._neighbours = neighbours
        return vertex

    def scaled(self, before: torch.Tensor, after: torch.Tensor) -> PermutohedralLattice:
        """The same lattice with per-pixel factors folded into its splat and slice weights.

        ``lattice.scaled(before, after).filter(v)`` is ``after * lattice.filter(before * v)`` (up to
        rounding) without the two extra passes over the values: how a normalised CRF kernel is applied
        at every iteration.

        Args:
            before: factor of every pixel's value before the splat, shape (B, N).
            after: factor of every pixel's result after the slice, shape (B, N).

        Returns:
            a lattice sharing this one's points and neighbours.
        """
        expected = (self.batch_size, self.num_pixels)
        for name, factor in (("before", before), ("after", after)):
            if not isinstance(factor, torch.Tensor) or tuple(factor.shape) != expected:
                raise ValueError(f"{name} must have shape {expected}, got {_describe(factor)}")
        other = copy.copy(self)
        other._splat_weight = self._splat_weight * before.to(self._splat_weight).reshape(-1, 1)
        other._slice_weight = self._slice_weight * after.to(self._slice_weight).reshape(-1, 1)
        other._matrices = {}
        return other

    def filter(self, values: torch.Tensor, *, reverse: bool = False, plain: bool = False) -> torch.Tensor:
        """Splat, blur and slice ``values``.

        Args:
            values: shape (B, N, K), one K-vector per pixel, on the lattice's device; cast to the
                lattice's dtype.
            reverse: blur along directions d, ..., 0 instead of 0, ..., d. The blurs along different
                directions do not commute where lattice points are missing, so the filter is not exactly
                symmetric; the reversed filter is its transpose (up to rounding).
            plain: splat with ``index_add`` and slice with gathers instead of sparse matrix products
                (the same sums in the same order, slower; kept as the tests' twin).

        Returns:
            the filtered values, shape (B, N, K), in the lattice's dtype. Differentiable in ``values``.
        """
        expected = (self.batch_size, self.num_pixels)
        if not isinstance(values, torch.Tensor) or values.ndim != 3 or tuple(values.shape[:2]) != expected:
            raise ValueError(
                f"values must have shape ({expected[0]}, {expected[1]}, K), got {_describe(values)}"
            )
        if values.device != self.device:
            raise ValueError(f"values must be on {self.device}, got {values.device}")
        channels = values.shape[2]
        flat = values.to(self.dtype).reshape(-1, channels)
        lattice = self._splat_plain(flat) if plain else torch.sparse.mm(self._sparse("splat"), flat)
        for n1, n2 in reversed(self._neighbours) if reverse else self._neighbours:
            blurred = lattice.index_select(0, n1)
            blurred = blurred.add_(lattice.index_select(0, n2)).mul_(0.5).add_(lattice)
            lattice = blurred
        if plain or self.device.type != "cpu":
            out = self._slice_plain(lattice)
        else:
            out = torch.sparse.mm(self._sparse("slice"), lattice)
        return out.view(self.batch_size, self.num_pixels, channels)

    def _splat_plain(self, flat: torch.Tensor) -> torch.Tensor:
        # Splats of vertex r reach only lattice points of colour r, so one index_add per r (the CPU kernel
        # adds rows in index order) sums every point's splats in pixel order, like the C++ loop.
        lattice = flat.new_zeros(self.num_points + 1, flat.shape[1])
        for r in range(self.dim + 1):
            lattice = lattice.index_add(0, self._vertex[:, r], flat * self._splat_weight[:, r : r + 1])
        return lattice

    def _slice_plain(self, lattice: torch.Tensor) -> torch.Tensor:
        out = self._slice_weight[:, 0:1] * lattice[self._vertex[:, 0]]
        for r in range(1, self.dim + 1):
            out = out + self._slice_weight[:, r : r + 1] * lattice[self._vertex[:, r]]
        return out

    def _sparse(self, which: str) -> torch.Tensor:
        """Splat (points x pixels) or slice (pixels x points) as a CSR matrix, built on first use.

        The splat matrix's rows list their pixels in ascending order and the slice matrix's rows list the
        vertices in the order r = 0..d, the C++ summation orders; a CSR product sums each row in its
        stored order (checked bit for bit against the C++ output on the CPU), 3-4x faster than gathers.
        """
        if which not in self._matrices:
            num_rows = self._vertex.shape[0]
            points = self.num_points + 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                if which == "splat":
                    vertex = self._vertex.reshape(-1)
                    pixel = torch.arange(num_rows, device=self.device).repeat_interleave(self.dim + 1)
                    order = torch.argsort(vertex * num_rows + pixel)
                    counts = torch.bincount(vertex, minlength=points)
                    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
                    matrix = torch.sparse_csr_tensor(
                        crow, pixel[order], self._splat_weight.reshape(-1)[order], size=(points, num_rows)
                    )
                else:
                    crow = torch.arange(0, num_rows * (self.dim + 1) + 1, self.dim + 1, device=self.device)
                    matrix = torch.sparse_csr_tensor(
                        crow,
                        self._vertex.reshape(-1),
                        self._slice_weight.reshape(-1),
                        size=(num_rows, points),
                    )
            self._matrices[which] = matrix
        return self._matrices[which]


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return type(value).__name__
