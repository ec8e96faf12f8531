"""Masked collaborative contrast (paper Sec. III-C, Eq. 8-10): positive local views and InfoNCE."""

from __future__ import annotations

import math

import torch

from ._utils import autocast_off, check_tensor, full_precision

__all__ = ["mcc_infonce", "positive_views"]

# The published code divides each image's sum by T * (|P| + 1e-4); kept for exact agreement.
_REFERENCE_COUNT_EPS = 1e-4


def positive_views(
    cam: torch.Tensor,
    cls_label: torch.Tensor,
    key_mask: torch.Tensor,
    low_thre: float = 0.25,
    high_thre: float = 0.7,
    mu: float = 0.2,
) -> torch.Tensor:
    """Decide which masked (local) views are positive (paper Eq. 8-9).

    Each token gets the discretised score ``Y't`` (Eq. 9): 2 where ``max_c(cam * cls_label) >= high_thre``
    (confident foreground), 0 where it is ``<= low_thre`` (confident background), else 1. A view is
    positive iff ``sum(Y't over kept tokens) > mu * (number of kept tokens)`` (Eq. 8); a view whose keys
    are all dropped is negative. ``low_thre``/``high_thre`` are the paper's beta_bg/beta_fg.

    Args:
        cam: class activation maps at token resolution, shape (B, C, h, w), values in [0, 1]
            (the paper uses the auxiliary CAM).
        cls_label: multi-hot image labels over foreground classes, shape (B, C). A zero row (no
            foreground class) scores 0 on every token, so all of that image's views are negative.
        key_mask: dropped keys of each view, shape (B, V, h*w), bool, True = dropped.
        low_thre: background threshold beta_bg.
        high_thre: foreground threshold beta_fg.
        mu: positiveness threshold on the mean token score of the kept tokens.

    Returns:
        positive views, shape (B, V), bool.

    Example:
        >>> cam = torch.rand(2, 20, 28, 28)
        >>> cls_label = torch.zeros(2, 20); cls_label[:, 3] = 1
        >>> key_mask = torch.rand(2, 8, 28 * 28) < 0.75
        >>> positive_views(cam, cls_label, key_mask).shape
        torch.Size([2, 8])
    """
    check_tensor("cam", cam, 4, floating=True)
    check_tensor("cls_label", cls_label, 2)
    check_tensor("key_mask", key_mask, 3, boolean=True)
    batch, num_classes, height, width = cam.shape
    if cls_label.shape != (batch, num_classes):
        raise ValueError(
            f"`cls_label` must have shape (B, C) = {(batch, num_classes)} to match `cam` of shape "
            f"{tuple(cam.shape)}, got {tuple(cls_label.shape)}"
        )
    if key_mask.shape[0] != batch or key_mask.shape[2] != height * width:
        raise ValueError(
            f"`key_mask` must have shape (B, V, h*w) = ({batch}, V, {height * width}) to match `cam` of "
            f"shape {tuple(cam.shape)}, got {tuple(key_mask.shape)}"
        )
    if not low_thre < high_thre:
        raise ValueError(f"`low_thre` must be smaller than `high_thre`, got {low_thre} and {high_thre}")

    with autocast_off(cam):
        cam = full_precision(cam)
        score = (cam * cls_label.to(cam.dtype)[:, :, None, None]).amax(1).flatten(1)  # (B, N)
        # Eq. 9 as integers so that the sums below are exact in any precision
        token_score = (score > low_thre).long() + (score >= high_thre).long()
        kept = ~key_mask
        kept_score = (kept * token_score[:, None, :]).sum(-1)  # (B, V)
        num_kept = kept.sum(-1)
        # float64 where the device has it, so that mu * n rounds like the same product in Python
        dtype = torch.float64 if cam.device.type in ("cpu", "cuda") else torch.float32
        return (kept_score.to(dtype) > mu * num_kept.to(dtype)) & (num_kept > 0)


