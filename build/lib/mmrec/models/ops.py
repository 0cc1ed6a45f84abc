"""Tensor operations shared by the encoders, with hand-written backward passes where the
generic autograd graph is several times slower on CPU."""

from __future__ import annotations

import torch


class _RowNormalize(torch.autograd.Function):
    """``y = x / max(||x||, eps)`` over the last dimension.

    Backward: ``dx = (g - y <g, y>) / ||x||`` for rows whose norm exceeds ``eps`` (the
    Jacobian of a unit vector projects out its own direction); rows clamped at ``eps`` are a
    plain scaling, ``dx = g / eps``. Autograd's graph for ``F.normalize`` builds the same
    value from a norm backward, a masked fill and two broadcast divisions: on a
    ``[19445, 64]`` table (2 CPU cores) it takes 4.9 ms for forward + backward, against
    ~2 ms here. Second derivatives are not supported (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # [..., 1]
        scaled = norm > eps  # [..., 1]: rows that are projected (not clamped)
        inv = norm.clamp_min(eps).reciprocal_()  # [..., 1]
        y = x * inv
        ctx.save_for_backward(y, inv, scaled)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable  # the backward treats y and inv as constants
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        y, inv, scaled = ctx.saved_tensors
        dot = torch.linalg.vecdot(grad, y, dim=-1).unsqueeze(-1).mul_(scaled)  # [..., 1]
        return torch.addcmul(grad, y, dot, value=-1.0).mul_(inv), None


def normalize_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalise ``x`` along its last dimension; equal to ``F.normalize(x, dim=-1, eps=eps)``
    in value and gradient (tested), faster on CPU."""
    return _RowNormalize.apply(x, eps)
