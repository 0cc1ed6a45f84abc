"""Logger helpers: W&B that works offline without an account, and a readable metrics table."""

from __future__ import annotations

import json
import logging
import netrc
import os
from pathlib import Path

log = logging.getLogger(__name__)


def wandb_has_credentials() -> bool:
    """True if an API key is in the environment or in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
    return auth.authenticators(host) is not None


def sweep_context() -> dict[str, str] | None:
    """``{"sweep": <multirun folder name>, "job": <job number>, "overrides": <job overrides>}``
    inside a Hydra multirun job, else ``None`` (single run, or no Hydra at all)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return {"sweep": Path(str(hc.sweep.dir)).name, "job": str(hc.job.num),
            "overrides": str(hc.job.override_dirname)}


def wandb_logger(project: str, save_dir: str, mode: str = "auto", group: str | None = None,
                 name: str | None = None, sweep_group: bool = True, config_file: str | None = None,
                 **kwargs):
    """A Lightning ``WandbLogger``; ``mode=auto`` means offline unless credentials exist.

    Offline runs are written under ``<save_dir>/wandb`` and can be uploaded later with
    ``wandb sync <save_dir>/wandb/offline-run-*``.

    Args:
        project: W&B project.
        save_dir: run folder (``wandb/`` is created inside).
        mode: ``auto`` | ``online`` | ``offline`` | ``disabled``.
        group: dashboard group (e.g. the task name).
        name: run name (``None``: W&B's, or in a sweep ``<job number>: <job overrides>``).
        sweep_group: in a Hydra multirun, group runs by sweep: ``<group>/<multirun folder
            name>`` (all jobs of one ``-m`` command or Optuna search land together).
        config_file: the run's resolved ``config.yaml``; logged as the W&B run config.
        **kwargs: passed on to ``WandbLogger`` / ``wandb.init`` (tags, log_model, ...).
    """
    from lightning.pytorch.loggers import WandbLogger

    if mode == "auto":
        mode = "online" if wandb_has_credentials() else "offline"
    if mode == "offline":
        os.environ.setdefault("WANDB_SILENT", "true")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    _keep_wandb_files_in(Path(save_dir) / "wandb")
    sweep = sweep_context()
    if sweep is not None and sweep_group:
        group = f"{group}/{sweep['sweep']}" if group else sweep["sweep"]
        if name is None:
            name = f"{sweep['job']}: {sweep['overrides']}"[:128]
    if config_file and Path(config_file).is_file():
        from omegaconf import OmegaConf

        kwargs.setdefault("config", OmegaConf.to_container(OmegaConf.load(config_file), resolve=False))
    kwargs = {k: v for k, v in {**kwargs, "group": group, "name": name}.items() if v is not None}
    log.info("W&B logging %s to %s (group %s)", mode, save_dir, group)
    return WandbLogger(project=project, save_dir=save_dir, mode=mode, **kwargs)


def mlflow_logger(experiment_name: str, save_dir: str, tracking_uri: str | None = None, run_name: str | None = None,
                  config_file: str | None = None, tags: dict | None = None):
    """A Lightning ``MLFlowLogger`` whose metric names keep their cut-off (``val/recall@20`` ->
    ``val/recall_at_20``; MLflow forbids ``@`` and Lightning would drop it, giving ``recall20``).

    Args:
        experiment_name: MLflow experiment (runs of one task together).
        save_dir: with no ``tracking_uri``, a store of this run alone: ``<save_dir>/mlflow.db``
            (SQLite; MLflow 3 retired the file store) and artifacts under ``<save_dir>/artifacts``.
        tracking_uri: a tracking server or shared database (``http://...``, ``sqlite:///...``).
        run_name: MLflow run name (None: MLflow's).
        config_file: the run's resolved ``config.yaml``: logged as flattened parameters and as an
            artifact.
        tags: run tags.
    """
    from lightning.pytorch.loggers import MLFlowLogger

    from mmrec.utils.config import flatten

    class _Logger(MLFlowLogger):
        def log_metrics(self, metrics, step=None):
            super().log_metrics({mlflow_key(k): v for k, v in metrics.items()}, step)

        def log_run_record(self, record_file: Path) -> None:
            """The final ``metrics.json``: its metrics as ``selected/...`` and the file as an artifact."""
            record = json.loads(Path(record_file).read_text())
            super().log_metrics({mlflow_key(f"selected/{k}"): v for k, v in record.get("metrics", {}).items()})
            self.experiment.log_artifact(self.run_id, str(record_file))

    Path(save_dir).mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or f"sqlite:///{Path(save_dir).resolve() / 'mlflow.db'}"
    artifacts = None if tracking_uri else (Path(save_dir).resolve() / "artifacts").as_uri()
    logger = _Logger(experiment_name=experiment_name, run_name=run_name, tracking_uri=uri, tags=tags,
                     artifact_location=artifacts)
    if config_file and Path(config_file).is_file():
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False)
        logger.log_hyperparams(flatten(config))
        logger.experiment.log_artifact(logger.run_id, str(config_file))
    log.info("MLflow logging to %s (experiment %s)", uri, experiment_name)
    return logger


