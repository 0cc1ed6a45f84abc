"""Command-line overrides checked before Hydra runs: a mistake a user can fix is one line.

Hydra reports a mistyped key (``model.encoder.num_layerz=2``), an unknown choice (``model=nope``)
or a malformed override in 7-20 lines and exit status 1. Every mmrec command instead composes
its configuration once up front (:func:`override_problem`); a problem is printed as
``error: <what is wrong, the nearest valid names, what to do>`` with exit status 2, the rule of
every other user error (:mod:`mmrec.utils.errors`). Hydra's own flags (``--help``, ``--cfg``,
``-m`` sweeps, ...) are left to Hydra; ``--config-dir`` (a user's config folder) is honoured.
"""

from __future__ import annotations

import difflib
import re
import sys
from typing import Callable, Sequence

from mmrec.utils.errors import EXIT_USER_ERROR

#: flags with a value that only add a config folder: the check composes with that folder too
_CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def _nearest(word: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(names), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _overrides(args: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """``(overrides, extra config folders)`` of a command line, or None when it carries a flag
    that Hydra must handle itself."""
    overrides, dirs, rest = [], [], list(args)
    while rest:
        arg = rest.pop(0)
        if arg in _CONFIG_DIR_FLAGS and rest:
            dirs.append(rest.pop(0))
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        elif arg.startswith("-"):
            return None
        else:
            overrides.append(arg)
    return overrides, dirs


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def override_problem(config_name: str, args: Sequence[str]) -> str | None:
    """What is wrong with the command-line ``args`` of the entry config ``config_name`` (a
    message naming the override, the nearest valid names and the fix), or None."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    parsed = _overrides(args)
    if parsed is None:
        return None
    overrides, dirs = parsed
    try:
        _compose(config_name, overrides, dirs)
        return None
    except MissingConfigException as err:
        found = re.search(r"Could not find '([^']+)'", str(err))
        missing = found.group(1) if found else "?"
        group, _, choice = missing.rpartition("/")
        options = list(getattr(err, "options", None) or [])
        if not group:  # a primary config, not a group choice: Hydra's message is clear enough
            return str(err).splitlines()[0]
        return (f"{group}={choice}: no such {group} choice{_nearest(choice, options)}; the choices are "
                f"{', '.join(options)}")
    except OverrideParseException as err:
        bad = next((o for o in overrides if o in str(err)), str(err).splitlines()[0])
        return (f"{bad}: not a valid override ({str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else ''}); "
                f"write key=value, e.g. trainer.max_epochs=10")
    except ConfigCompositionException as err:
        text = str(err)
        found = re.search(r"Could not override '([^']+)'", text)
        if found:
            return _missing_key(config_name, found.group(1), overrides, dirs)
        if "Could not append to config" in text:
            at = re.search(r"already at '([^']+)'", text)
            key = at.group(1) if at else "?"
            return f"+{key}=...: {key} already exists; set it without the +: {key}=..."
        return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _missing_key(config_name: str, key: str, overrides: list[str], dirs: list[str]) -> str:
    """The message for an override of a key that does not exist, with the keys that do."""
    from omegaconf import DictConfig, OmegaConf

    bad = next((o for o in overrides if _key(o) == key), key)
    try:
        cfg = _compose(config_name, [o for o in overrides if _key(o) != key], dirs)
    except Exception:  # noqa: BLE001 - another problem: name this one without suggestions
        cfg = None
    parts = key.split(".")
    depth = len(parts) - 1  # the deepest ancestor of the key that exists, and the first missing part
    while depth > 0 and not isinstance(OmegaConf.select(cfg, ".".join(parts[:depth]), default=None), DictConfig):
        depth -= 1
    parent, leaf = ".".join(parts[:depth]), parts[depth]
    node = (cfg if not parent else OmegaConf.select(cfg, parent, default=None)) if cfg is not None else None
    names = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    where = parent or "the top level"
    known = f"; {where} has {', '.join(names)}" if names and len(names) <= 25 else ""
    hint = _nearest(leaf, names) or _nearest(parts[-1], names)  # export.force=...: force is at the top level
    return (f"{bad}: {key} is not a key of this configuration{hint}{known}; to add a new key "
            f"deliberately write +{bad.lstrip('+')}")


def _compose(config_name: str, overrides: list[str], dirs: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mmrec.utils.config import CONFIG_DIR

    extra = [f"hydra.searchpath=[{','.join('file://' + str(d) for d in dirs)}]"] if dirs else []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name, overrides=extra + overrides)
    finally:
        GlobalHydra.instance().clear()


def run(main: Callable[[], object], config_name: str) -> None:
    """Run the ``@hydra.main`` function ``main`` of ``config_name`` after checking the command
    line's overrides: a problem ends in one ``error:`` line and exit status 2."""
    problem = override_problem(config_name, sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)
    main()
