"""Collect finished runs into tables and plots: ``python -m mmrec.report <folder> [--out DIR]``.

A *run* is any folder below ``<folder>`` that holds ``metrics.json`` and ``config.yaml``
(written by ``mmrec.train``): a single run, a Hydra multirun folder, or a whole ``logs/``
tree. The report has

* ``summary.csv`` / ``summary.md``: one row per configuration (dataset, model, fusion,
  sampler, and every other setting that differs between runs of the same model, seed
  excluded), mean and standard deviation over seeds of every validation and test metric,
  the number of seeds, and the configuration that is best on the validation metric the
  runs optimised (per dataset) marked;
* ``runs.csv``: one row per run (the numbers the summary averages);
* ``val_curve.png`` (validation Recall@20 per epoch, from ``csv/version_*/metrics.csv``),
  ``recall_at_k.png`` (Recall@K for every K in ``metrics.json``), ``warm_cold.png``
  (test Recall@20 over all, warm and cold items) and ``accuracy_beyond.png`` (test
  Recall@20 against catalogue coverage and against novelty: which models buy accuracy by
  showing everyone the same popular items).

Everything is a plain function of folders and DataFrames (the notebook
``notebooks/results.ipynb`` calls the same ones); :class:`SweepSummary` is the Hydra
callback that writes the report into a multirun folder when the sweep ends.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import re
import statistics
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import pandas as pd
import yaml

from mmrec.utils.config import CONFIG_DIR, flatten
from mmrec.utils.errors import MmrecError, user_errors
from mmrec.utils.logging import METRIC_ORDER

if TYPE_CHECKING:  # matplotlib is imported lazily: reading runs does not need it
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

BASE_COLUMNS = ("dataset", "model", "fusion", "sampler")
"""Settings that always identify a configuration (names of the conf/ group choices)."""

DEFAULT_TABLE_METRICS = ("val/recall@20", "val/ndcg@20", "test/recall@20", "test/ndcg@20",
                         "test/warm/recall@20", "test/cold/recall@20", "test/coverage@20", "test/gini@20",
                         "test/novelty@20", "test/ild_content@20", "test/ild_emb@20", "test/cold_exposure@20")
"""Metrics shown in ``summary.md`` (``summary.csv`` has all of them)."""

PERF_COLUMNS = ("best_epoch", "epochs_trained", "s_per_epoch", "s_per_val", "peak_rss_mb", "fit_seconds")
"""Bookkeeping of ``metrics.json`` carried into the tables (averaged like the metrics)."""

# Flattened config keys that never distinguish a configuration: the seed (averaged over),
# folders, bookkeeping and logging. Matched as exact keys or as prefixes ending in ".".
IGNORED_KEYS = ("seed", "task_name", "ckpt_path", "paths.", "hydra.", "logger.", "test",
                "optimized_metric", "trainer.enable_progress_bar", "trainer.enable_model_summary",
                "trainer.log_every_n_steps", "trainer.default_root_dir", "dataset.verify",
                "dataset.num_workers", "callbacks.model_checkpoint.", "callbacks.epoch_stats.",
                "callbacks.wandb_recommendations.")
_PATH_LIKE = re.compile(r"(^|\.)(root|path|dir|dirpath|save_dir|output_dir|root_dir)$")


class ReportError(MmrecError, RuntimeError):
    """A folder or run that cannot be reported (the message names it and says what to do)."""


# --------------------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------------------
@dataclass
class Run:
    """One finished training run.

    Attributes:
        path: the run folder.
        record: the parsed ``metrics.json`` (``metrics``, ``best_epoch``, ``perf``, ...).
        config: the resolved ``config.yaml``, flattened to dotted keys.
        choices: Hydra's config-group choices of the run (``.hydra/hydra.yaml``), if present.
    """

    path: Path
    record: dict[str, Any]
    config: dict[str, Any]
    choices: dict[str, str] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.record.get("metrics", {}))

    @property
    def seed(self) -> Any:
        return self.record.get("seed", self.config.get("seed"))

    @property
    def optimized_metric(self) -> str:
        return str(self.record.get("optimized_metric") or self.config.get("optimized_metric") or "val/recall@20")


def load_run(path: str | os.PathLike) -> Run:
    """Read the run in folder ``path`` (``metrics.json`` + ``config.yaml`` [+ ``.hydra/``])."""
    path = Path(path)
    metrics_file, config_file = path / "metrics.json", path / "config.yaml"
    for required in (metrics_file, config_file):
        if not required.is_file():
            raise ReportError(f"{required}: missing; {path} is not a finished mmrec.train run folder.")
    try:
        record = json.loads(metrics_file.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{metrics_file}: not valid JSON ({err}); the run may have been "
                          f"interrupted while writing it: rerun it or delete {path}.") from err
    try:
        config = yaml.safe_load(config_file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ReportError(f"{config_file}: not valid YAML ({err}); rerun or delete {path}.") from err
    if "metrics" not in record:
        raise ReportError(f"{metrics_file}: no 'metrics' entry; not written by mmrec.train.")
    choices: dict[str, str] = {}
    hydra_file = path / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        try:
            hydra_cfg = yaml.safe_load(hydra_file.read_text()) or {}
            choices = {str(k): str(v) for k, v in
                       (hydra_cfg.get("hydra", {}).get("runtime", {}).get("choices") or {}).items()}
        except yaml.YAMLError:
            log.warning("%s: unreadable; config-group names are derived from config.yaml.", hydra_file)
    return Run(path=path, record=record, config=flatten(config), choices=choices)


def find_runs(root: str | os.PathLike) -> list[Run]:
    """Every run folder below ``root`` (``root`` itself included), sorted by path.

    Raises:
        ReportError: ``root`` does not exist or holds no finished run.
    """
    root = Path(root)
    if not root.exists():
        raise ReportError(f"{root}: no such folder; pass a run, multirun or logs folder "
                          f"(e.g. logs/train/multiruns/<date>_<time>).")
    runs = []
    for metrics_file in sorted(root.rglob("metrics.json"), key=lambda p: _natural_key(str(p))):
        if not (metrics_file.parent / "config.yaml").is_file():
            continue  # not a training run (another tool's metrics.json)
        try:
            runs.append(load_run(metrics_file.parent))
        except ReportError as err:
            log.warning("Skipping %s", err)
    if not runs:
        raise ReportError(f"{root}: no finished runs below it (folders with metrics.json and "
                          f"config.yaml, written by `python -m mmrec.train`). Train first, or point "
                          f"at the multirun folder that holds the job folders.")
    return runs


def unfinished_jobs(root: str | os.PathLike) -> list[Path]:
    """Hydra job folders below ``root`` without ``metrics.json`` (failed, killed or running)."""
    return sorted((p.parent.parent for p in Path(root).rglob(".hydra/overrides.yaml")
                   if not (p.parent.parent / "metrics.json").exists()),
                  key=lambda p: _natural_key(str(p)))


def _natural_key(text: str) -> list[Any]:
    """Sort ``.../2`` before ``.../10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _group_names(group: str) -> dict[str, str]:
    """``_target_`` -> choice name for the configs of a ``conf/`` group (for runs without .hydra/)."""
    names = {}
    for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
        try:
            node = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        target = (node.get("model", {}).get("encoder", {}) if group == "model" else node).get("_target_")
        if target and target not in names:
            names[target] = path.stem
    return names