def mcc_infonce(
    teacher: torch.Tensor,
    student: torch.Tensor,
    positive: torch.Tensor,
    temperature: float = 0.5,
    eps: float = 1e-4,
    variant: str = "reference",
) -> torch.Tensor:
    """InfoNCE between global (teacher) and local (student) projected class tokens (paper Eq. 10).

    With ``l_ts = q_t . k_s / temperature`` and ``e_ts = exp(l_ts)`` for teacher token ``q_t`` and student
    token ``k_s`` of the same image, ``P`` the positive and ``N`` the negative student tokens:

    * ``"paper"`` (Eq. 10): the mean, over every image, teacher token ``t`` and positive ``s``, of
      ``-log(e_ts / (e_ts + sum_{n in N} e_tn + eps))``. The mean runs over all these terms of the batch
      at once; a batch without positives gives 0.
    * ``"reference"`` (what the published code computes): per image
      ``1 / (T * (|P| + 1e-4)) * sum_t [sum_{s in P} -log(e_ts / (e_ts + sum_n e_tn + eps))
      + log(1 + sum_n e_tn + eps)]``, averaged over the batch. The extra ``log(1 + ...)`` term also
      pushes the negatives away from a teacher token when an image has no positive.

    Neither ``q`` nor ``k`` is normalised here (the projector's output is used as is). The teacher is
    detached. The terms are computed in log-sum-exp form, which is the same value without overflow for
    large similarities; internals run in float32 (float64 for float64 inputs), also under autocast.

    Args:
        teacher: projected global class tokens, shape (B, T, D); no gradient flows into it.
        student: projected class tokens of the student views, shape (B, S, D).
        positive: which student views are positive, shape (B, S), bool.
        temperature: softmax temperature tau.
        eps: the constant added to each denominator, for numerical stability.
        variant: ``"reference"`` (published code) or ``"paper"`` (Eq. 10).

    Returns:
        scalar loss tensor.

    Example:
        >>> teacher, student = torch.randn(2, 2, 64), torch.randn(2, 10, 64, requires_grad=True)
        >>> positive = torch.zeros(2, 10, dtype=torch.bool); positive[:, :2] = True
        >>> mcc_infonce(teacher, student, positive).backward()
    """
    check_tensor("teacher", teacher, 3, floating=True)
    check_tensor("student", student, 3, floating=True)
    check_tensor("positive", positive, 2, boolean=True)
    batch, num_teacher, dim = teacher.shape
    if student.shape[0] != batch or student.shape[2] != dim:
        raise ValueError(
            f"`student` must have shape (B, S, D) = ({batch}, S, {dim}) to match `teacher` of shape "
            f"{tuple(teacher.shape)}, got {tuple(student.shape)}"
        )
    if positive.shape != student.shape[:2]:
        raise ValueError(
            f"`positive` must have shape (B, S) = {tuple(student.shape[:2])} to match `student`, "
            f"got {tuple(positive.shape)}"
        )
    if variant not in ("paper", "reference"):
        raise ValueError(f"`variant` must be 'paper' or 'reference', got {variant!r}")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be positive, got {temperature}")
    if not eps > 0:
        raise ValueError(f"`eps` must be positive, got {eps}")

    with autocast_off(student):
        student = full_precision(student)
        teacher = full_precision(teacher.detach()).to(student.dtype)
        logits = torch.einsum("btd,bsd->bts", teacher, student) / temperature  # l_ts, (B, T, S)
        negative = ~positive[:, None, :]
        # log(sum_n e_tn + eps), always finite because of eps: (B, T, 1)
        log_eps = logits.new_full((batch, num_teacher, 1), math.log(eps))
        log_neg = torch.logsumexp(torch.cat([logits.masked_fill(~negative, -math.inf), log_eps], -1), -1)
        log_neg = log_neg[..., None]
        # -log(e_ts / (e_ts + sum_n e_tn + eps)) for every (t, s); only positive s are used
        nce = torch.logaddexp(logits, log_neg) - logits
        pos = positive[:, None, :].to(nce.dtype)
        if variant == "paper":
            return (nce * pos).sum() / (num_teacher * positive.sum()).clamp(min=1)
        # log(1 + sum_n e_tn + eps), per teacher token: (B, T)
        log_one_plus_neg = torch.logaddexp(torch.zeros_like(log_neg), log_neg)[..., 0]
        per_image = (nce * pos).sum((1, 2)) + log_one_plus_neg.sum(1)
        per_image = per_image / (num_teacher * (positive.sum(1).to(nce.dtype) + _REFERENCE_COUNT_EPS))
        return per_image.mean()
