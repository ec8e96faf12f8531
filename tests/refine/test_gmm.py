"""DuPL's noise filter: the batched torch fit agrees with scikit-learn's GaussianMixture image by image.

scikit-learn is a test dependency only (the ``dev`` extra); the reference below is DuPL's procedure
written against scikit-learn's public API, image by image.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mcc.refine import gmm_noise_filter
from mcc.refine.gmm import _UNIFORMS, _kmeans_plusplus, _lloyd

cuda = pytest.mark.cuda


def sklearn_filter(loss, label, min_loss=0.1, min_pixels=1000, gap=1.0, prob=0.95, ignore=255):
    """(filtered label, per-image decision) with scikit-learn's GaussianMixture, image by image."""
    mixture = pytest.importorskip("sklearn.mixture")
    out = label.clone()
    decisions = []
    for i in range(len(loss)):
        foreground = (label[i] != 0) & (label[i] != ignore)
        values = loss[i][foreground]
        values = values[values > min_loss]
        acted = False
        if len(values) > min_pixels:
            gmm = mixture.GaussianMixture(
                n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "did not converge" after 10 iterations
                gmm.fit(values[:, None].numpy())
            if abs(gmm.means_[0, 0] - gmm.means_[1, 0]) > gap:
                posterior = gmm.predict_proba(loss[i].reshape(-1, 1).numpy())[:, gmm.means_.argmax()]
                drop = torch.from_numpy(posterior > prob).reshape(loss.shape[1:]) & (label[i] != 0)
                out[i][drop] = ignore
                acted = True
        decisions.append(acted)
    return out, decisions


def random_batch(rng: np.random.RandomState, batch: int, height: int, width: int):
    """Labels with background, ignore and 3 classes; losses of one mode, or a low and a high mode."""
    label = torch.from_numpy(rng.randint(0, 4, size=(batch, height, width)))
    label[torch.from_numpy(rng.rand(batch, height, width) < 0.1)] = 255
    loss = np.zeros((batch, height, width), np.float32)
    for i in range(batch):
        low = rng.gamma(rng.uniform(0.5, 3), rng.uniform(0.05, 0.5), size=(height, width))
        if rng.rand() < 0.3:
            loss[i] = low * rng.uniform(1, 6)  # one mode: mostly no decision
        else:
            high = np.abs(rng.normal(rng.uniform(0.5, 4), rng.uniform(0.2, 1.5), size=(height, width)))
            loss[i] = np.where(rng.rand(height, width) < rng.uniform(0.05, 0.5), high, low)
    loss = torch.from_numpy(loss)
    loss[label == 255] = 0  # what cross_entropy(..., reduction="none") gives on ignored pixels
    return loss, label


def agreement(ours, reference, label):
    """Per image: the fraction of foreground pixels on which the two filtered labels agree."""
    fractions = []
    for i in range(len(label)):
        foreground = (label[i] != 0) & (label[i] != 255)
        fractions.append(float((ours[i][foreground] == reference[i][foreground]).float().mean()))
    return fractions


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_sklearn(seed):
    rng = np.random.RandomState(seed)
    loss, label = random_batch(rng, 6, 70, 90)
    ours = gmm_noise_filter(loss, label)
    reference, decisions = sklearn_filter(loss, label)
    assert [bool((ours[i] != label[i]).any()) for i in range(6)] == decisions
    assert any(decisions)
    assert min(agreement(ours, reference, label)) >= 0.995


@pytest.mark.slow
def test_agrees_with_sklearn_on_many_images():
    # 200 images of random sizes: identical decisions, >= 99.5 % of each image's foreground pixels
    rng = np.random.RandomState(123)
    decisions_equal, fractions, acted = 0, [], 0
    for _ in range(50):
        loss, label = random_batch(rng, 4, rng.randint(40, 160), rng.randint(40, 160))
        ours = gmm_noise_filter(loss, label)
        reference, decisions = sklearn_filter(loss, label)
        decisions_equal += sum(bool((ours[i] != label[i]).any()) == d for i, d in enumerate(decisions))
        acted += sum(decisions)
        fractions += agreement(ours, reference, label)
    assert decisions_equal == 200 and acted > 50
    assert min(fractions) >= 0.995
    assert np.mean(fractions) > 0.9999


def test_kmeans_init_is_sklearns():
    cluster = pytest.importorskip("sklearn.cluster")
    rng = np.random.RandomState(7)
    for trial in range(20):
        n = rng.randint(50, 3000)
        data = np.concatenate([rng.gamma(2, 0.2, n), rng.normal(3, 1, n // rng.randint(2, 6))]).astype(
            np.float32
        )
        data = data[rng.permutation(len(data))]
        values = torch.from_numpy(data).double()[None]
        fit = torch.ones_like(values, dtype=torch.bool)
        count = torch.tensor([len(data)])
        labels = _lloyd(values, fit, count, _kmeans_plusplus(values, fit, count))[0].numpy()
        reference = cluster.KMeans(2, n_init=1, random_state=0).fit(data[:, None]).labels_
        assert (labels == reference).mean() > 0.999, trial


@pytest.mark.parametrize("n", [1, 2, 3, 1001, 4096, 12345, 200704])
def test_first_centre_is_numpys_choice(n):
    # numpy's RandomState(0).choice(n, p=uniform) is searchsorted(cumsum(p), u, "right") = floor(u n)
    weights = np.ones(n, dtype=np.float32)
    expected = np.random.RandomState(0).choice(n, p=weights / weights.sum())
    assert int(np.floor(_UNIFORMS[0] * n)) == expected


def test_a_clear_high_mode_is_dropped():
    generator = torch.Generator().manual_seed(0)
    loss = torch.cat([torch.full((1, 40, 50), 0.3), torch.full((1, 10, 50), 3.0)], dim=1)
    loss = loss + 0.05 * torch.randn(1, 50, 50, generator=generator)
    label = torch.ones(1, 50, 50, dtype=torch.long)
    label[0, 0, :5] = 0  # background with a low loss: stays
    label[0, -1, :5] = 0  # background with a high loss: stays
    label[0, -2, :5] = 255  # ignored: stays ignored
    filtered = gmm_noise_filter(loss, label)
    expected = label.clone()
    expected[0, 40:][label[0, 40:] == 1] = 255
    assert torch.equal(filtered, expected)
    assert filtered.data_ptr() != label.data_ptr()


def test_no_fit_below_min_pixels_or_with_close_means():
    loss = torch.cat([torch.full((1, 20, 20), 0.3), torch.full((1, 20, 20), 3.0)], dim=1)
    loss = loss + 0.05 * torch.randn(1, 40, 20, generator=torch.Generator().manual_seed(1))
    label = torch.full((1, 40, 20), 2)
    assert torch.equal(gmm_noise_filter(loss, label, min_pixels=800), label)  # exactly 800: not more
    assert not torch.equal(gmm_noise_filter(loss, label, min_pixels=799), label)
    assert torch.equal(gmm_noise_filter(loss, label, min_pixels=10, min_mean_gap=3.0), label)


def test_batched_equals_one_image_at_a_time():
    loss, label = random_batch(np.random.RandomState(5), 5, 48, 64)
    batched = gmm_noise_filter(loss, label, min_pixels=200)
    for i in range(5):
        assert torch.equal(
            batched[i : i + 1], gmm_noise_filter(loss[i : i + 1], label[i : i + 1], min_pixels=200)
        )


def test_dtypes_and_no_gradient():
    loss, label = random_batch(np.random.RandomState(2), 2, 40, 40)
    out = gmm_noise_filter(loss.clone().requires_grad_(), label.int(), min_pixels=100)
    assert out.dtype == torch.int32 and not out.requires_grad
    assert torch.equal(out.long(), gmm_noise_filter(loss, label, min_pixels=100))
    assert not torch.equal(out.long(), label)  # the filter acted
    half = gmm_noise_filter(loss.half(), label, min_pixels=100)  # fitted in float64 from any float dtype
    assert half.dtype == torch.long


@pytest.mark.parametrize(
    ("loss", "label", "kwargs", "match"),
    [
        (torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.long), {}, "pixel_loss"),
        (torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.long), {}, "pixel_loss"),
        (torch.zeros(2, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long), {}, "label"),
        (torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), {}, "label"),
        (torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), {"prob_thre": 1.5}, "prob_thre"),
        (torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), {"max_iter": 0}, "max_iter"),
        (torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), {"min_pixels": -1}, "min_pixels"),
    ],
)
def test_bad_input_is_named(loss, label, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gmm_noise_filter(loss, label, **kwargs)


@cuda
def test_cuda_equals_cpu():
    loss, label = random_batch(np.random.RandomState(3), 4, 96, 96)
    cpu = gmm_noise_filter(loss, label)
    gpu = gmm_noise_filter(loss.cuda(), label.cuda())
    assert gpu.device.type == "cuda"
    for i in range(4):
        assert bool((gpu[i].cpu() != label[i]).any()) == bool((cpu[i] != label[i]).any())
    assert min(agreement(gpu.cpu(), cpu, label)) >= 0.999
