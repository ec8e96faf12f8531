import pytest

from mcc.schedule import poly_warmup_lr


def test_first_step_is_base_times_ratio():
    assert poly_warmup_lr(0, 6e-5) == pytest.approx(6e-5 * 1e-6, rel=1e-6)


def test_warmup_is_linear_hand_computed():
    # halfway: 1 - 0.5 * (1 - 1e-6)
    assert poly_warmup_lr(750, 6e-5) == pytest.approx(6e-5 * (0.5 + 0.5e-6), rel=1e-12)
    assert poly_warmup_lr(5, 1.0, warmup_iters=10, warmup_ratio=0.1) == pytest.approx(0.55)
    lrs = [poly_warmup_lr(s, 1.0, warmup_iters=10, warmup_ratio=0.1) for s in range(10)]
    steps = [b - a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert all(d == pytest.approx(0.09) for d in steps)


@pytest.mark.parametrize("step", [0, 1, 749, 1499, 1500, 1501, 10000, 19999])
def test_matches_formula(step):
    base = 6e-4
    if step < 1500:
        expected = base * (1 - (1 - step / 1500) * (1 - 1e-6))
    else:
        expected = base * (1 - step / 20000) ** 0.9
    out = poly_warmup_lr(step, base)
    assert isinstance(out, float)
    assert out == pytest.approx(expected, rel=1e-12)


def test_poly_decay_hand_computed():
    assert poly_warmup_lr(10, 2.0, warmup_iters=0, max_iters=20, power=1.0) == pytest.approx(1.0)
    assert poly_warmup_lr(15, 1.0, warmup_iters=5, max_iters=20, power=2.0) == pytest.approx(0.0625)
    # the warm-up ends just below base_lr, poly decay takes over at warmup_iters
    assert poly_warmup_lr(1500, 1.0) == pytest.approx((1 - 1500 / 20000) ** 0.9)


@pytest.mark.parametrize("step", [20000, 20001, 10**6])
def test_zero_after_max_iters(step):
    assert poly_warmup_lr(step, 6e-5) == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="step"):
        poly_warmup_lr(-1, 1.0)
    with pytest.raises(ValueError, match="max_iters"):
        poly_warmup_lr(0, 1.0, max_iters=0)
    with pytest.raises(ValueError, match="warmup_iters"):
        poly_warmup_lr(0, 1.0, warmup_iters=-5)
