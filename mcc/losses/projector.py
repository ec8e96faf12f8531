"""Student/teacher projection heads of masked collaborative contrast (paper Sec. III-C)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["MomentumProjector"]

# name of the weight-norm magnitude g inside a head; fixed at 1, never trained nor averaged
_MAGNITUDE = "last_layer.parametrizations.weight.original0"


class _ProjectionHead(nn.Module):
    """MLP -> L2 normalise -> weight-normalised linear layer with unit-norm rows (a DINO-style head)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(d_in, d_out))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        # w = g * v / ||v|| with g = 1: every output is a cosine between the input and a prototype
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), p=2, dim=-1)
        return self.last_layer(x)


class MomentumProjector(nn.Module):
    """Local (student) projector and its momentum-averaged global (teacher) copy (paper Sec. III-C).

    Both heads are ``Linear(in_dim, hidden_dim) - GELU - ... - Linear(hidden_dim, bottleneck_dim)``
    (``num_layers`` linear layers), L2 normalisation, then a weight-normalised
    ``Linear(bottleneck_dim, out_dim, bias=False)`` whose magnitude is fixed at 1 (not trainable), using
    :func:`torch.nn.utils.parametrizations.weight_norm`. The teacher starts as an exact copy of the
    student and then follows it by the MoCo update ``theta_g <- m * theta_g + (1 - m) * theta_l``
    (:meth:`update_teacher`, parameter-wise, on the un-parametrised tensors).

    The teacher is a submodule (``self.teacher``) whose parameters have ``requires_grad=False``: it moves
    with ``.to()``, is saved in the state dict and broadcast by DDP, but never receives gradient. Give
    the optimiser :meth:`student_parameters` (or ``self.student.parameters()``); ``self.parameters()``
    also yields the frozen teacher, which an optimiser would simply never update. Every process applies
    the same update to the same student, so DDP replicas of the teacher stay in sync.

    Args:
        in_dim: dimension of the class tokens, D.
        out_dim: dimension of the projected space.
        hidden_dim: width of the hidden MLP layers.
        bottleneck_dim: dimension before the weight-normalised layer.
        num_layers: number of linear layers of the MLP (>= 1).
        momentum: EMA momentum m in [0, 1] (1 = teacher frozen, 0 = teacher = student).

    Shapes:
        x: (..., in_dim) -> (..., out_dim), e.g. (B, S, D) -> (B, S, out_dim).

    Example:
        >>> proj = MomentumProjector(64, out_dim=32, hidden_dim=128, bottleneck_dim=16)
        >>> optimizer = torch.optim.AdamW(proj.student_parameters(), lr=1e-3)
        >>> proj.update_teacher()              # once per step, before the teacher is used
        >>> q = proj.forward_teacher(torch.randn(2, 2, 64))   # (2, 2, 32), no grad
        >>> k = proj(torch.randn(2, 10, 64))                  # (2, 10, 32)
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 1024,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        momentum: float = 0.9,
    ):
        super().__init__()
        for name, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
            ("num_layers", num_layers),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.student = _ProjectionHead(in_dim, out_dim, hidden_dim, bottleneck_dim, num_layers)
        self.teacher = _ProjectionHead(in_dim, out_dim, hidden_dim, bottleneck_dim, num_layers)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)

    def student_parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters (the student's, without the fixed weight-norm magnitude)."""
        return (p for p in self.student.parameters() if p.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project with the student (local projector), shape (..., in_dim) -> (..., out_dim)."""
        return self.student(x)

    @torch.no_grad()
    def forward_teacher(self, x: torch.Tensor) -> torch.Tensor:
        """Project with the teacher (global projector), without gradient, (..., in_dim) -> (..., out_dim)."""
        return self.teacher(x)

    @torch.no_grad()
    def update_teacher(self) -> None:
        """Moving average ``teacher <- m * teacher + (1 - m) * student``, parameter by parameter."""
        m = self.momentum
        student = dict(self.student.named_parameters())
        for name, teacher_param in self.teacher.named_parameters():
            if name == _MAGNITUDE:  # 1 in both heads by construction
                continue
            teacher_param.mul_(m).add_(student[name].detach(), alpha=1.0 - m)
        for teacher_buf, student_buf in zip(self.teacher.buffers(), self.student.buffers(), strict=True):
            teacher_buf.copy_(student_buf)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"
