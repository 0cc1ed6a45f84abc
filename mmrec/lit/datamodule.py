"""The DataModule: Lightning's view of an assembled run's data (:class:`mmrec.run.RunData`):
training batches and the users of each evaluation. It prepares and loads nothing itself."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mmrec.core.interactions import InteractionMatrix

#: what a training batch holds: (user, item) pairs, or users (a history model reads their sequences)
TRAIN_UNITS = ("pairs", "users")


def _identity(batch):
    return batch


class _PairDataset(Dataset):
    """Training (user, item) pairs; ``__getitems__`` slices a whole batch with one index op."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor):
        self.users, self.items = users, items

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int):
        return self.users[index], self.items[index]

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.users[idx], self.items[idx]


class _UserDataset(Dataset):
    """Users (evaluation, or a sequence model's training); a batch is a ``[B]`` tensor of user ids."""

    def __init__(self, users: torch.Tensor):
        self.users = users

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int):
        return self.users[index]

    def __getitems__(self, indices: list[int]):
        return self.users[torch.as_tensor(indices, dtype=torch.long)]


class RecDataModule(L.LightningDataModule):
    """Training and evaluation loaders of one run's data.

    Args:
        data: the run's data (:class:`mmrec.run.RunData`).
        train_unit: ``pairs`` (batches ``(users [B], items [B])``) or ``users`` (batches ``users
            [B]``), as the model declares (:attr:`~mmrec.models.base.GraphRecommender.train_unit`).
        per_batch: training pairs (``pairs``) or users (``users``) per step.
        eval_users_per_batch: users per full-ranking chunk.
        min_history: with ``users`` batches, only users with at least this many training items are drawn.
        num_workers: DataLoader workers for training batches (batches are index slices: 0 is fastest).
    """

    def __init__(self, data, train_unit: str = "pairs", per_batch: int = 2048, eval_users_per_batch: int = 1024,
                 min_history: int = 1, num_workers: int = 0):
        super().__init__()
        if train_unit not in TRAIN_UNITS:
            raise ValueError(f"train_unit must be one of {TRAIN_UNITS}, got {train_unit!r}")
        self.data = data
        self.train_unit = train_unit
        self.per_batch = per_batch
        self.eval_users_per_batch = eval_users_per_batch
        self.min_history = min_history
        self.num_workers = num_workers
        users, items = data.dataset.split("train")  # the table's order: the shuffled batches of every earlier run
        self._train_pairs = _PairDataset(torch.as_tensor(users), torch.as_tensor(items))

    @property
    def dataset(self):
        """The prepared dataset (tables: titles and images for recommendation tables)."""
        return self.data.dataset

    def _train_dataset(self) -> Dataset:
        if self.train_unit == "users":  # sequence models: a batch is users [B], each with its whole history
            # on the CPU: the matrix may already sit on the GPU with the module, loader workers index on the CPU
            users = torch.nonzero(self.data.train_matrix.counts().cpu() >= self.min_history).squeeze(1)
            return _UserDataset(users)
        return self._train_pairs

    def train_batches(self) -> int:
        """Training steps per epoch (one process)."""
        return -(-len(self._train_dataset()) // self.per_batch)

    def train_dataloader(self) -> DataLoader:
        dataset = self._train_dataset()
        return DataLoader(dataset, batch_size=self.per_batch, shuffle=True, collate_fn=_identity,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def _users_loader(self, matrix: InteractionMatrix) -> DataLoader:
        return DataLoader(_UserDataset(matrix.users_with_items()), batch_size=self.eval_users_per_batch,
                          shuffle=False, collate_fn=_identity)

    def val_dataloader(self) -> DataLoader:
        return self._users_loader(self.data.splits["valid"])

    def test_dataloader(self) -> DataLoader:
        return self._users_loader(self.data.splits["test"])
