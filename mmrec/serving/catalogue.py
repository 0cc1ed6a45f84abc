"""The bundle's users and items as the outside world names them: raw ids <-> rows, titles,
images, groups, popularity, each user's known items, item descriptions and title search.

Everything a request looks up is built once, when the bundle is loaded (id maps, lowercased
titles, the users that have a history), so that no request pays for more than its own answer:
a title search scans one prepared array, a random user is one draw.
"""

from __future__ import annotations

import random
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from mmrec.serving.bundle import Bundle
from mmrec.serving.limits import RecommendError


class UnknownIdError(RecommendError):
    """Ids that are not in the bundle; ``kind`` is ``"user"`` or ``"item"``, ``ids`` lists them."""

    def __init__(self, kind: str, ids: Sequence[str]):
        self.kind, self.ids = kind, list(ids)
        shown = ", ".join(repr(i) for i in self.ids[:10]) + (" ..." if len(self.ids) > 10 else "")
        hint = ("a new visitor is served from liked items or a text query instead" if kind == "user"
                else "search the catalogue for valid ids")
        super().__init__(f"unknown {kind} id{'s' if len(self.ids) > 1 else ''} {shown} ({len(self.ids)} in all): "
                         f"not in this bundle; {hint}")


def bundle_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over a (read-only, memory-mapped) bundle array without copying it: workers share
    the pages. Serving never writes into these tensors."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class Catalogue:
    """The users and items of a :class:`~mmrec.serving.bundle.Bundle`.

    Attributes:
        user_raw, item_raw: raw id of each row (``str`` arrays).
        user_index, item_index: raw id -> row.
        titles, images: per item (``""`` where there is none).
        groups: per item, the business-rule group (``None``: no group), or ``None`` without a
            ``group`` column.
        popularity: ``[I]`` training users per item.
        rankable: ``[I]`` bool: whether the model can score the item.
        history_indptr, history_indices: each user's known items (train + valid), CSR, oldest first.
        users_with_history: the user rows that have a history (what :meth:`random_user` draws from).
    """

    def __init__(self, bundle: Bundle):
        a = bundle.arrays
        self.table = bundle.items
        self.user_raw = bundle.users["raw_id"].astype(str).to_numpy()
        self.item_raw = bundle.items["raw_id"].astype(str).to_numpy()
        self.num_users, self.num_items = len(self.user_raw), len(self.item_raw)
        self.user_index = {raw: i for i, raw in enumerate(self.user_raw)}
        self.item_index = {raw: i for i, raw in enumerate(self.item_raw)}
        self.titles = bundle.items["title"].fillna("").astype(str).to_numpy()
        self.images = bundle.items["image"].fillna("").astype(str).to_numpy()
        groups = bundle.items["group"] if "group" in bundle.items.columns else None
        self.groups = None if groups is None else [None if (g is None or g == "") else str(g) for g in groups]
        self.popularity = np.asarray(a["item_popularity"])
        self.rankable = bundle_tensor(np.asarray(a["item_rankable"], dtype=bool))  # [I]
        self.history_indptr = np.asarray(a["history_indptr"])
        self.history_indices = np.asarray(a["history_indices"])
        self._lower_titles = np.char.lower(self.titles.astype(str))  # what title search scans
        with_history = np.flatnonzero(np.diff(self.history_indptr) > 0)
        # built once: a random user is one draw, not a scan of every user per request
        self.users_with_history = with_history if len(with_history) else np.arange(self.num_users)

    # -- ids -------------------------------------------------------------------------
    def users(self, raw: Sequence[str]) -> np.ndarray:
        """The rows of raw user ids (:class:`UnknownIdError` listing every unknown one)."""
        return self._rows(raw, self.user_index, "user")

    def items(self, raw: Sequence[str] | None) -> np.ndarray:
        """The rows of raw item ids (none for ``None``; :class:`UnknownIdError` listing every unknown one)."""
        return self._rows(raw or [], self.item_index, "item")

    @staticmethod
    def _rows(raw: Sequence[str], index: dict[str, int], kind: str) -> np.ndarray:
        missing = [str(r) for r in raw if str(r) not in index]
        if missing:
            raise UnknownIdError(kind, missing)
        return np.array([index[str(r)] for r in raw], dtype=np.int64)

    # -- users -----------------------------------------------------------------------
    def known_rows(self, user: int) -> np.ndarray:
        """The known item rows (train + valid) of user row ``user``, oldest first."""
        return self.history_indices[self.history_indptr[user]:self.history_indptr[user + 1]]

    def history(self, user: str) -> list[str]:
        """The known items (train + valid) of a user, oldest first (raw ids)."""
        return self.item_raw[self.known_rows(int(self.users([user])[0]))].tolist()

    def random_user(self, rng: random.Random | None = None) -> str:
        """A random user with a history (raw id): one draw from an array built at load time."""
        drawn = (rng or random).randrange(len(self.users_with_history))
        return str(self.user_raw[self.users_with_history[drawn]])

    # -- items -----------------------------------------------------------------------
    def describe(self, item: str) -> dict[str, Any]:
        """The items-table row of ``item`` as a dict (raw id, title, text, image, ...), with
        whether the model can rank it and its popularity."""
        i = int(self.items([item])[0])
        row = self.table.iloc[i].to_dict()
        row["rankable"] = bool(self.rankable[i])
        row["popularity"] = int(self.popularity[i])
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}

    def search(self, text: str, limit: int = 20) -> list[int]:
        """Item rows whose title contains ``text`` (case-insensitive), most popular first."""
        needle = str(text).strip().lower()
        if not needle:
            return []
        hits = np.flatnonzero(np.char.find(self._lower_titles, needle) >= 0)
        order = np.argsort(-self.popularity[hits], kind="stable")
        return hits[order][:limit].tolist()
