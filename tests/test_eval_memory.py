"""The final evaluation with top-k lists allocates nothing of size [users, items]: the largest
dense tensor of a pass is one scoring block (issue 28.1). Every aten op's dense outputs are
recorded while a pass runs (a TorchDispatchMode sees all of them, factory functions included)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmrec.core.interactions import InteractionMatrix
from mmrec.core.items import ItemSets
from mmrec.evaluation.evaluator import Evaluator, embedding_scorer

U, I, D, BLOCK = 3000, 2500, 48, 128


class _Largest(TorchDispatchMode):
    """The largest dense (strided) tensor any op returns inside the block, and the op."""

    def __init__(self):
        super().__init__()
        self.numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.numel() > self.numel:
                self.numel, self.op = t.numel(), func
        return out


def _evaluator(lists: str) -> tuple[Evaluator, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    def pairs(n):
        return torch.randint(0, U, (n,), generator=g), torch.randint(0, I - 100, (n,), generator=g)
    train_u, train_i = pairs(40_000)
    splits = {"train": InteractionMatrix(train_u, train_i, U, I), "valid": InteractionMatrix(*pairs(6000), U, I),
              "test": InteractionMatrix(*pairs(6000), U, I)}
    sets = ItemSets.from_training(train_i, I)
    content = torch.randn(I, D, generator=g)
    return (Evaluator(splits, sets, ks=[10, 20, 50], block=BLOCK, content=content, lists=lists),
            torch.randn(U, 16, generator=g), torch.randn(I, 16, generator=g))


def test_a_pass_with_lists_holds_no_users_by_items_tensor():
    evaluator, user_emb, item_emb = _evaluator("every")
    users = evaluator.users("test")
    probe = _Largest()
    with torch.no_grad(), probe:
        run = evaluator.start("test", embedding_scorer(user_emb, item_emb), lists=True, device=users.device)
        for begin in range(0, len(users), 1024):  # evaluation batches of 1,024 users, as the loaders give
            run.update(users[begin:begin + 1024])
        metrics = run.compute()
    assert "ild_content@20" in metrics and "coverage@50" in metrics
    assert probe.numel <= BLOCK * I, (probe.numel, probe.op)  # a scoring block, never [B, I] or [U, I]


def test_the_probe_sees_a_users_by_items_tensor():
    """Positive control: the probe catches a dense [U, I] score matrix."""
    _, user_emb, item_emb = _evaluator("never")
    probe = _Largest()
    with torch.no_grad(), probe:
        user_emb @ item_emb.T
    assert probe.numel == U * I