def base_settings(run: Run) -> dict[str, str]:
    """Dataset, model, fusion and sampler of a run.

    The dataset is named by its prepared folder (``demo-s0``, ``baby``, the name of an
    MMRec-format import), which identifies the data better than the config choice; the
    others are Hydra's choices, or derived from the ``_target_`` in the config.
    """
    out = {}
    # a model fitted in closed form or not at all (pop, random, iALS) drew no negatives: no sampler
    # (runs before the "trained" entry: no epoch and no checkpoint)
    untrained = run.record.get("trained") is False or (
        "trained" not in run.record and not run.record.get("epochs_trained") and not run.record.get("best_checkpoint"))
    for group in BASE_COLUMNS:
        if group == "sampler" and untrained:
            out[group] = "-"
        elif group == "dataset":
            root = run.config.get("dataset.root")
            out[group] = Path(str(root)).name if root else run.choices.get("dataset", "?")
        elif run.choices.get(group) not in (None, "None", "null"):
            out[group] = run.choices[group]
        else:
            key = "model.encoder._target_" if group == "model" else f"{group}._target_"
            target = run.config.get(key)
            out[group] = _group_names(group).get(target) or (str(target).rsplit(".", 1)[-1] if target else "?")
    return out


def _ignored(key: str) -> bool:
    if _PATH_LIKE.search(key):
        return True
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in IGNORED_KEYS)


