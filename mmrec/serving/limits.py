"""What one request may ask, and the error a request that asks otherwise gets.

One :class:`Limits` (the config's ``recommender.limits`` node) bounds every way in: the
:class:`~mmrec.serving.recommender.Recommender` validates each request against it, so
``python -m mmrec.recommend``, the Python API and every HTTP route share the same bounds and the
same messages, and no route checks a bound of its own. The HTTP service reads from it only what
the recommender never sees: the size of a request body.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mmrec.utils.errors import MmrecError


class RecommendError(MmrecError, ValueError):
    """A request that cannot be answered as asked (the message says what is wrong and what to do);
    ``field`` names the request field at fault, where there is one (the API reports it)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _whole(value: object) -> bool:
    """A whole number (a bool is an int to Python, never a count to a caller)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class Limits(BaseModel):
    """The request limits of ``mmrec.recommend`` and the service (``conf/recommender``: ``limits``).

    Frozen (one object is shared by the recommender and the app) and strict about its keys (a
    typo in the config fails instead of leaving a default in force).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_k: int = Field(100, ge=1, description="the largest list length k a request may ask for")
    max_items: int = Field(100, ge=1, description="most liked / excluded item ids in one request")
    max_query_chars: int = Field(500, ge=1, description="longest text query or title search")
    max_body_bytes: int = Field(65536, ge=1, description="largest HTTP request body (413 above)")
    search_limit: int = Field(50, ge=1, description="most results of one title search")

    def check_k(self, k: int, field: str = "k") -> None:
        if not _whole(k) or k < 1:
            raise RecommendError(f"{field} must be a whole number >= 1, got {k!r}", field)
        if k > self.max_k:
            raise RecommendError(f"{field}={k} is above the limit of {self.max_k} for one request", field)

    @staticmethod
    def check_diversity(diversity: float) -> None:
        if not 0.0 <= float(diversity) <= 1.0:
            raise RecommendError(f"diversity must be between 0 and 1, got {diversity!r}", "diversity")

    @staticmethod
    def id_list(field: str, ids: Sequence[str] | None) -> list[str]:
        """``ids`` as a list of strings (``None``: none); one bare string, a common slip that would
        otherwise be read as its characters, is refused."""
        if ids is None:
            return []
        if isinstance(ids, str):
            raise RecommendError(f"{field} must be a list of ids (got one string); wrap it: [{ids!r}]", field)
        return [str(i) for i in ids]

    def item_ids(self, field: str, ids: Sequence[str] | None) -> list[str]:
        """:meth:`id_list`, at most ``max_items`` of them (liked or excluded items)."""
        out = self.id_list(field, ids)
        if len(out) > self.max_items:
            raise RecommendError(f"{field}: at most {self.max_items} item ids in one request, got {len(out)}", field)
        return out

    def check_text(self, text: str, field: str) -> None:
        if len(text) > self.max_query_chars:
            raise RecommendError(f"{field}: at most {self.max_query_chars} characters, got {len(text)}", field)

    def check_search(self, text: str, limit: int) -> None:
        self.check_text(str(text), "search")
        if not _whole(limit) or not 1 <= limit <= self.search_limit:
            raise RecommendError(f"limit must be a whole number from 1 to {self.search_limit}, got {limit!r}", "limit")
