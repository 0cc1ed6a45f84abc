"""The base of every dataset source (``dataset.source`` in a dataset config).

Two kinds, declared by :attr:`DatasetSource.staged`:

* **single-step** sources (the demo generator, the MMRec-format import) write a whole prepared
  dataset, features included, in one :meth:`~DatasetSource.prepare` call; a training run does it
  itself on first use and repairs a damaged folder the same way;
* **staged** sources (MovieLens, Amazon 2023) are prepared once by ``python -m mmrec.prepare``
  in resumable :meth:`~DatasetSource.stages` (download, parse, images, tables), the features by
  the ``modality_encoder`` stages; a training never prepares them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from mmrec.data.stages import Stage


class DatasetSource:
    """A dataset's source. Subclasses set the class attributes and implement what their kind needs.

    Class attributes:
        staged: prepared in stages by ``mmrec.prepare`` (True), or in one call (False).
        makes_features: the source writes its own feature stores (generated or imported), so
            ``mmrec.prepare`` runs no ``modality_encoder`` stage for it.
    """

    staged: ClassVar[bool] = False
    makes_features: ClassVar[bool] = False

    def describe(self) -> dict:
        """The source's settings as recorded in the manifest (``type`` first): what a prepared
        folder is checked against, and what its repair command is rebuilt from."""
        raise NotImplementedError

    def feature_names(self) -> list[str]:
        """The feature stores a single-step source writes (``[]``: none, or a staged source's
        stores, which come from the ``modality_encoder`` stages)."""
        return []

    def prepare(self, root: str | Path):
        """Write the prepared dataset into ``root`` (resuming what a previous call left)."""
        raise NotImplementedError

    def stages(self, root: str | Path) -> list["Stage"]:
        """A staged source's stages (:mod:`mmrec.data.stages`)."""
        raise NotImplementedError(f"{type(self).__name__} is a single-step source: it has no stages")
