"""User errors: what every command line of mmrec reports in a line or two, without a traceback.

An error a user can fix (bad input, a bad setting, a missing file) derives from
:class:`MmrecError` besides its usual base (``DatasetError(MmrecError, RuntimeError)``) and
carries a message that names what is wrong and the next step. :func:`user_errors` wraps a
command: such an error - also when raised inside a constructor that Hydra's ``instantiate``
wraps - is printed as ``error: <message>`` and the command exits with status 2; anything else
is a bug and keeps its traceback. ``HYDRA_FULL_ERROR=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

EXIT_USER_ERROR = 2


class MmrecError(Exception):
    """Base of the errors a user fixes; the message says what and how."""


def user_error(err: BaseException) -> MmrecError | None:
    """``err`` itself or the first :class:`MmrecError` it was raised from (``raise ... from``:
    Hydra's ``InstantiationException`` wraps the error of the constructor it called), or None.
    Only explicit causes count: an error raised while *handling* a user error is a bug."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MmrecError):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None


def _only_bookkeeping(folder: Path) -> bool:
    """True if ``folder`` is a Hydra run folder (it has ``.hydra/``) holding nothing a user
    would miss: ``.hydra/``, log files and the resolved ``config.yaml`` of a run that never
    started training."""
    if not (folder / ".hydra").is_dir() or folder.resolve() == Path.cwd().resolve():
        return False
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_dir() or rel.parts[0] == ".hydra" or path.suffix == ".log" or rel.name == "config.yaml":
            continue
        return False
    return True


@contextlib.contextmanager
def user_errors(run_dir: str | os.PathLike | None = None) -> Iterator[None]:
    """Report a user error in one line and exit with :data:`EXIT_USER_ERROR`; ``run_dir`` (the
    run folder Hydra created) is removed if the run wrote nothing but bookkeeping into it."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised unless it is a user error
        found = user_error(err)
        if found is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if run_dir is not None and Path(run_dir).is_dir() and _only_bookkeeping(Path(run_dir)) \
                and not getattr(found, "keeps_folder", False):  # e.g. refused because it holds another run
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"error: {found}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None


@contextlib.contextmanager
def hydra_user_errors() -> Iterator[None]:
    """:func:`user_errors` for a ``@hydra.main`` task, with Hydra's run folder. In a multirun
    the error propagates as before: the launcher records the failed job (a sweep is not
    ended by one job's exit)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        yield
        return
    with user_errors(hydra_cfg.runtime.output_dir):
        yield