def varying_settings(runs: Sequence[Run]) -> list[str]:
    """Config keys (besides :data:`BASE_COLUMNS` and the seed) whose value differs between
    runs that share dataset, model, fusion and sampler: the "other overrides" of a sweep.

    Keys that differ only *between* models (e.g. LightGCN's and MMGCN's default depth) are
    implied by the model column and are left out.
    """
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(base_settings(run).values()), []).append(run)
    keys: set[str] = set()
    for members in groups.values():
        if len(members) < 2:
            continue
        all_keys = set().union(*(m.config for m in members))
        for key in all_keys:
            if _ignored(key) or key in keys:
                continue
            if len({repr(m.config.get(key)) for m in members}) > 1:
                keys.add(key)
    return sorted(keys)


def _median_after_first(values: Sequence[float] | None) -> float | None:
    """Median of per-epoch timings without the first epoch (warm-up), if there are more."""
    if not values:
        return None
    values = list(values[1:]) if len(values) > 1 else list(values)
    return float(statistics.median(values))


def runs_frame(runs: Sequence[Run], extra_keys: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per run: ``run`` (folder), ``seed``, the configuration columns, every metric
    of ``metrics.json`` and :data:`PERF_COLUMNS`.

    Args:
        runs: the runs (from :func:`find_runs`).
        extra_keys: configuration keys besides :data:`BASE_COLUMNS` (default:
            :func:`varying_settings`).
    """
    extra = list(varying_settings(runs) if extra_keys is None else extra_keys)
    rows = []
    for run in runs:
        perf = run.record.get("perf") or {}
        row: dict[str, Any] = {"run": str(run.path), "seed": run.seed, **base_settings(run)}
        for key in extra:
            value = run.config.get(key)
            row[key] = "-" if value is None else str(value)
        row["optimized_metric"] = run.optimized_metric
        row.update({k: float(v) for k, v in run.metrics.items()})
        row["finished"] = (run.path / "metrics.json").stat().st_mtime  # newest copy of a seed wins
        row.update({"best_epoch": run.record.get("best_epoch"), "epochs_trained": run.record.get("epochs_trained"),
                    "s_per_epoch": _median_after_first(perf.get("train_epoch_s")),
                    "s_per_val": _median_after_first(perf.get("val_s")),
                    "peak_rss_mb": perf.get("peak_rss_mb"), "fit_seconds": run.record.get("fit_seconds")})
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["config_columns"] = list(BASE_COLUMNS) + extra
    return frame


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The columns that identify a configuration in a :func:`runs_frame` / :func:`summarize` table."""
    cols = frame.attrs.get("config_columns")
    if cols is None:  # a table read back from CSV: the columns are written in a fixed order
        names = list(frame.columns)
        if "n_seeds" in names:  # summary.csv: configuration columns come first
            cols = names[:names.index("n_seeds")]
        elif "optimized_metric" in names and "seed" in names:  # runs.csv: run, seed, configuration
            cols = names[names.index("seed") + 1:names.index("optimized_metric")]
        else:
            raise ReportError("cannot tell the configuration columns of this table; pass a table "
                              "from runs_frame()/summarize() or read from runs.csv/summary.csv")
    return list(cols)


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """``val/...`` and ``test/...`` columns, validation first, in a stable order."""
    cols = [c for c in frame.columns if c.startswith(("val/", "test/")) and not c.endswith("_std")]
    return sorted(cols, key=_metric_sort_key)


def _metric_sort_key(name: str) -> tuple:
    split, rest = name.split("/", 1)
    group = rest.split("/")[0] if rest.count("/") else ""
    metric, _, k = rest.split("/")[-1].partition("@")
    order = list(METRIC_ORDER)
    return (split != "val", ["", "warm", "cold"].index(group) if group in ("", "warm", "cold") else 3,
            order.index(metric) if metric in order else len(order), metric, int(k) if k.isdigit() else 0)


def distinct_seeds(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a :func:`runs_frame` table into one run per (configuration, seed), the most
    recently finished, and the other copies (a resume that re-evaluated an old checkpoint,
    the same trial run twice): a mean over copies of one seed is not a mean over seeds, and
    their std is zero by construction."""
    keys = config_columns(runs) + ["seed"]
    order = runs.sort_values("finished", kind="stable") if "finished" in runs else runs
    dup = order.duplicated(keys, keep="last")
    kept, copies = order[~dup].sort_index(), order[dup].sort_index()
    kept.attrs, copies.attrs = dict(runs.attrs), dict(runs.attrs)
    return kept, copies


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration of a :func:`runs_frame` table.

    Columns: the configuration columns, ``n_seeds`` (distinct seeds averaged), ``seeds``,
    ``duplicates`` (further runs of an already counted seed, left out: see
    :func:`distinct_seeds`), then for every metric and perf figure its mean (column named like
    the metric) and sample standard deviation over the seeds (``<name>_std``; NaN for a single
    seed), and ``best``: True on the row with the highest mean optimised validation metric of
    each dataset. Rows sorted by configuration.
    """
    if runs.empty:
        raise ReportError("no runs to summarise")
    keys = config_columns(runs)
    values = [c for c in metric_columns(runs) + list(PERF_COLUMNS) if c in runs.columns]
    kept, copies = distinct_seeds(runs)
    n_copies = copies.groupby(keys, dropna=False).size() if not copies.empty else None
    rows = []
    for config, members in kept.groupby(keys, sort=True, dropna=False):
        config = config if isinstance(config, tuple) else (config,)
        row: dict[str, Any] = dict(zip(keys, config))
        row["n_seeds"] = len(members)
        row["seeds"] = " ".join(str(s) for s in sorted(members["seed"].tolist(), key=str))
        row["duplicates"] = int(n_copies.get(config if len(keys) > 1 else config[0], 0)) \
            if n_copies is not None else 0
        for col in values:
            series = pd.to_numeric(members[col], errors="coerce").dropna()
            row[col] = float(series.mean()) if len(series) else math.nan
            row[f"{col}_std"] = float(series.std(ddof=1)) if len(series) > 1 else math.nan
        row["optimized_metric"] = members["optimized_metric"].mode().iloc[0]
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary["best"] = False
    for _, idx in summary.groupby("dataset").groups.items():
        part = summary.loc[idx]
        metric = part["optimized_metric"].mode().iloc[0]
        if metric in part and part[metric].notna().any():
            summary.loc[part[metric].idxmax(), "best"] = True
    ordered = keys + ["n_seeds", "seeds", "duplicates", "best", "optimized_metric"]
    ordered += [c for v in values for c in (v, f"{v}_std")]
    summary = summary[ordered]
    summary.attrs["config_columns"] = keys
    return summary


def format_setting(value: Any) -> str:
    """A configuration value for display: long floats shortened (``0.000241567...`` ->
    ``0.0002416``), everything else as is."""
    text = str(value)
    if re.fullmatch(r"-?\d+\.\d{5,}(e-?\d+)?|-?\d+(\.\d+)?e-?\d+", text):
        return f"{float(text):.4g}"
    return text


def format_mean_std(mean: float, std: float, digits: int = 4) -> str:
    """``0.3345 ± 0.0011``; the mean alone for a single run; ``n/a`` when missing."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def to_markdown(summary: pd.DataFrame, metrics: Sequence[str] = DEFAULT_TABLE_METRICS,
                perf: Sequence[str] = ("best_epoch",)) -> str:
    """A Markdown table of a :func:`summarize` table: configuration, seeds, the chosen
    metrics as mean ± std, and the best-on-validation row marked in bold with a ``*``."""
    keys = config_columns(summary)
    shown = [m for m in metrics if m in summary.columns]
    perf = [p for p in perf if p in summary.columns and summary[p].notna().any()]
    header = keys + ["seeds"] + [_short(m) for m in shown] + [p.replace("_", " ") for p in perf] + ["best on val"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        dups = int(row.get("duplicates", 0) or 0)
        # every seed gave the very same numbers (a deterministic model such as pop): say so, not "± 0.0000"
        identical = row["n_seeds"] > 1 and bool(shown) and all(row[f"{m}_std"] == 0 for m in shown)
        cells = [format_setting(row[k]) for k in keys] + [f"{row['n_seeds']}" + (" (identical results)" if identical
                                                                                 else "")
                                                          + (f" (+{dups} duplicate)" if dups else "")]
        cells += [format_mean_std(row[m], math.nan if identical else row[f"{m}_std"]) for m in shown]
        cells += [format_mean_std(row[p], row[f"{p}_std"], 1 if p.endswith("epoch") else 2) for p in perf]
        cells.append(f"**\\* ({_short(row['optimized_metric'])})**" if row["best"] else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _short(metric: str) -> str:
    """``test/warm/recall@20`` -> ``test warm R@20`` (compact column titles)."""
    names = {"recall": "R", "ndcg": "NDCG", "precision": "P", "map": "MAP", "hit": "Hit", "coverage": "Cov",
             "gini": "Gini", "entropy": "Entropy", "avg_pop": "AvgPop", "aplt": "APLT", "novelty": "Nov",
             "ild_content": "ILD", "ild_emb": "ILD(emb)", "cold_exposure": "ColdExp"}
    parts = metric.split("/")
    name, _, k = parts[-1].partition("@")
    return " ".join(parts[:-1] + [f"{names.get(name, name)}@{k}" if k else name])


# --------------------------------------------------------------------------------------
# Curves and plots
# --------------------------------------------------------------------------------------
def read_curves(run_dir: str | os.PathLike, metric: str = "val/recall@20",
                epochs_trained: int | None = None) -> pd.DataFrame:
    """Per-epoch values of ``metric`` from ``<run_dir>/csv/version_*/metrics.csv``.

    Versions (a resumed run writes a new one) are read in order; a later value of an epoch
    replaces an earlier one. Rows logged after fitting (the validation of the selected
    checkpoint and the test, which Lightning stamps with epoch = ``epochs_trained``) are
    dropped. Returns columns ``epoch`` (0-based, as logged) and ``value``; empty if the run
    has no CSV log (``logger=none``, ``fast_dev_run``) or never logged ``metric``.
    """
    files = sorted(Path(run_dir).glob("csv/version_*/metrics.csv"),
                   key=lambda p: _natural_key(p.parent.name))
    parts = []
    for path in files:
        try:
            frame = pd.read_csv(path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
            log.warning("%s: unreadable (%s); curves of this run are skipped.", path, err)
            continue
        if metric in frame.columns and "epoch" in frame.columns:
            parts.append(frame.loc[frame[metric].notna(), ["epoch", metric]])
    if not parts:
        return pd.DataFrame({"epoch": pd.Series(dtype=int), "value": pd.Series(dtype=float)})
    curve = pd.concat(parts).rename(columns={metric: "value"})
    curve["epoch"] = curve["epoch"].astype(int)
    if epochs_trained is not None:
        curve = curve[curve["epoch"] < int(epochs_trained)]
    return curve.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def curves_frame(runs: pd.DataFrame, metric: str = "val/recall@20") -> pd.DataFrame:
    """Long table of per-epoch ``metric`` for every run of a :func:`runs_frame` table:
    the configuration columns, ``label``, ``seed``, ``run``, ``epoch`` and ``value``."""
    keys = config_columns(runs)
    labels = configuration_labels(runs)
    parts = []
    for idx, row in runs.iterrows():
        epochs = row.get("epochs_trained")
        curve = read_curves(row["run"], metric, None if pd.isna(epochs) else int(epochs))
        if curve.empty:
            continue
        for key in keys + ["seed", "run", "best_epoch"]:
            curve[key] = row.get(key)
        curve["label"] = labels.loc[idx]
        parts.append(curve)
    if not parts:
        return pd.DataFrame(columns=keys + ["seed", "run", "best_epoch", "label", "epoch", "value"])
    return pd.concat(parts, ignore_index=True)


LABEL_WIDTH = 28  # characters per legend / tick label line


def configuration_labels(frame: pd.DataFrame) -> pd.Series:
    """A short label per row, wrapped to :data:`LABEL_WIDTH`: the base columns that vary in
    ``frame`` (``model`` alone when none does), then each other setting that differs among the
    rows of the same dataset / model / fusion / sampler, where the row has it (``key=value``,
    last part of the key). A setting one model lacks (``-``) never appears."""
    keys = config_columns(frame)
    base = [k for k in keys if k in BASE_COLUMNS]
    varying = [k for k in base if frame[k].astype(str).nunique() > 1] or ["model"]
    group = frame[base].astype(str).agg("/".join, axis=1) if base else pd.Series("", index=frame.index)
    extra = {k: frame.groupby(group)[k].transform(lambda col: col.astype(str).nunique() > 1)
             for k in keys if k not in BASE_COLUMNS}

    def label(row: pd.Series) -> str:
        parts = [format_setting(row[k]) for k in varying]
        parts += [f"{k.rsplit('.', 1)[-1]}={format_setting(row[k])}" for k, differs in extra.items()
                  if bool(differs.loc[row.name]) and str(row[k]) != "-"]
        return textwrap.fill(" / ".join(parts), LABEL_WIDTH, break_on_hyphens=False)

    return frame.apply(label, axis=1)


def _legend_outside(ax) -> None:
    """A legend right of the axes (the constrained layout makes room), never over the data."""
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _new_figure(width: float = 7.0, height: float = 4.5) -> "Figure":
    from matplotlib.figure import Figure

    # A Figure without pyplot: no GUI backend, no global state; saving uses Agg.
    return Figure(figsize=(width, height), layout="constrained")


def plot_curves(curves: pd.DataFrame, metric: str = "val/recall@20", without: Sequence[str] = ()) -> "Figure":
    """``metric`` per epoch, one line per configuration (mean over seeds, band = min..max), each
    run's selected epoch (best on validation) marked with a star on its own curve. ``without``:
    labels of the configurations that have no curve (untrained models, runs without a CSV log),
    named in the legend rather than left out silently."""
    fig = _new_figure(9.0, 4.5)
    ax = fig.add_subplot()
    for label in without:
        ax.plot([], [], " ", label=f"{label}: no curve (not trained per epoch, or no CSV log)")
    if curves.empty and not without:
        ax.text(0.5, 0.5, "no per-epoch CSV logs (logger=csv) in these runs", ha="center", va="center",
                transform=ax.transAxes)
    for label, part in curves.groupby("label", sort=True):
        stats = part.groupby("epoch")["value"].agg(["mean", "min", "max"])
        line, = ax.plot(stats.index, stats["mean"], label=str(label), marker="." if len(stats) < 30 else None)
        if part["seed"].nunique() > 1:
            ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2, color=line.get_color())
        best = part[part["epoch"] == pd.to_numeric(part["best_epoch"], errors="coerce")]
        ax.scatter(best["epoch"], best["value"], marker="*", s=110, color=line.get_color(), edgecolor="black",
                   linewidths=0.5, zorder=3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0-based)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch (mean over seeds; band: min-max; star: selected epoch)", loc="left", fontsize=10)
    ax.grid(alpha=0.3)
    if not curves.empty or without:
        _legend_outside(ax)
    return fig


def recall_at_k_frame(summary: pd.DataFrame, metric: str = "recall") -> pd.DataFrame:
    """Long table ``label, split, k, mean, std`` of ``<split>/<metric>@k`` of a summary."""
    labels = configuration_labels(summary)
    rows = []
    for idx, row in summary.iterrows():
        for col in metric_columns(summary):
            split, rest = col.split("/", 1)
            match = re.fullmatch(rf"{metric}@(\d+)", rest)
            if match:
                rows.append({"label": labels.loc[idx], "split": split, "k": int(match.group(1)),
                             "mean": row[col], "std": row[f"{col}_std"]})
    return pd.DataFrame(rows, columns=["label", "split", "k", "mean", "std"])


def plot_recall_at_k(summary: pd.DataFrame, metric: str = "recall") -> "Figure":
    """``metric@K`` against K (every K in metrics.json), validation and test side by side,
    one line per configuration, error bars = std over seeds."""
    data = recall_at_k_frame(summary, metric)
    fig = _new_figure(12, 4.5)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, split in zip(axes, ("val", "test")):
        part = data[data["split"] == split]
        for label, rows in part.groupby("label", sort=True):
            rows = rows.sort_values("k")
            ax.errorbar(rows["k"], rows["mean"], yerr=rows["std"].fillna(0.0), marker="o", capsize=3,
                        label=str(label))
        ks = sorted(part["k"].unique())
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("K")
        ax.set_title(f"{split} {metric}@K")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{metric}@K (mean ± std over seeds)")
    if not data.empty:
        _legend_outside(axes[-1])
    return fig


def plot_warm_cold(summary: pd.DataFrame, metric: str = "recall@20", split: str = "test") -> "Figure":
    """``<split>/<metric>`` over all relevant items, warm items and cold items (no training
    interaction), grouped bars per configuration, error bars = std over seeds."""
    labels = configuration_labels(summary).tolist()
    groups = [("all items", f"{split}/{metric}"), ("warm items", f"{split}/warm/{metric}"),
              ("cold items", f"{split}/cold/{metric}")]
    fig = _new_figure(max(6.0, 1.2 * len(labels) + 3), 4.5)
    ax = fig.add_subplot()
    width = 0.8 / len(groups)
    for g, (name, col) in enumerate(groups):
        if col not in summary.columns:
            continue
        xs = [i + (g - 1) * width for i in range(len(labels))]
        values = summary[col].to_numpy(dtype=float)
        ax.bar(xs, values, width, yerr=summary[f"{col}_std"].fillna(0.0), capsize=3, label=name, color=f"C{g}")
        if name == "cold items":  # an empty bar would read as "not measured"
            exposure = summary.get(f"{split}/cold_exposure@20")
            for i, x in enumerate(xs):
                shown = None if exposure is None else exposure.iloc[i]
                if math.isnan(values[i]) or (values[i] == 0 and (shown is None or shown == 0)):
                    ax.annotate("cannot score" if not math.isnan(values[i]) else "no cold items", (x, 0),
                                textcoords="offset points", xytext=(0, 3), rotation=90, ha="center",
                                va="bottom", fontsize="x-small", color=f"C{g}")
    ax.set_xticks(range(len(labels)), labels, fontsize="small")
    ax.set_ylabel(f"{split} {metric}")
    ax.set_title(f"{split} {metric}: all vs warm vs cold items")
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(ax)
    return fig


BEYOND_AXES = (("coverage@20", "catalogue coverage@20 (share of items shown to anyone)"),
               ("novelty@20", "novelty@20 (mean self-information, bits)"))
"""The x axes of :func:`plot_accuracy_vs_beyond`."""


def plot_accuracy_vs_beyond(summary: pd.DataFrame, accuracy: str = "recall@20", split: str = "test",
                            axes: Sequence[tuple[str, str]] = BEYOND_AXES) -> "Figure":
    """``<split>/<accuracy>`` against each beyond-accuracy metric of ``axes``, one point per
    configuration (error bars: std over seeds), labelled next to the point. A model up and to
    the right is accurate without concentrating on the same few popular items."""
    labels = configuration_labels(summary).tolist()
    fig = _new_figure(5.0 * len(axes), 4.5)
    subplots = fig.subplots(1, len(axes), squeeze=False)[0]
    y_col = f"{split}/{accuracy}"
    for ax, (metric, title) in zip(subplots, axes):
        x_col = f"{split}/{metric}"
        if x_col not in summary.columns or y_col not in summary.columns or summary[x_col].isna().all():
            ax.text(0.5, 0.5, f"no {x_col} in these runs", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        for i, (_, row) in enumerate(summary.iterrows()):
            if pd.isna(row[x_col]):
                continue
            x_err = row.get(f"{x_col}_std")
            y_err = row.get(f"{y_col}_std")
            ax.errorbar(row[x_col], row[y_col], xerr=0.0 if pd.isna(x_err) else x_err,
                        yerr=0.0 if pd.isna(y_err) else y_err, marker="o", capsize=3, color=f"C{i % 10}")
            ax.annotate(labels[i], (row[x_col], row[y_col]), textcoords="offset points", xytext=(5, 4),
                        fontsize="small", color=f"C{i % 10}")
        ax.set_xlabel(title)
        ax.set_ylabel(f"{split} {accuracy}")
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.1)
    fig.suptitle(f"{split}: accuracy against what the lists show (mean ± std over seeds)")
    return fig


# --------------------------------------------------------------------------------------
# Writing a report
# --------------------------------------------------------------------------------------
def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save_figure(fig: "Figure", path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def write_report(root: str | os.PathLike, out: str | os.PathLike | None = None, plots: bool = True,
                 metrics: Sequence[str] = DEFAULT_TABLE_METRICS) -> dict[str, Path]:
    """Collect the runs below ``root`` and write the report into ``out`` (default ``root``).

    Returns the written files by name (``summary_md``, ``summary_csv``, ``runs_csv`` and,
    with ``plots``, ``val_curve``, ``recall_at_k``, ``warm_cold``, ``accuracy_beyond``).
    """
    root = Path(root)
    runs = runs_frame(find_runs(root))  # first: a missing root must not be created as `out`
    out = Path(out) if out is not None else root
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    files = {"summary_md": out / "summary.md", "summary_csv": out / "summary.csv", "runs_csv": out / "runs.csv"}
    missing = unfinished_jobs(root)
    text = [f"# Runs below {root}", "",
            f"{len(runs)} finished runs, {len(summary)} configurations; mean ± std over seeds "
            f"(sample std); best on validation per dataset marked (never chosen on test).", "",
            to_markdown(summary, metrics)]
    _, copies = distinct_seeds(runs)
    if not copies.empty:
        text += ["", f"Left out as further runs of a seed already counted (same configuration and seed; the most "
                     f"recently finished run is used): {', '.join(_relative(p, root) for p in copies['run'])}"]
        log.warning("%d runs repeat a configuration and seed already counted and are left out of the means: %s",
                    len(copies), ", ".join(_relative(p, root) for p in copies["run"]))
    if missing:
        text += ["", f"Job folders without metrics.json (failed, killed or still running): "
                     f"{', '.join(str(p.relative_to(root)) for p in missing)}"]
    _write_atomic(files["summary_md"], "\n".join(text) + "\n")
    _write_atomic(files["summary_csv"], summary.to_csv(index=False))
    _write_atomic(files["runs_csv"], runs.to_csv(index=False))
    if plots:
        metric = runs["optimized_metric"].mode().iloc[0]
        curves = curves_frame(runs, metric)
        labels = configuration_labels(runs)
        without = sorted(set(labels[~runs["run"].isin(set(curves["run"]))]) - set(curves["label"]))
        figures = {"val_curve": plot_curves(curves, metric, without),
                   "recall_at_k": plot_recall_at_k(summary), "warm_cold": plot_warm_cold(summary),
                   "accuracy_beyond": plot_accuracy_vs_beyond(summary)}
        for name, fig in figures.items():
            files[name] = out / f"{name}.png"
            _save_figure(fig, files[name])
    return files


# --------------------------------------------------------------------------------------
# Hydra callback: a summary in every multirun folder
# --------------------------------------------------------------------------------------
try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency; keep the module importable
    _HydraCallback = object  # type: ignore[assignment,misc]


class SweepSummary(_HydraCallback):
    """Writes the report (``summary.md``, ``summary.csv``, ``runs.csv``, plots) into the
    multirun folder when a sweep ends; tables are also refreshed after every job, so a sweep
    that stops on a failed job still leaves a summary of the finished ones. A report that
    cannot be written is logged, never raised (it must not fail the sweep)."""

    def __init__(self, plots: bool = True, after_each_job: bool = True) -> None:
        self.plots = plots
        self.after_each_job = after_each_job

    @staticmethod
    def _sweep_dir(config: Any) -> Path:
        return Path(str(config.hydra.sweep.dir))

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if not self.after_each_job or config.hydra.mode != RunMode.MULTIRUN:
            return
        self._write(self._sweep_dir(config), plots=False)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        path = self._sweep_dir(config)
        files = self._write(path, plots=self.plots)
        if files:
            log.info("Sweep summary: %s (also %s)", files["summary_md"],
                     ", ".join(p.name for k, p in files.items() if k != "summary_md"))

    @staticmethod
    def _write(path: Path, plots: bool) -> dict[str, Path] | None:
        try:
            return write_report(path, path, plots=plots)
        except Exception as err:  # noqa: BLE001 - a report must never break a sweep
            log.warning("No sweep summary for %s: %s (run `python -m mmrec.report %s` later)", path, err, path)
            return None


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def main(argv: Iterable[str] | None = None) -> int:
    """``python -m mmrec.report <folder> [--out DIR] [--metrics ...] [--no-plots]``."""
    parser = argparse.ArgumentParser(prog="python -m mmrec.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a run, multirun or logs folder")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: FOLDER)")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_TABLE_METRICS),
                        help="metrics shown in summary.md (summary.csv has all)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with user_errors():
            files = write_report(args.folder, args.out, plots=not args.no_plots, metrics=args.metrics)
    except SystemExit as exit_:
        return int(exit_.code)
    print(files["summary_md"].read_text())
    print("Written:", *(str(p) for p in files.values()), sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
