import importlib.util
import sys

import numpy as np
import pytest

from mcc.refine import DenseCRF

# CI installs the extra, so these run there; only the ImportError test runs without it.
needs_crf = pytest.mark.skipif(importlib.util.find_spec("pydensecrf") is None, reason="needs the crf extra")


def noisy_two_regions(seed=0, height=40, width=60, flip=0.3):
    """Dark left / bright right image, and class probabilities that are wrong on ``flip`` of the pixels."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[:, : width // 2] = (30, 40, 50)
    image[:, width // 2 :] = (220, 200, 180)
    truth = np.zeros((height, width), np.int64)
    truth[:, width // 2 :] = 1
    noisy = np.where(rng.random((height, width)) < flip, 1 - truth, truth)
    probs = np.where(noisy[None] == np.arange(2)[:, None, None], 0.65, 0.35)
    return image, probs, truth


@needs_crf
def test_cleans_up_a_noisy_two_region_image():
    image, probs, truth = noisy_two_regions()
    assert 0.6 < (probs.argmax(0) == truth).mean() < 0.8
    marginals = DenseCRF()(image, probs)
    assert marginals.shape == probs.shape and marginals.dtype == np.float32
    np.testing.assert_allclose(marginals.sum(0), 1.0, atol=1e-5)
    assert (marginals.argmax(0) == truth).mean() > 0.99


@needs_crf
def test_published_defaults():
    crf = DenseCRF()
    assert (crf.iter_max, crf.pos_xy_std, crf.pos_w, crf.bi_xy_std, crf.bi_rgb_std, crf.bi_w) == (
        10,
        1,
        1,
        121,
        5,
        4,
    )
    assert (crf.unary, crf.kernel, crf.normalization) == ("softmax", "diag", "symmetric")


@needs_crf
def test_zero_iterations_return_the_unary_softmax():
    image, probs, _ = noisy_two_regions()
    np.testing.assert_allclose(DenseCRF()(image, probs, iter_max=0), probs, atol=1e-6)
    np.testing.assert_allclose(DenseCRF(iter_max=0)(image, probs), probs, atol=1e-6)


@needs_crf
def test_unary_forms_agree():
    image, probs, _ = noisy_two_regions()
    logits = np.log(probs) + 3.0  # any shift: softmax(logits) == probs
    expected = DenseCRF()(image, probs)
    np.testing.assert_allclose(DenseCRF(unary="logits")(image, logits), expected, atol=1e-5)
    np.testing.assert_allclose(DenseCRF(unary="energy")(image, -np.log(probs)), expected, atol=1e-5)


@needs_crf
def test_more_iterations_and_other_kernels_run():
    image, probs, truth = noisy_two_regions(seed=1)
    for crf in (DenseCRF(iter_max=20), DenseCRF(kernel="full", normalization="before")):
        marginals = crf(image, probs)
        np.testing.assert_allclose(marginals.sum(0), 1.0, atol=1e-5)
        assert (marginals.argmax(0) == truth).mean() > 0.95


@needs_crf
@pytest.mark.parametrize(
    "image, probs, match",
    [
        (np.zeros((4, 5, 3), np.float32), np.full((2, 4, 5), 0.5), "image"),
        (np.zeros((4, 5), np.uint8), np.full((2, 4, 5), 0.5), "image"),
        (np.zeros((4, 5, 3), np.uint8), np.full((2, 5, 4), 0.5), "probs"),
        (np.zeros((4, 5, 3), np.uint8), np.full((4, 5), 0.5), "probs"),
    ],
)
def test_bad_input_raises(image, probs, match):
    with pytest.raises(ValueError, match=match):
        DenseCRF()(image, probs)


@needs_crf
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"iter_max": -1}, "iter_max"),
        ({"bi_xy_std": 0}, "bi_xy_std"),
        ({"unary": "probs"}, "unary"),
        ({"kernel": "round"}, "kernel"),
        ({"normalization": "l2"}, "normalization"),
        ({"clip": 0.0}, "clip"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DenseCRF(**kwargs)


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ImportError, match=r'pip install "mcc-wsss\[crf\]"'):
        DenseCRF()


@pytest.mark.skipif(importlib.util.find_spec("pydensecrf") is None, reason="needs the crf extra")
def test_matches_the_usual_pydensecrf_recipe_exactly():
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 17, 3), dtype=np.uint8)
    probs = rng.random((4, 20, 17)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    crf = dcrf.DenseCRF2D(17, 20, 4)
    crf.setUnaryEnergy(unary_from_softmax(probs))
    crf.addPairwiseGaussian(sxy=1, compat=1)
    crf.addPairwiseBilateral(sxy=121, srgb=5, rgbim=np.ascontiguousarray(image), compat=4)
    expected = np.array(crf.inference(10)).reshape(4, 20, 17)
    np.testing.assert_array_equal(DenseCRF()(image, probs), expected)
