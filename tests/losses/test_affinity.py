import pytest
import torch

from mcc.losses import affinity_labels, affinity_loss


def _labels_loop(token_label, ignore_index=255):
    b, h, w = token_label.shape
    flat = token_label.reshape(b, h * w).tolist()
    out = torch.empty(b, h * w, h * w, dtype=torch.long)
    for k in range(b):
        for i in range(h * w):
            for j in range(h * w):
                if i == j or flat[k][i] == ignore_index or flat[k][j] == ignore_index:
                    out[k, i, j] = ignore_index
                else:
                    out[k, i, j] = int(flat[k][i] == flat[k][j])
    return out


def _loss_loop(tokens, aff_label, absolute):
    tokens = tokens.double()
    b, d, h, w = tokens.shape
    x = tokens.reshape(b, d, h * w)
    pos_sum = neg_sum = 0.0
    npos = nneg = 0
    for k in range(b):
        for i in range(h * w):
            for j in range(h * w):
                a, c = x[k, :, i], x[k, :, j]
                cos = float(a @ c / (a.norm().clamp_min(1e-8) * c.norm().clamp_min(1e-8)))
                cos = abs(cos) if absolute else cos
                if aff_label[k, i, j] == 1:
                    pos_sum, npos = pos_sum + cos, npos + 1
                elif aff_label[k, i, j] == 0:
                    neg_sum, nneg = neg_sum + cos, nneg + 1
    return 0.5 * (1 - pos_sum / (npos + 1)) + 0.5 * neg_sum / (nneg + 1)


def test_affinity_labels_hand_computed():
    label = torch.tensor([[[0, 1], [1, 255]]])
    expected = torch.tensor(
        [[[255, 0, 0, 255], [0, 255, 1, 255], [0, 1, 255, 255], [255, 255, 255, 255]]], dtype=torch.long
    )
    out = affinity_labels(label)
    assert out.dtype == torch.long
    assert torch.equal(out, expected)


@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 5, 5), (3, 1, 7)])
@pytest.mark.parametrize("ignore_index", [255, -1])
def test_affinity_labels_matches_loop(shape, ignore_index):
    label = torch.randint(0, 3, shape)
    label[torch.rand(shape) < 0.3] = ignore_index
    assert torch.equal(affinity_labels(label, ignore_index=ignore_index), _labels_loop(label, ignore_index))


def test_affinity_loss_hand_computed():
    # tokens (B=1, D=2, 1x3): e_x, -e_x, e_y; labels 0, 0, 1 -> pos pairs (0,1),(1,0), neg the other 4
    tokens = torch.tensor([[[[1.0, -1.0, 0.0]], [[0.0, 0.0, 2.0]]]])
    aff = affinity_labels(torch.tensor([[[0, 0, 1]]]))
    # absolute: |cos| = 1 for the positives, 0 for the negatives
    assert affinity_loss(tokens, aff).item() == pytest.approx(0.5 * (1 - 2 / 3))
    # plain cosine: cos = -1 for the positives
    assert affinity_loss(tokens, aff, absolute=False).item() == pytest.approx(0.5 * (1 + 2 / 3))


@pytest.mark.parametrize("absolute", [True, False])
@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (3, 5, 2, 2)])
def test_affinity_loss_matches_loop(shape, absolute):
    b, _, h, w = shape
    tokens = torch.randn(shape)
    label = torch.randint(0, 3, (b, h, w))
    label[torch.rand(b, h, w) < 0.2] = 255
    aff = affinity_labels(label)
    out = affinity_loss(tokens, aff, absolute=absolute)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(_loss_loop(tokens, aff, absolute), abs=1e-6)


def test_affinity_loss_sums_over_batch_not_mean_of_images():
    tokens = torch.randn(2, 4, 2, 3)
    label = torch.randint(0, 2, (2, 2, 3))
    label[1] = 255  # second image contributes nothing, first image's counts are the batch's counts
    aff = affinity_labels(label)
    assert affinity_loss(tokens, aff).item() == pytest.approx(affinity_loss(tokens[:1], aff[:1]).item())
    label = torch.randint(0, 2, (2, 2, 3))
    aff = affinity_labels(label)
    per_image = (affinity_loss(tokens[:1], aff[:1]) + affinity_loss(tokens[1:], aff[1:])) / 2
    assert affinity_loss(tokens, aff).item() == pytest.approx(_loss_loop(tokens, aff, True), abs=1e-6)
    assert affinity_loss(tokens, aff).item() != pytest.approx(per_image.item(), abs=1e-6)


def test_affinity_loss_all_ignored_and_zero_tokens_finite():
    tokens = torch.zeros(1, 4, 2, 2, requires_grad=True)
    aff = affinity_labels(torch.full((1, 2, 2), 255))
    out = affinity_loss(tokens, aff)
    assert out.item() == pytest.approx(0.5)
    out.backward()
    assert torch.isfinite(tokens.grad).all()


@pytest.mark.parametrize("absolute", [True, False])
def test_affinity_loss_gradcheck(absolute):
    tokens = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    aff = affinity_labels(torch.tensor([[[0, 1], [1, 255]], [[2, 2], [0, 1]]]))
    assert torch.autograd.gradcheck(lambda t: affinity_loss(t, aff, absolute=absolute), (tokens,))


def test_affinity_loss_bf16_autocast_close_to_float32():
    tokens = torch.randn(2, 8, 4, 4)
    aff = affinity_labels(torch.randint(0, 3, (2, 4, 4)))
    ref = affinity_loss(tokens, aff)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = affinity_loss(tokens.bfloat16(), aff)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), abs=2e-2)


def test_affinity_bad_input():
    with pytest.raises(ValueError, match="token_label"):
        affinity_labels(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="token_label"):
        affinity_labels(torch.zeros(3, 3, dtype=torch.long))
    tokens = torch.randn(2, 4, 2, 3)
    with pytest.raises(ValueError, match="aff_label"):
        affinity_loss(tokens, torch.zeros(2, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="aff_label"):
        affinity_loss(tokens, torch.zeros(1, 6, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="aff_label"):
        affinity_loss(tokens, torch.zeros(2, 6, 6))
    with pytest.raises(ValueError, match="tokens"):
        affinity_loss(tokens.flatten(2), torch.zeros(2, 6, 6, dtype=torch.long))
