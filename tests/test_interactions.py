import numpy as np
import torch

from mmrec.core.interactions import InteractionMatrix


def _random_matrix(seed=0, users=30, items=40, nnz=200):
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, users, nnz), rng.integers(0, items, nnz)
    return InteractionMatrix(u, i, users, items), set(zip(u.tolist(), i.tolist()))


def test_gather_returns_each_users_items():
    m, pairs = _random_matrix()
    users = torch.tensor([3, 0, 17, 3])
    row, col = m.gather(users)
    got = {(int(users[r]), int(c)) for r, c in zip(row, col)}
    assert got == {p for p in pairs if p[0] in {3, 0, 17}}
    assert len(row) == sum(int(m.counts()[u]) for u in users)


def test_contains_matches_python_set():
    m, pairs = _random_matrix(1)
    u = torch.randint(0, 30, (500,))
    i = torch.randint(0, 40, (500,))
    expected = torch.tensor([(a, b) in pairs for a, b in zip(u.tolist(), i.tolist())])
    assert torch.equal(m.contains(u, i), expected)
    assert m.nnz == len(pairs)


def test_degrees_and_users_with_items():
    m = InteractionMatrix([0, 0, 2], [1, 3, 1], 4, 5)
    assert m.counts().tolist() == [2, 0, 1, 0]
    assert m.users_with_items().tolist() == [0, 2]
    assert m.item_degree().tolist() == [0, 2, 0, 1, 0]


def test_nth_negative_enumerates_the_complement():
    m, pairs = _random_matrix(2, users=6, items=15, nnz=50)
    for u in range(6):
        negatives = [i for i in range(15) if (u, i) not in pairs]
        ranks = torch.arange(len(negatives))
        assert m.nth_negative(torch.tensor(u), ranks).tolist() == negatives
