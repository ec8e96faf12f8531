"""Token affinity learning (paper Sec. III-D, Eq. 11-12): pairwise labels and the affinity loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._utils import autocast_off, check_tensor, full_precision

__all__ = ["affinity_labels", "affinity_loss"]


def affinity_labels(token_label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pairwise affinity labels of a token-level pseudo label (paper Eq. 11-12).

    Two tokens have affinity 1 when they carry the same label and 0 when they differ. Pairs that
    involve an uncertain token (``ignore_index``) and the diagonal (a token with itself) are set to
    ``ignore_index`` so that :func:`affinity_loss` skips them.

    Args:
        token_label: pseudo label at token resolution, shape (B, h, w), integer; e.g. the output
            of ``cam_to_label`` with three-way thresholds.
        ignore_index: label of uncertain tokens, also written to ignored pairs.

    Returns:
        affinity labels, shape (B, N, N) with N = h*w, dtype long, values in {0, 1, ignore_index}.
        Token n is pixel ``(n // w, n % w)`` (row-major flattening, as ``tokens.flatten(2)``).

    Example:
        >>> aff = affinity_labels(torch.tensor([[[0, 1], [1, 255]]]))
        >>> aff[0]
        tensor([[255,   0,   0, 255],
                [  0, 255,   1, 255],
                [  0,   1, 255, 255],
                [255, 255, 255, 255]])
    """
    check_tensor("token_label", token_label, 3, integer=True)
    labels = token_label.flatten(1)  # (B, N)
    num_tokens = labels.shape[1]
    aff = (labels[:, :, None] == labels[:, None, :]).long()
    ignored = labels == ignore_index
    ignored_pair = ignored[:, :, None] | ignored[:, None, :]
    ignored_pair |= torch.eye(num_tokens, dtype=torch.bool, device=labels.device)
    return aff.masked_fill_(ignored_pair, ignore_index)


def affinity_loss(tokens: torch.Tensor, aff_label: torch.Tensor, absolute: bool = True) -> torch.Tensor:
    """Affinity loss between final patch tokens (paper Eq. 12, in the form of the published code).

    With ``c`` the cosine similarity of every token pair of an image (``|c|`` when ``absolute``),

    ``L = 0.5 * (1 - sum(c * pos) / (npos + 1)) + 0.5 * sum(c * neg) / (nneg + 1)``

    where ``pos``/``neg`` are the pairs labelled 1/0 and the sums and counts run over the whole batch
    (not a mean of per-image losses). The ``0.5`` weights and the ``+ 1`` in the counts are the
    published code's; pairs labelled anything else (``ignore_index``, the diagonal) are skipped. The
    published code takes the absolute cosine (``absolute=True``); ``absolute=False`` is the plain
    cosine of the paper's equation.

    Args:
        tokens: final patch tokens, shape (B, D, h, w).
        aff_label: pairwise labels from :func:`affinity_labels`, shape (B, N, N) with N = h*w.
        absolute: take the absolute value of the cosine similarity (published code) or not (paper).

    Returns:
        scalar loss tensor (float32, or float64 for float64 tokens).

    Example:
        >>> tokens = torch.randn(2, 16, 4, 4, requires_grad=True)
        >>> label = torch.randint(0, 3, (2, 4, 4))
        >>> loss = affinity_loss(tokens, affinity_labels(label))
        >>> loss.backward()
    """
    check_tensor("tokens", tokens, 4, floating=True)
    check_tensor("aff_label", aff_label, 3, integer=True)
    batch, _, height, width = tokens.shape
    num_tokens = height * width
    if aff_label.shape != (batch, num_tokens, num_tokens):
        raise ValueError(
            f"`aff_label` must have shape (B, h*w, h*w) = {(batch, num_tokens, num_tokens)} to match "
            f"`tokens` of shape {tuple(tokens.shape)}, got {tuple(aff_label.shape)}"
        )
    with autocast_off(tokens):
        x = F.normalize(full_precision(tokens).flatten(2), p=2, dim=1, eps=1e-8)  # (B, D, N)
        cos = x.transpose(1, 2) @ x  # (B, N, N)
        if absolute:
            cos = cos.abs()
        pos = aff_label == 1
        neg = aff_label == 0
        pos_term = (cos * pos).sum() / (pos.sum() + 1)
        neg_term = (cos * neg).sum() / (neg.sum() + 1)
        return 0.5 * (1 - pos_term) + 0.5 * neg_term
