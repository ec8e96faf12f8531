import math

import pytest
import torch

from mcc.losses import mcc_infonce, positive_views

# ---------------------------------------------------------------- positive_views (Eq. 8-9)


def _positive_loop(cam, cls_label, key_mask, low, high, mu):
    b, c, h, w = cam.shape
    out = torch.zeros(key_mask.shape[:2], dtype=torch.bool)
    for k in range(b):
        scores = []
        for n in range(h * w):
            s = max(float(cam[k, j, n // w, n % w]) * float(cls_label[k, j]) for j in range(c))
            scores.append(2 if s >= high else 0 if s <= low else 1)
        for v in range(key_mask.shape[1]):
            kept = [n for n in range(h * w) if not key_mask[k, v, n]]
            out[k, v] = len(kept) > 0 and sum(scores[n] for n in kept) > mu * len(kept)
    return out


def test_positive_views_hand_computed():
    # one class, 1x4 tokens with scores 0.9 (Y=2), 0.5 (Y=1), 0.1 (Y=0), 0.25 (Y=0: <= low)
    cam = torch.tensor([[[[0.9, 0.5, 0.1, 0.25]]]])
    cls_label = torch.ones(1, 1)
    key_mask = torch.tensor(
        [
            [
                [False, True, True, True],  # keeps Y=2: 2 > 0.2 -> positive
                [True, False, True, True],  # keeps Y=1: 1 > 0.2 -> positive
                [True, True, False, False],  # keeps Y=0,0 -> negative
                [True, False, False, False],  # keeps 1,0,0: 1 > 0.6 -> positive
                [True, True, True, True],  # keeps nothing -> negative
            ]
        ]
    )
    out = positive_views(cam, cls_label, key_mask)
    assert out.dtype == torch.bool and out.shape == (1, 5)
    assert out.tolist() == [[True, True, False, True, False]]
    # mu = 1: the Y=1 view is exactly at the threshold (strict inequality) -> negative
    assert positive_views(cam, cls_label, key_mask, mu=1.0).tolist() == [[True, False, False, False, False]]


def test_positive_views_uses_only_present_classes():
    cam = torch.zeros(1, 2, 1, 2)
    cam[0, 1] = 1.0  # class 1 fully active but absent from the image label
    key_mask = torch.zeros(1, 1, 2, dtype=torch.bool)
    assert not positive_views(cam, torch.tensor([[1.0, 0.0]]), key_mask).any()
    assert positive_views(cam, torch.tensor([[0.0, 1.0]]), key_mask).all()


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
@pytest.mark.parametrize("params", [(0.25, 0.7, 0.2), (0.3, 0.6, 0.5)])
def test_positive_views_matches_loop(grid, params):
    h, w = grid
    cam = torch.rand(3, 4, h, w)
    cls_label = (torch.rand(3, 4) < 0.5).float()
    key_mask = torch.rand(3, 6, h * w) < 0.7
    key_mask[0, 0] = True
    out = positive_views(cam, cls_label, key_mask, *params)
    assert torch.equal(out, _positive_loop(cam, cls_label, key_mask, *params))


def test_positive_views_bf16_autocast():
    cam = torch.rand(2, 3, 4, 4)
    cls_label = torch.ones(2, 3)
    key_mask = torch.rand(2, 5, 16) < 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = positive_views(cam, cls_label, key_mask)
    assert torch.equal(out, positive_views(cam, cls_label, key_mask))


def test_positive_views_bad_input():
    cam, cls_label = torch.rand(2, 3, 4, 4), torch.ones(2, 3)
    key_mask = torch.zeros(2, 5, 16, dtype=torch.bool)
    with pytest.raises(ValueError, match="key_mask"):
        positive_views(cam, cls_label, key_mask.float())
    with pytest.raises(ValueError, match="key_mask"):
        positive_views(cam, cls_label, torch.zeros(2, 5, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_mask"):
        positive_views(cam, cls_label, torch.zeros(3, 5, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="cls_label"):
        positive_views(cam, torch.ones(2, 4), key_mask)
    with pytest.raises(ValueError, match="cam"):
        positive_views(cam[0], cls_label, key_mask)
    with pytest.raises(ValueError, match="low_thre"):
        positive_views(cam, cls_label, key_mask, low_thre=0.8, high_thre=0.7)


# ---------------------------------------------------------------- mcc_infonce (Eq. 10)


def _infonce_loop(teacher, student, positive, temperature=0.5, eps=1e-4, variant="reference"):
    teacher, student = teacher.double(), student.double()
    b, t_count, _ = teacher.shape
    s_count = student.shape[1]
    total, terms, per_image = 0.0, 0, []
    for k in range(b):
        pos = [s for s in range(s_count) if positive[k, s]]
        neg = [s for s in range(s_count) if not positive[k, s]]
        image_sum = 0.0
        for t in range(t_count):
            e = [math.exp(float(teacher[k, t] @ student[k, s]) / temperature) for s in range(s_count)]
            neg_sum = sum(e[n] for n in neg)
            for s in pos:
                term = -math.log(e[s] / (e[s] + neg_sum + eps))
                total, terms, image_sum = total + term, terms + 1, image_sum + term
            image_sum += math.log(1 + neg_sum + eps)
        per_image.append(image_sum / (t_count * (len(pos) + 1e-4)))
    if variant == "paper":
        return total / terms if terms else 0.0
    return sum(per_image) / b


def _random_case(b=3, t=2, s=7, d=8, scale=1.0):
    teacher = torch.nn.functional.normalize(torch.randn(b, t, d), dim=-1) * scale
    student = torch.nn.functional.normalize(torch.randn(b, s, d), dim=-1) * scale
    positive = torch.rand(b, s) < 0.5
    positive[:, :2] = True  # the global views, as in MCC
    return teacher, student, positive


@pytest.mark.parametrize("variant", ["paper", "reference"])
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_infonce_matches_loop(variant, scale):
    teacher, student, positive = _random_case(scale=scale)
    positive[1, :] = True  # an image without negatives
    positive[2, 2:] = False  # an image whose local views are all negative
    out = mcc_infonce(teacher, student, positive, variant=variant)
    assert out.dtype == torch.float32
    ref = _infonce_loop(teacher, student, positive, variant=variant)
    assert out.item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_infonce_matches_loop_float64_with_options(variant):
    teacher, student, positive = _random_case(b=2, t=3, s=5, d=4)
    teacher, student = teacher.double() * 3, student.double()
    out = mcc_infonce(teacher, student, positive, temperature=0.2, eps=1e-3, variant=variant)
    assert out.dtype == torch.float64
    ref = _infonce_loop(teacher, student, positive, temperature=0.2, eps=1e-3, variant=variant)
    assert out.item() == pytest.approx(ref, rel=1e-12)


def test_infonce_hand_computed():
    # one image, one teacher token q, students k+ (q.k = 1) and k- (q.k = 0), tau = 1
    teacher = torch.tensor([[[1.0, 0.0]]])
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    positive = torch.tensor([[True, False]])
    e = math.e
    nce = -math.log(e / (e + 1 + 1e-4))
    paper = mcc_infonce(teacher, student, positive, temperature=1.0, variant="paper")
    assert paper.item() == pytest.approx(nce)
    reference = mcc_infonce(teacher, student, positive, temperature=1.0)
    assert reference.item() == pytest.approx((nce + math.log(2 + 1e-4)) / (1 + 1e-4))


def test_infonce_reference_image_without_positives():
    teacher, student, _ = _random_case(b=2)
    positive = torch.zeros(2, 7, dtype=torch.bool)
    positive[0, :3] = True
    out = mcc_infonce(teacher, student, positive)
    assert torch.isfinite(out)
    assert out.item() == pytest.approx(_infonce_loop(teacher, student, positive), rel=1e-5)
    # the paper variant averages over the existing positive terms only; none at all gives 0
    assert mcc_infonce(teacher, student, torch.zeros_like(positive), variant="paper").item() == 0.0


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_infonce_large_similarities_do_not_overflow(variant):
    # q.k / tau up to 200: exp overflows float32, the log-sum-exp form does not
    teacher, student, positive = _random_case(b=2, d=4, scale=10.0)
    student.requires_grad_(True)
    out = mcc_infonce(teacher, student, positive, variant=variant)
    ref = _infonce_loop(teacher, student.detach(), positive, variant=variant)
    assert torch.isfinite(out) and out.item() == pytest.approx(ref, rel=1e-4)
    out.backward()
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_infonce_gradients_student_only(variant):
    teacher, student, positive = _random_case()
    teacher.requires_grad_(True)
    student.requires_grad_(True)
    mcc_infonce(teacher, student, positive, variant=variant).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_infonce_gradcheck(variant):
    teacher, student, positive = _random_case(b=2, t=2, s=4, d=3)
    positive[1] = True
    student = student.double().requires_grad_(True)
    teacher = teacher.double()
    assert torch.autograd.gradcheck(lambda k: mcc_infonce(teacher, k, positive, variant=variant), (student,))


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_infonce_bf16_autocast_close_to_float32(variant):
    teacher, student, positive = _random_case()
    ref = mcc_infonce(teacher, student, positive, variant=variant)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mcc_infonce(teacher.bfloat16(), student.bfloat16(), positive, variant=variant)
        out_fp32_inputs = mcc_infonce(teacher, student, positive, variant=variant)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), rel=2e-2)
    assert out_fp32_inputs.item() == pytest.approx(ref.item(), rel=1e-6)


def test_infonce_bad_input():
    teacher, student, positive = _random_case()
    with pytest.raises(ValueError, match="positive"):
        mcc_infonce(teacher, student, positive.long())
    with pytest.raises(ValueError, match="positive"):
        mcc_infonce(teacher, student, positive[:, :3])
    with pytest.raises(ValueError, match="student"):
        mcc_infonce(teacher, student[:2], positive[:2])
    with pytest.raises(ValueError, match="student"):
        mcc_infonce(teacher, student[..., :4], positive)
    with pytest.raises(ValueError, match="teacher"):
        mcc_infonce(teacher[0], student, positive)
    with pytest.raises(ValueError, match="variant"):
        mcc_infonce(teacher, student, positive, variant="moco")
    with pytest.raises(ValueError, match="temperature"):
        mcc_infonce(teacher, student, positive, temperature=0.0)
    with pytest.raises(ValueError, match="eps"):
        mcc_infonce(teacher, student, positive, eps=0.0)
