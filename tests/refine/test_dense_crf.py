import importlib.util
import sys

import numpy as np
import pytest
import torch

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


# ---- the torch backend ---------------------------------------------------------------------------------


def voc_like_scene(seed=0, height=375, width=500, num_classes=21):
    """A synthetic photo (smooth background, 8 flat ellipses, noise) and smooth class probabilities that
    favour each ellipse's class (argmax right on about 70 % of the pixels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), np.float32) + rng.uniform(0, 255, 3)
    image += 40 * np.sin(xx / 37.0)[..., None] * rng.uniform(-1, 1, 3)
    label = np.zeros((height, width), np.int64)
    for _ in range(8):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(min(20, height / 6), height / 3), rng.uniform(min(20, width / 6), width / 3)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        image[inside] = rng.uniform(0, 255, 3)
        label[inside] = rng.integers(1, num_classes)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    coarse = torch.from_numpy(rng.normal(0, 2.0, (1, num_classes, height // 16 + 1, width // 16 + 1))).float()
    noise = torch.nn.functional.interpolate(
        coarse, size=(height, width), mode="bilinear", align_corners=False
    )[0]
    onehot = torch.nn.functional.one_hot(torch.from_numpy(label), num_classes).permute(2, 0, 1).float()
    return image, torch.softmax(noise + 1.5 * onehot, 0).numpy()


def test_torch_backend_needs_no_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    crf = DenseCRF(backend="torch", device="cpu")
    image, probs, truth = noisy_two_regions()
    marginals = crf(image, probs)
    assert marginals.shape == probs.shape and marginals.dtype == np.float32
    np.testing.assert_allclose(marginals.sum(0), 1.0, atol=1e-5)
    assert (marginals.argmax(0) == truth).mean() > 0.99
    assert "backend='torch'" in repr(crf)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"backend": "cuda"}, "backend"), ({"device": "gpu0"}, "device")]
)
def test_torch_backend_bad_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DenseCRF(**{"backend": "torch", **kwargs})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_torch_backend_without_cuda_says_so():
    with pytest.raises(ValueError, match="device"):
        DenseCRF(backend="torch", device="cuda")


def test_torch_backend_zero_iterations_return_the_unary_softmax():
    image, probs, _ = noisy_two_regions()
    np.testing.assert_allclose(
        DenseCRF(backend="torch", device="cpu")(image, probs, iter_max=0), probs, atol=1e-6
    )
    logits = np.log(probs) + 3.0
    crf = DenseCRF(backend="torch", device="cpu", unary="logits", iter_max=0)
    np.testing.assert_allclose(crf(image, logits), probs, atol=1e-6)


@needs_crf
@pytest.mark.parametrize("normalization", ["symmetric", "none", "before", "after"])
@pytest.mark.parametrize("unary", ["softmax", "logits"])
def test_torch_backend_matches_pydensecrf(normalization, unary):
    image, probs = voc_like_scene(seed=1, height=45, width=62, num_classes=5)
    scores = np.log(probs) if unary == "logits" else probs
    expected = DenseCRF(normalization=normalization, unary=unary)(image, scores)
    marginals = DenseCRF(normalization=normalization, unary=unary, backend="torch", device="cpu")(
        image, scores
    )
    assert (marginals.argmax(0) == expected.argmax(0)).all()
    # Measured: 5e-7 with a normalisation, 2.3e-5 without one (larger energies, same float32 rounding).
    assert np.abs(marginals - expected).max() < 1e-4


@needs_crf
@pytest.mark.slow
def test_torch_backend_matches_pydensecrf_on_a_voc_size_image():
    # Published parameters (10, 1, 1, 121, 5, 4), 375 x 500, 21 classes. Measured: the same label on
    # 100 % of the pixels, marginals within 3.6e-7 (max) and 3.6e-9 (mean).
    image, probs = voc_like_scene()
    expected = DenseCRF()(image, probs)
    marginals = DenseCRF(backend="torch", device="cpu")(image, probs)
    assert (expected.argmax(0) != probs.argmax(0)).mean() > 0.2  # the CRF does change the labels here
    assert (marginals.argmax(0) == expected.argmax(0)).mean() >= 0.995
    assert np.abs(marginals - expected).max() < 1e-4
    assert np.abs(marginals - expected).mean() < 1e-6


def _batch(seed=2, count=3, height=30, width=41, num_classes=4):
    scenes = [voc_like_scene(seed + i, height, width, num_classes) for i in range(count)]
    images = torch.from_numpy(np.stack([image for image, _ in scenes])).permute(0, 3, 1, 2).contiguous()
    probs = torch.from_numpy(np.stack([p for _, p in scenes]))
    return scenes, images, probs


def test_torch_backend_batch_equals_one_image_at_a_time():
    scenes, images, probs = _batch()
    crf = DenseCRF(backend="torch", device="cpu")
    batched = crf.inference(images, probs)
    assert batched.shape == probs.shape and batched.dtype == torch.float32
    for (image, p), marginals in zip(scenes, batched):
        np.testing.assert_allclose(marginals.numpy(), crf(image, p), rtol=0, atol=1e-6)


@needs_crf
def test_pydensecrf_backend_has_the_batched_method_too():
    scenes, images, probs = _batch(count=2)
    crf = DenseCRF()
    batched = crf.inference(images, probs, iter_max=5)
    for (image, p), marginals in zip(scenes, batched):
        np.testing.assert_array_equal(marginals.numpy(), crf(image, p, iter_max=5))


@pytest.mark.parametrize(
    ("images", "probs", "match"),
    [
        (torch.zeros(1, 3, 4, 5), torch.rand(1, 2, 4, 5), "uint8"),
        (torch.zeros(1, 4, 5, 3, dtype=torch.uint8), torch.rand(1, 2, 4, 5), "images"),
        (torch.zeros(1, 3, 4, 5, dtype=torch.uint8), torch.rand(2, 2, 4, 5), "probs"),
        (torch.zeros(1, 3, 4, 5, dtype=torch.uint8), torch.rand(1, 2, 5, 4), "probs"),
        (torch.zeros(1, 3, 4, 5, dtype=torch.uint8), torch.ones(1, 2, 4, 5, dtype=torch.long), "probs"),
    ],
)
def test_torch_backend_bad_tensors_raise(images, probs, match):
    with pytest.raises(ValueError, match=match):
        DenseCRF(backend="torch", device="cpu").inference(images, probs)


@pytest.mark.cuda
def test_torch_backend_on_cuda_matches_the_cpu():
    _, images, probs = _batch(count=2, height=60, width=80, num_classes=6)
    crf = DenseCRF(backend="torch", device="cuda")
    on_gpu = crf.inference(images.cuda(), probs.cuda())
    assert on_gpu.device.type == "cuda"
    on_cpu = DenseCRF(backend="torch", device="cpu").inference(images, probs)
    assert (on_gpu.argmax(1).cpu() == on_cpu.argmax(1)).float().mean() > 0.999
    assert (on_gpu.cpu() - on_cpu).abs().max() < 1e-4


def test_torch_backend_fused_spatial_products_agree_with_the_lattice_filter():
    # On the CPU the spatial kernel runs as 3 sparse products (blurs folded into splat and slice); the
    # lattice's own 5-step filter (the CUDA path) is its twin.
    image, probs = voc_like_scene(seed=3, height=47, width=59, num_classes=6)
    crf = DenseCRF(backend="torch", device="cpu")
    fused = crf(image, probs)
    ((key, (lattice, products)),) = crf._gaussian_cache.items()
    assert products is not None and len(products) == 3
    crf._gaussian_cache[key] = lattice, None
    plain = crf(image, probs)
    assert not np.array_equal(fused, plain)
    assert (fused.argmax(0) == plain.argmax(0)).all()
    assert np.abs(fused - plain).max() < 1e-6


def test_torch_backend_batched_computation_is_bit_identical_to_one_image_at_a_time():
    # The CUDA path: one computation for the batch (the spatial lattice shared, one bilateral lattice for
    # all images, no loop over images), run here on the CPU, which otherwise goes image by image.
    _, images, probs = _batch(count=3)
    crf = DenseCRF(backend="torch", device="cpu")
    batched = crf._torch_batched(images, probs, 10)
    assert torch.equal(batched, crf.inference(images, probs))
    for i in range(3):
        assert torch.equal(batched[i : i + 1], crf.inference(images[i : i + 1], probs[i : i + 1]))


def test_torch_backend_under_bf16_autocast_gives_the_float32_result():
    # Evaluation opens autocast and then calls the CRF: the lattice runs in float32 regardless.
    _, images, probs = _batch(count=2)
    crf = DenseCRF(backend="torch", device="cpu")
    expected = crf.inference(images, probs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        marginals = crf.inference(images, probs)
        from_bf16 = crf.inference(images, probs.bfloat16())
    assert marginals.dtype == torch.float32 and torch.equal(marginals, expected)
    assert from_bf16.dtype == torch.float32
    assert torch.equal(from_bf16, crf.inference(images, probs.bfloat16().float()))


def test_torch_backend_reuses_the_spatial_lattice_and_its_buffers_safely():
    scenes, images, probs = _batch(count=2)
    crf = DenseCRF(backend="torch", device="cpu")
    first = crf.inference(images, probs)
    again = crf.inference(images, probs)
    assert torch.equal(first, again) and first.data_ptr() != again.data_ptr()
    other = crf.inference(images[:, :, :20, :25].contiguous(), probs[:, :, :20, :25].contiguous())
    fresh = DenseCRF(backend="torch", device="cpu")
    assert torch.equal(other, fresh.inference(images[:, :, :20, :25].contiguous(), probs[:, :, :20, :25]))
    assert torch.equal(crf.inference(images, probs), first)


def test_torch_backend_host_syncs_do_not_grow_with_the_iterations():
    # Budget: 2 per lattice set-up (key range + finiteness, number of points): the bilateral lattice of
    # each image (of the batch on CUDA), the spatial one the first time a size is seen; none per
    # mean-field iteration.
    from host_syncs import count_host_syncs

    _, images, probs = _batch(count=2)
    crf = DenseCRF(backend="torch", device="cpu")
    with count_host_syncs() as first_call:
        crf.inference(images, probs, iter_max=1)
    counts = []
    for steps in (1, 6):
        with count_host_syncs() as calls:
            crf.inference(images, probs, iter_max=steps)
        counts.append(sum(calls.values()))
    assert sum(first_call.values()) == 2 + 2 * 2
    assert counts == [2 * 2, 2 * 2]
    with count_host_syncs() as calls:
        crf._torch_batched(images, probs, 6)
    assert sum(calls.values()) == 2


@pytest.mark.cuda
def test_torch_backend_on_cuda_batch_equals_one_by_one_and_ignores_autocast():
    _, images, probs = _batch(count=3, height=60, width=80, num_classes=6)
    crf = DenseCRF(backend="torch", device="cuda")
    images, probs = images.cuda(), probs.cuda()
    batched = crf.inference(images, probs)
    for i in range(3):
        alone = crf.inference(images[i : i + 1], probs[i : i + 1])
        assert (alone - batched[i : i + 1]).abs().max() < 1e-6
    with torch.autocast("cuda", dtype=torch.bfloat16):
        under_autocast = crf.inference(images, probs)
    assert under_autocast.dtype == torch.float32
    assert (under_autocast - batched).abs().max() < 1e-6


@pytest.mark.cuda
def test_torch_backend_on_cuda_iterations_do_not_synchronize():
    import warnings

    _, images, probs = _batch(count=2, height=60, width=80, num_classes=6)
    crf = DenseCRF(backend="torch", device="cuda")
    images, probs = images.cuda(), probs.cuda()
    crf.inference(images, probs)
    counts = []
    for steps in (1, 6):
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                crf.inference(images, probs, iter_max=steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1]
