import pytest
import torch
from energy_reference import brute_force_filter, reference_energy

import mcc
from mcc.losses import dense_energy_loss
from mcc.losses import energy as energy_module
from mcc.refine import bilateral_filter


@pytest.fixture
def exact_filter(monkeypatch):
    """Swap the lattice for the exact Gaussian, so value and gradient can be compared to the reference."""
    monkeypatch.setattr(energy_module, "_filter", brute_force_filter)


def _inputs(batch=2, classes=4, height=16, width=13, dtype=torch.float32, ignore=0.2):
    image = torch.rand(batch, 3, height, width, dtype=dtype) * 255
    # a smooth-ish image so that the colour term matters: two flat halves plus noise
    image[:, :, :, : width // 2] = image[:, :, :1, :1] + 10 * torch.rand(
        batch, 3, height, width // 2, dtype=dtype
    )
    logits = 3 * torch.randn(batch, classes, height, width, dtype=dtype)
    label = torch.randint(0, classes, (batch, height, width))
    label[torch.rand(batch, height, width) < ignore] = 255
    return image, logits.requires_grad_(True), label


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("height", "width", "scale_factor", "box"),
    [
        (16, 13, 0.5, [[2, 14, 1, 12], [0, 16, 3, 13]]),
        (16, 13, 0.5, None),
        (11, 9, 1.0, [[1, 10, 0, 7], [3, 11, 2, 9]]),
        (15, 14, 0.4, [[0, 15, 0, 14], [5, 9, 4, 13]]),
    ],
)
def test_value_and_gradient_match_reference(exact_filter, dtype, height, width, scale_factor, box):
    image, logits, label = _inputs(height=height, width=width, dtype=dtype)
    img_box = None if box is None else torch.tensor(box)
    kwargs = dict(weight=1e-3, sigma_rgb=15.0, sigma_xy=6.0, scale_factor=scale_factor)
    loss = dense_energy_loss(image, logits, label, img_box, **kwargs)
    loss.backward()
    value, grad = reference_energy(image, logits, label, img_box, **kwargs)
    assert loss.shape == () and loss.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert loss.detach().item() == pytest.approx(value, rel=tol)
    assert value < 0
    assert _relative(logits.grad.double(), grad) < (1e-4 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_with_the_lattice_matches_reference(dtype):
    # the real permutohedral filter on both sides, published sigmas
    image, logits, label = _inputs(height=32, width=30, dtype=dtype)
    img_box = torch.tensor([[0, 32, 2, 30], [4, 28, 0, 25]])
    loss = dense_energy_loss(image, logits, label, img_box)
    loss.backward()
    value, grad = reference_energy(image, logits, label, img_box, filter_fn=bilateral_filter)
    assert value < 0 and loss.dtype == dtype
    assert loss.detach().item() == pytest.approx(value, rel=1e-5)
    assert _relative(logits.grad.double(), grad) < 1e-4


def test_gradient_is_the_published_one_not_autograds(exact_filter):
    # the published backward drops the gate's dependence on p; autograd's derivative of the value differs
    image, logits, label = _inputs(dtype=torch.float64, ignore=0.0)
    kwargs = dict(weight=1.0, sigma_xy=6.0)
    dense_energy_loss(image, logits, label, **kwargs).backward()
    published = logits.grad.clone()

    exact_logits = logits.detach().clone().requires_grad_(True)
    prob = torch.nn.functional.interpolate(
        torch.softmax(exact_logits, 1), size=(8, 6), mode="bilinear", align_corners=False
    )
    small_image = torch.nn.functional.interpolate(image, size=(8, 6), mode="nearest")
    gate = (1 - prob.amax(1, keepdim=True)).clamp(min=0)
    value = -(prob * gate * brute_force_filter(small_image, prob, 15.0, 3.0)).sum() / 2
    value.backward()
    assert value.detach().item() == pytest.approx(
        dense_energy_loss(image, logits, label, **kwargs).detach().item(), rel=1e-12
    )
    assert _relative(published, exact_logits.grad) > 1e-2


def test_weight_scales_value_and_gradient(exact_filter):
    image, logits, label = _inputs(dtype=torch.float64)
    grads = []
    values = []
    for weight in (1e-7, 3e-7):
        logits.grad = None
        loss = dense_energy_loss(image, logits, label, weight=weight, sigma_xy=6.0)
        loss.backward()
        values.append(loss.detach().item())
        grads.append(logits.grad.clone())
    assert values[1] == pytest.approx(3 * values[0], rel=1e-12)
    torch.testing.assert_close(grads[1], 3 * grads[0])


def test_ignored_pixels_have_gate_one(exact_filter):
    # every pixel unlabelled: gate = 1 inside the box, so the loss is -w sum(S W S) / B
    image, logits, label = _inputs(dtype=torch.float64)
    label.fill_(255)
    loss = dense_energy_loss(image, logits, label, weight=1.0, sigma_xy=6.0)
    prob = torch.nn.functional.interpolate(
        torch.softmax(logits.detach(), 1), size=(8, 6), mode="bilinear", align_corners=False
    )
    small_image = image[:, :, ::2][:, :, :, [0, 2, 4, 6, 8, 10]]
    expected = -(prob * brute_force_filter(small_image, prob, 15.0, 3.0)).sum() / 2
    assert loss.detach().item() == pytest.approx(float(expected), rel=1e-12)
    # with a labelled map instead the gate is 1 - max p < 1, and the energy is smaller in magnitude
    label.fill_(1)
    labelled = dense_energy_loss(image, logits, label, weight=1.0, sigma_xy=6.0).detach().item()
    assert abs(labelled) < abs(loss.detach().item())


def test_custom_ignore_index(exact_filter):
    image, logits, label = _inputs(dtype=torch.float64)
    other = label.masked_fill(label == 255, 7)
    a = dense_energy_loss(image, logits, label, sigma_xy=6.0)
    b = dense_energy_loss(image, logits, other, sigma_xy=6.0, ignore_index=7)
    assert a.detach().item() == b.detach().item()


def test_outside_the_box_nothing_counts(exact_filter):
    # box edges on even pixels: at scale 0.5 no resize reaches across them
    image, logits, label = _inputs(height=16, width=14, dtype=torch.float64)
    img_box = torch.tensor([[2, 12, 4, 14], [0, 8, 0, 6]])
    loss = dense_energy_loss(image, logits, label, img_box, sigma_xy=6.0)
    loss.backward()
    inside = torch.zeros(2, 16, 14, dtype=torch.bool)
    for b, (y0, y1, x0, x1) in enumerate(img_box.tolist()):
        inside[b, y0:y1, x0:x1] = True
    assert bool((logits.grad.abs().sum(1)[~inside] == 0).all())
    assert bool((logits.grad.abs().sum(1)[inside] > 0).all())
    # image, logits and labels outside the box do not change the value
    image2 = torch.where(inside[:, None], image, torch.rand_like(image) * 255)
    logits2 = torch.where(inside[:, None], logits.detach(), torch.randn_like(logits))
    label2 = torch.where(inside, label, torch.randint_like(label, 0, 4))
    other = dense_energy_loss(image2, logits2, label2, img_box, sigma_xy=6.0)
    assert other.detach().item() == pytest.approx(loss.detach().item(), rel=1e-12)


def test_autocast_runs_the_filter_in_float32(exact_filter, monkeypatch):
    seen = []

    def recording_filter(image, values, sigma_rgb, sigma_xy):
        seen.append((image.dtype, values.dtype))
        return brute_force_filter(image, values, sigma_rgb, sigma_xy)

    monkeypatch.setattr(energy_module, "_filter", recording_filter)
    image, logits, label = _inputs()
    half = logits.detach().bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dense_energy_loss(image, half, label, sigma_xy=6.0)
    loss.backward()
    assert loss.dtype == torch.float32 and seen == [(torch.float32, torch.float32)]
    reference = dense_energy_loss(image, half.detach().float(), label, sigma_xy=6.0)
    assert loss.detach().item() == pytest.approx(float(reference), rel=1e-6)
    assert half.grad.dtype == torch.bfloat16 and torch.isfinite(half.grad.float()).all()


def test_exported():
    assert mcc.losses.dense_energy_loss is dense_energy_loss
    assert "dense_energy_loss" in mcc.losses.__all__


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (lambda a: a.update(image=a["image"][:, :2]), "image"),
        (lambda a: a.update(image=a["image"].long()), "image"),
        (lambda a: a.update(seg_logits=a["seg_logits"][0]), "seg_logits"),
        (lambda a: a.update(seg_logits=a["seg_logits"].long()), "seg_logits"),
        (lambda a: a.update(pseudo_label=a["pseudo_label"][:, :-1]), "pseudo_label"),
        (lambda a: a.update(pseudo_label=a["pseudo_label"].float()), "pseudo_label"),
        (lambda a: a.update(img_box=torch.tensor([[0, 8, 0, 8]])), "img_box"),
        (lambda a: a.update(img_box=torch.tensor([[0, 8, 0, 8], [0, 17, 0, 8]])), "img_box"),
        (lambda a: a.update(img_box=torch.tensor([[0, 8, 0, 8], [4, 4, 0, 8]])), "img_box"),
        (lambda a: a.update(img_box=torch.tensor([[0, 8, 0, 8], [0, 8, 6, 2]])), "img_box"),
        (lambda a: a.update(img_box=torch.tensor([[0.0, 8, 0, 8], [0, 8, 0, 8]])), "img_box"),
        (lambda a: a.update(img_box=[[0, 8, 0, 8], [0, 8, 0, 8]]), "img_box"),
        (lambda a: a.update(sigma_rgb=0.0), "sigma_rgb"),
        (lambda a: a.update(sigma_xy=-1.0), "sigma_xy"),
        (lambda a: a.update(scale_factor=0.01), "scale_factor"),
        (lambda a: a.update(weight=float("nan")), "weight"),
    ],
)
def test_bad_arguments(exact_filter, change, name):
    image, logits, label = _inputs(height=16, width=13)
    args = dict(image=image, seg_logits=logits, pseudo_label=label)
    change(args)
    with pytest.raises(ValueError, match=name):
        dense_energy_loss(**args)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    # the real lattice on both devices
    image, logits, label = _inputs(batch=2, classes=21, height=64, width=48)
    img_box = torch.tensor([[0, 64, 0, 40], [8, 60, 4, 48]])
    loss = dense_energy_loss(image, logits, label, img_box)
    loss.backward()
    cuda_logits = logits.detach().cuda().requires_grad_(True)
    cuda_loss = dense_energy_loss(image.cuda(), cuda_logits, label.cuda(), img_box.cuda())
    cuda_loss.backward()
    assert cuda_loss.device.type == "cuda" and cuda_loss.shape == ()
    assert cuda_loss.detach().item() == pytest.approx(loss.detach().item(), rel=1e-4)
    assert _relative(cuda_logits.grad.cpu(), logits.grad) < 1e-3
    with torch.autocast("cuda", dtype=torch.bfloat16):
        amp_loss = dense_energy_loss(image.cuda(), cuda_logits.bfloat16(), label.cuda(), img_box.cuda())
    assert amp_loss.dtype == torch.float32 and torch.isfinite(amp_loss)
