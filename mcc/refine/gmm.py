"""DuPL's adaptive noise filter: a two-component Gaussian mixture over each image's per-pixel loss.

DuPL (Wu et al., CVPR 2024; github.com/Wu0409/DuPL) fits scikit-learn's
``GaussianMixture(2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0)`` on the CPU, image by
image. This module runs the same fit batched in torch on the loss's own device: scikit-learn's k-means
initialisation (k-means++ from ``RandomState(0)``'s first uniforms, then Lloyd with its stopping rule),
then EM with its lower-bound convergence test. Written here because the published route copies every
image to the CPU and fits it in Python (the slow part of DuPL's step).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["gmm_noise_filter"]

# RandomState(0)'s first three uniforms: the first picks k-means++'s first centre (numpy's choice with
# uniform weights), the next two scale its 2 + int(log(2)) = 2 candidate draws for the second centre.
_UNIFORMS = tuple(float(u) for u in np.random.RandomState(0).random_sample(3))
_KMEANS_MAX_ITER = 300  # scikit-learn KMeans' default
_KMEANS_TOL = 1e-4  # its default, scaled by the mean variance of the data
_EPS32 = float(np.finfo(np.float32).eps)  # the fit set is float32: nk gets 10 * its eps, as sklearn


def gmm_noise_filter(
    pixel_loss: torch.Tensor,
    label: torch.Tensor,
    *,
    min_loss: float = 0.1,
    min_pixels: int = 1000,
    min_mean_gap: float = 1.0,
    prob_thre: float = 0.95,
    ignore_index: int = 255,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
) -> torch.Tensor:
    """Marks the foreground pixels of the noisier loss mode as ignored (DuPL's noise filter).

    Per image: the fit set is the loss of the foreground pixels (label not 0 and not ``ignore_index``)
    above ``min_loss``. With more than ``min_pixels`` of them, a 1-D mixture of two Gaussians is fitted
    as scikit-learn's ``GaussianMixture(2, max_iter, tol, reg_covar, random_state=0)`` does: k-means
    (k-means++ seeding from ``RandomState(0)``, Lloyd until the labels are stable or the squared centre
    shift is at most ``1e-4`` times the data's variance) gives the initial responsibilities; then at
    most ``max_iter`` EM iterations, stopping once the mean log-likelihood changes by less than ``tol``;
    every variance gets ``+ reg_covar``. If the two means differ by more than ``min_mean_gap``, every
    pixel of the image (fitted or not) whose posterior of the higher-mean component exceeds ``prob_thre``
    and whose label is not background becomes ``ignore_index``. Background and ignored pixels never
    change; images with too few fit pixels or with close means are returned unchanged.

    The fit runs in float64 for all images at once; it agrees with scikit-learn's float32 fit on every
    per-image decision and on nearly every pixel (tests/refine/test_gmm.py measures it).

    Args:
        pixel_loss: per-pixel loss, shape (B, H, W), e.g. ``F.cross_entropy(logits, label,
            ignore_index=255, reduction="none")`` (0 on ignored pixels). No gradient flows.
        label: segmentation label, shape (B, H, W), integer; 0 background, ``ignore_index`` ignored.
        min_loss: only losses above it are fitted (DuPL: 0.1).
        min_pixels: an image is fitted only with more than this many such pixels (DuPL: 1000, at
            448 x 448 labels).
        min_mean_gap: the filter acts only when the two means differ by more than this (DuPL: 1.0).
        prob_thre: posterior of the noisy (higher-mean) component above which a pixel is dropped
            (DuPL: 0.95).
        ignore_index: label value of ignored pixels.
        max_iter: EM iterations at most (DuPL: 10).
        tol: EM stops when the mean log-likelihood changes by less (DuPL: 1e-2).
        reg_covar: added to each variance (DuPL: 5e-4).

    Returns:
        the filtered label, shape (B, H, W), dtype of ``label`` (a new tensor).

    Raises:
        ValueError: shapes that are not (B, H, W) and equal, a non-floating ``pixel_loss``, a floating
            ``label``, or parameters out of range.

    Example:
        >>> loss = torch.cat([torch.full((1, 40, 50), 0.3), torch.full((1, 10, 50), 3.0)], dim=1)
        >>> loss = loss + 0.05 * torch.randn(1, 50, 50, generator=torch.Generator().manual_seed(0))
        >>> label = torch.ones(1, 50, 50, dtype=torch.long)
        >>> filtered = gmm_noise_filter(loss, label)
        >>> int((filtered == 255).sum())  # the 500 pixels of the high-loss mode
        500
    """
    _check(pixel_loss, label, min_pixels, prob_thre, max_iter, tol, reg_covar)
    batch = label.shape[0]
    with torch.no_grad(), torch.autocast(pixel_loss.device.type, enabled=False):
        # The fit set in float32 (as scikit-learn sees it), the arithmetic in float64.
        values = pixel_loss.detach().reshape(batch, -1).float().double()
        flat_label = label.reshape(batch, -1).to(pixel_loss.device)
        foreground = (flat_label != 0) & (flat_label != ignore_index)
        fit = foreground & (values > min_loss)
        count = fit.sum(dim=1)
        active = count > min_pixels
        if not bool(active.any()):  # the one host sync: nothing to fit in the whole batch
            return label.clone()
        means, variances, weights = _fit(values, fit, count, max_iter, tol, reg_covar)
        noisy = means.argmax(dim=1)  # first index on ties, as numpy's argmax
        valid = active & ((means[:, 0] - means[:, 1]).abs() > min_mean_gap)
        log_resp = _log_resp(values, means, variances, weights)
        posterior = log_resp.gather(2, noisy[:, None, None].expand(-1, values.shape[1], 1))[..., 0].exp()
        drop = valid[:, None] & (posterior > prob_thre) & (flat_label != 0)
        drop = drop.reshape(label.shape).to(label.device)
    return label.masked_fill(drop, ignore_index)


def _check(pixel_loss, label, min_pixels, prob_thre, max_iter, tol, reg_covar) -> None:
    if not torch.is_tensor(pixel_loss) or pixel_loss.dim() != 3 or not pixel_loss.is_floating_point():
        shape = tuple(pixel_loss.shape) if torch.is_tensor(pixel_loss) else type(pixel_loss).__name__
        raise ValueError(f"pixel_loss must be a floating (B, H, W) tensor, got {shape}")
    if not torch.is_tensor(label) or label.shape != pixel_loss.shape:
        shape = tuple(label.shape) if torch.is_tensor(label) else type(label).__name__
        raise ValueError(f"label must have the shape of pixel_loss {tuple(pixel_loss.shape)}, got {shape}")
    if label.is_floating_point() or label.dtype == torch.bool:
        raise ValueError(f"label must be an integer tensor, got {label.dtype}")
    if min_pixels < 0:
        raise ValueError(f"min_pixels must be >= 0, got {min_pixels}")
    if not 0.0 <= prob_thre <= 1.0:
        raise ValueError(f"prob_thre must be in [0, 1], got {prob_thre}")
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if not reg_covar >= 0:
        raise ValueError(f"reg_covar must be >= 0, got {reg_covar}")


def _at_rank(values: torch.Tensor, fit: torch.Tensor, rank: torch.Tensor, index: torch.Tensor):
    """values[b] of the ``index[b]``-th fit pixel of image b (in pixel order), (B,)."""
    hit = fit & (rank == index[:, None])
    return torch.where(hit, values, 0.0).sum(dim=1)


def _kmeans_plusplus(values, fit, count):
    """scikit-learn's greedy k-means++ for two centres, (B, 2)."""
    rank = fit.long().cumsum(dim=1) - 1  # position of each fit pixel in the fit set
    n = count.clamp(min=1)
    # numpy's choice(n, p=uniform): searchsorted(cumsum(p), u, "right") = floor(u * n).
    first = _at_rank(values, fit, rank, (_UNIFORMS[0] * n.double()).floor().long().clamp(max=n - 1))
    # Squared distances are float32 in scikit-learn (its float32 path casts them back).
    closest = torch.where(fit, (values - first[:, None]) ** 2, 0.0).float().double()
    potential = closest.sum(dim=1)
    cumulative = closest.cumsum(dim=1)
    best_potential = best = None
    for u in _UNIFORMS[1:]:
        # searchsorted(cumsum(closest), u * potential): the fit pixels strictly below, clipped.
        index = ((cumulative < u * potential[:, None]) & fit).sum(dim=1).clamp(max=n - 1)
        candidate = _at_rank(values, fit, rank, index)
        distance = torch.minimum(closest, torch.where(fit, (values - candidate[:, None]) ** 2, 0.0))
        candidate_potential = distance.float().double().sum(dim=1)
        if best is None:
            best, best_potential = candidate, candidate_potential
        else:  # argmin keeps the first candidate on ties
            better = candidate_potential < best_potential
            best = torch.where(better, candidate, best)
            best_potential = torch.where(better, candidate_potential, best_potential)
    return torch.stack([first, best], dim=1)


def _assign(values, centers):
    """Index of the nearest centre (the first on ties), (B, N)."""
    return ((values[:, :, None] - centers[:, None, :]) ** 2).argmin(dim=2)


def _lloyd(values, fit, count, centers):
    """scikit-learn's Lloyd iterations for two centres; returns the final labels (B, N)."""
    n = count.clamp(min=1).double()
    mean = torch.where(fit, values, 0.0).sum(dim=1) / n
    variance = torch.where(fit, (values - mean[:, None]) ** 2, 0.0).sum(dim=1) / n
    tolerance = _KMEANS_TOL * variance
    labels_old = torch.full_like(values, -1, dtype=torch.long)
    done = ~(count > 0)
    for _ in range(_KMEANS_MAX_ITER):
        labels = _assign(values, centers)
        one_hot = torch.nn.functional.one_hot(labels, 2).double() * fit[:, :, None]
        sizes = one_hot.sum(dim=1)
        sums = (one_hot * values[:, :, None]).sum(dim=1)
        # An empty cluster (only with duplicate centres) keeps its centre; scikit-learn relocates it.
        new_centers = torch.where(sizes > 0, sums / sizes.clamp(min=1), centers)
        shift = ((new_centers - centers) ** 2).sum(dim=1)
        stable = ((labels == labels_old) | ~fit).all(dim=1)
        centers = torch.where(done[:, None], centers, new_centers)
        done = done | stable | (shift <= tolerance)
        labels_old = labels
        if bool(done.all()):
            break
    # The labels of the final centres (scikit-learn's closing E-step; equal on strict convergence).
    return _assign(values, centers)


def _m_step(values, fit, resp, reg_covar):
    resp = resp * fit[:, :, None]
    nk = resp.sum(dim=1) + 10 * _EPS32
    means = (resp * values[:, :, None]).sum(dim=1) / nk
    variances = (resp * (values[:, :, None] - means[:, None, :]) ** 2).sum(dim=1) / nk + reg_covar
    return nk, means, variances


def _log_prob(values, means, variances, weights):
    # log N(x | mu_k, var_k) + log w_k, (B, N, 2)
    diff = values[:, :, None] - means[:, None, :]
    log_norm = -0.5 * (math.log(2 * math.pi) + variances.log())
    return log_norm[:, None, :] - 0.5 * diff**2 / variances[:, None, :] + weights.log()[:, None, :]


def _log_resp(values, means, variances, weights):
    weighted = _log_prob(values, means, variances, weights)
    return weighted - weighted.logsumexp(dim=2, keepdim=True)


def _fit(values, fit, count, max_iter, tol, reg_covar):
    """Means, variances and weights (each (B, 2)) of every image's fit set, as scikit-learn fits them."""
    centers = _kmeans_plusplus(values, fit, count)
    labels = _lloyd(values, fit, count, centers)
    n = count.clamp(min=1).double()
    nk, means, variances = _m_step(values, fit, torch.nn.functional.one_hot(labels, 2).double(), reg_covar)
    weights = nk / n[:, None]
    lower_bound = torch.full_like(n, -math.inf)
    done = ~(count > 0)
    for _ in range(max_iter):
        weighted = _log_prob(values, means, variances, weights)
        log_prob_norm = weighted.logsumexp(dim=2, keepdim=True)
        resp = (weighted - log_prob_norm).exp()
        new_bound = torch.where(fit, log_prob_norm[..., 0], 0.0).sum(dim=1) / n
        nk, new_means, new_variances = _m_step(values, fit, resp, reg_covar)
        keep = done[:, None]
        means = torch.where(keep, means, new_means)
        variances = torch.where(keep, variances, new_variances)
        weights = torch.where(keep, weights, nk / nk.sum(dim=1, keepdim=True))
        done = done | ((new_bound - lower_bound).abs() < tol)
        lower_bound = new_bound
        if bool(done.all()):
            break
    return means, variances, weights