def mlflow_key(name: str) -> str:
    """A metric name MLflow accepts: ``@k`` becomes ``_at_k``."""
    return name.replace("@", "_at_")


_WANDB_DIRS = {"WANDB_DATA_DIR": "data", "WANDB_CACHE_DIR": "cache", "WANDB_ARTIFACT_DIR": "artifacts"}
_set_by_us: set[str] = set()


def _keep_wandb_files_in(folder: Path) -> None:
    """Point W&B's staging, cache and artifact folders (default: under ``~/.local/share`` and
    ``~/.cache``) into the run's ``wandb/`` folder, so that copying the run folder copies all of
    the run; a variable the user set stays theirs."""
    for var, sub in _WANDB_DIRS.items():
        if var not in os.environ or var in _set_by_us:
            os.environ[var] = str(folder / sub)
            _set_by_us.add(var)


def finish_wandb() -> None:
    """Close any open W&B run (called in ``finally`` so a crashed job does not poison the next)
    and return only once its files are complete on disk.

    ``wandb.finish()`` alone is not enough: it waits for the exit record to be *handled*, but
    the service process (wandb-core) keeps the last, partly filled 32 KiB block of
    ``run-*.wandb`` in memory and writes it when it closes the run's stream, which it does
    after a fire-and-forget "finish" message. On a busy machine a reader (``wandb sync``, a
    test, a report) could open the file before that and see no final summary. Tearing the
    service down waits for the process to exit, i.e. for every stream to be closed and
    flushed; the next run starts a fresh service (about 0.25 s).
    """
    import sys

    wandb = sys.modules.get("wandb")  # a run that never imported wandb has none open: importing it costs ~100 MB
    if wandb is not None and wandb.run is not None:
        wandb.finish()
        wandb.teardown()


#: Row order of :func:`metrics_table`: headline accuracy first, then the beyond-accuracy metrics.
METRIC_ORDER = ("recall", "ndcg", "precision", "map", "hit", "coverage", "gini", "entropy", "avg_pop", "aplt",
                "novelty", "ild_content", "ild_emb", "cold_exposure")
_SPLIT_ORDER = ("val", "test")
_GROUP_ORDER = ("", "warm/", "cold/")


def metric_sort_key(head: str) -> tuple:
    """Sort key of ``split/[group/]name``: split (val, test), group (all, warm, cold), then
    :data:`METRIC_ORDER`; unknown parts last, alphabetically."""
    split, _, rest = head.partition("/")
    group, name = (rest.rsplit("/", 1)[0] + "/", rest.rsplit("/", 1)[1]) if "/" in rest else ("", rest)

    def position(value, order):
        return (order.index(value), "") if value in order else (len(order), value)

    return position(split, _SPLIT_ORDER), position(group, _GROUP_ORDER), position(name, METRIC_ORDER)


def metrics_table(metrics: dict[str, float], ks) -> str:
    """``metrics`` (``split/name@k``) as a plain table, columns k: the :data:`HEADLINE` rows
    first (validation and test Recall / NDCG), then per split the other accuracy and beyond-
    accuracy rows and the warm and cold groups, each block under a rule."""
    rows = {}
    for key, value in metrics.items():
        if "@" not in key or "/" not in key:
            continue
        head, k = key.rsplit("@", 1)
        rows.setdefault(head, {})[int(k)] = value
    width = max([18] + [len(head) + 2 for head in rows])
    header = f"{'metric':<{width}}" + "".join(f"{'@' + str(k):>9}" for k in ks)
    rule = "-" * len(header)
    headline = [h for h in HEADLINE if h in rows]
    rest = sorted((h for h in rows if h not in headline), key=metric_sort_key)
    lines = [header, rule]
    previous = None
    for head in headline + rest:
        # a rule after the headline rows and between split/group blocks (val, val/warm, ...)
        block = "headline" if head in headline else head.rsplit("/", 1)[0]
        if previous is not None and block != previous:
            lines.append(rule)
        previous = block
        lines.append(f"{head:<{width}}" + "".join(f"{rows[head].get(k, float('nan')):>9.4f}" for k in ks))
    return "\n".join(lines)


HEADLINE = ("val/recall", "val/ndcg", "test/recall", "test/ndcg")
"""Rows printed first by :func:`metrics_table`: the figures a comparison quotes."""


# Lightning's info lines that say nothing about this run (hardware it does not use, an
# advertisement, checkpoint restores that train() announces itself). Matched at the start.
_LIGHTNING_NOISE = ("GPU available:", "TPU available:", "HPU available:", "💡 Tip:",
                    "Restoring states from the checkpoint path", "Loaded model weights from the checkpoint")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_LIGHTNING_NOISE)


def quiet_lightning() -> None:
    """Drop :data:`_LIGHTNING_NOISE` from Lightning's log and its own deprecation warning about
    ``LeafSpec`` (raised inside Lightning, nothing a user can change); idempotent."""
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
