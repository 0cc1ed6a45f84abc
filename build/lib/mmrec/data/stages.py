"""Resumable preparation stages: a finished stage is skipped, a changed one re-runs with
everything after it.

A stage is a name, the parameters that define its output and a function that produces
that output under the dataset folder and returns a summary (counts for the final table).
Its *key* is a hash of its parameters and the key of the stage before it, recorded in
``<root>/work/stages.json`` once the stage has finished; a stage whose recorded key matches
is skipped, unless its ``check`` finds its output gone or damaged (a deleted ``manifest.json``,
a removed feature store): then it runs again, and everything after it. Forcing a stage (or changing its parameters) re-runs it and every stage after
it (their records are dropped before it starts, so an interrupted or partial run never
leaves a later stage marked finished on top of new inputs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger(__name__)

STATE_FILE = "work/stages.json"


@dataclass
class Stage:
    name: str
    params: dict
    run: Callable[[], dict]
    # why the output of a finished run is no longer usable (None: it is); only called when
    # the stage would be skipped
    check: Callable[[], str | None] | None = None


def _key(params: dict, previous: str) -> str:
    blob = json.dumps(params, sort_keys=True, default=str) + previous
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_state(root: Path) -> dict:
    path = root / STATE_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is unreadable; every stage will run again", path)
        return {}


def _write_state(root: Path, state: dict) -> None:
    path = root / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def run_stages(root: str | Path, stages: Sequence[Stage], force: Sequence[str] = (),
               until: str | None = None) -> list[dict]:
    """Run ``stages`` in order under ``root``; returns one record per stage
    (name, status ``ran``/``skipped``, seconds, summary)."""
    root = Path(root)
    names = [s.name for s in stages]
    for name in list(force) + ([until] if until else []):
        if name not in names:
            raise ValueError(f"unknown stage {name!r}; stages of this dataset: {names}")
    state = _read_state(root)
    records, previous, dirty = [], "", False
    for pos, stage in enumerate(stages):
        key = _key(stage.params, previous)
        previous = key
        done = state.get(stage.name)
        finished = not dirty and done and done.get("key") == key and stage.name not in force
        lost = stage.check() if finished and stage.check is not None else None
        if lost:
            log.warning("stage %-12s finished before, but %s: running it again", stage.name, lost)
        if finished and not lost:
            log.info("stage %-12s skipped (finished %s)", stage.name, done.get("finished", "?"))
            records.append({"stage": stage.name, "status": "skipped", "seconds": done.get("seconds", 0.0),
                            "summary": done.get("summary", {})})
        else:
            log.info("stage %-12s running", stage.name)
            dirty = True  # everything after a stage that ran is out of date
            for later in names[pos:]:
                state.pop(later, None)
            _write_state(root, state)
            start = time.time()
            summary = stage.run() or {}
            seconds = round(time.time() - start, 2)
            state[stage.name] = {"key": key, "seconds": seconds, "summary": summary,
                                 "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            _write_state(root, state)
            log.info("stage %-12s done in %.1fs", stage.name, seconds)
            records.append({"stage": stage.name, "status": "ran", "seconds": seconds, "summary": summary})
        if stage.name == until:
            break
    return records


def prepare_command() -> str:
    """The command line of the running ``mmrec.prepare`` (from Hydra's overrides: what reruns
    these stages, resuming), or its generic form when not run through Hydra (e.g. from Python)."""
    from mmrec.utils.config import command_line

    return command_line("mmrec.prepare") or "python -m mmrec.prepare <the arguments used before>"


def format_summary(records: Sequence[dict]) -> str:
    """The stage table printed at the end of preparation (Markdown)."""
    lines = ["| stage | status | seconds | summary |", "|---|---|---:|---|"]
    for rec in records:
        detail = ", ".join(f"{k}={v}" for k, v in rec["summary"].items() if not isinstance(v, (dict, list)))
        lines.append(f"| {rec['stage']} | {rec['status']} | {rec['seconds']:.1f} | {detail} |")
    return "\n".join(lines)
