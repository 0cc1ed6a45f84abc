"""Start-up validation of a composed configuration: every value range in one table.

Hydra checks that keys exist and that group choices are known; it cannot know that
``trainer.max_epochs=0`` trains nothing or that ``evaluation.ks=[0]`` breaks evaluation after
a full epoch. :func:`check_config` answers those questions from the composed ``DictConfig``
alone, before any dataset is prepared or loaded and before ``train()`` writes anything: a
bad value costs milliseconds, not an epoch, and leaves no run folder that looks like a result.

* :data:`RULES` maps a dotted key to its :class:`Spec` (type and range). A key that is not in
  the configuration is skipped: models, samplers and datasets have different keys, and a
  rule constrains a key only where it exists. ``*`` matches any child of a mapping.
* A few checks relate keys or need a class (:func:`_cross_checks`): the monitored metric is
  one that evaluation reports, ``min_epochs <= max_epochs``, candidates >= negatives, the
  model accepts the fusion, a resume checkpoint exists.

Every problem is reported at once, each naming the key, the bad value and what is allowed.
It runs first in ``mmrec.train``'s ``train()`` and ``build()`` and, as the Hydra callback
:class:`CheckConfig` (``conf/hydra/default.yaml``), before Hydra creates the run folder of
``python -m mmrec.train`` or ``python -m mmrec.prepare``. ``mmrec.export`` rebuilds a run
from its saved config without it: that config passed at training, and its ``ckpt_path`` (the
checkpoint the run resumed from) need not exist any more.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

from mmrec.utils.errors import EXIT_USER_ERROR, MmrecError

try:  # a Hydra callback when Hydra is present (it always is for the entry points)
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[assignment,misc]


class ConfigError(MmrecError, ValueError):
    """A configuration that composes but does not make sense."""


@dataclass(frozen=True)
class Spec:
    """Allowed values of one key: a type (``int``, ``float``, ``bool`` or ``choice``), an
    optional range (``low``/``high``, each inclusive unless ``*_open``), and whether null is
    allowed. ``float`` accepts ints and refuses NaN / infinity; ``int`` refuses bools and
    floats (``max_epochs=2.0`` is a typo, not a request)."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    choices: tuple = ()

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or (value < self.high or (not self.high_open and value == self.high))

    def describe(self) -> str:
        if self.kind == "bool":
            text = "true or false"
        elif self.kind == "choice":
            text = f"one of {list(self.choices)}"
        elif self.low is not None and self.high is not None:
            text = (f"{'an int' if self.kind == 'int' else 'a float'} in "
                    f"{'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                    f"{')' if self.high_open else ']'}")
        else:
            text = "an int" if self.kind == "int" else "a finite float"
            if self.low is not None:
                text += f" {'>' if self.low_open else '>='} {_num(self.low)}"
            if self.high is not None:
                text += f" {'<' if self.high_open else '<='} {_num(self.high)}"
        return text + (" or null" if self.nullable else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _int(low: int, high: int | None = None, nullable: bool = False) -> Spec:
    return Spec("int", low=low, high=high, nullable=nullable)


def _float(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, nullable: bool = False) -> Spec:
    return Spec("float", low=low, high=high, low_open=low_open, high_open=high_open, nullable=nullable)


BOOL = Spec("bool")
POSITIVE = _int(1)               # counts and sizes: at least one
NON_NEGATIVE = _int(0)           # counts where 0 means "none" (layers, workers, kNN of cold items)
SHARE = _float(0.0, 1.0)         # a share of something: [0, 1]
PROPER_SHARE = _float(0.0, 1.0, high_open=True)   # a share that must leave something: [0, 1) (dropout, held-out items)
WEIGHT = _float(0.0)             # a loss or mixing weight: never negative
SEED = _int(0, 2**32 - 1)        # what numpy / Lightning accept (Lightning truncates seed=1.5 to 1 silently)

#: Key -> allowed values. Only keys present in the composed configuration are checked.
RULES: dict[str, Spec] = {
    # run level (conf/train.yaml)
    "seed": _int(0, 2**32 - 1, nullable=True),   # as SEED; null: not seeded
    "test": BOOL,
    "keep_freed_memory": BOOL,
    "threads": _int(1, nullable=True),
    "evaluation.rank_block": _int(1, nullable=True),
    "evaluation.mask_history": BOOL,
    # evaluation.ks and evaluation.lists: in _cross_checks (a list; the lists modes are the evaluator's)
    # preparation (conf/prepare.yaml): where the feature stages encode
    "prepare.engine": Spec("choice", choices=("local", "ray")),
    "prepare.ray.actors": POSITIVE,
    "prepare.ray.num_cpus": _int(1, nullable=True),
    "prepare.ray.cpus_per_actor": _float(0.0),
    "prepare.ray.gpus_per_actor": _float(0.0),
    "prepare.ray.threads_per_actor": _int(1, nullable=True),
    # dataset: the DataModule (every dataset)
    "dataset.pairs_per_batch": POSITIVE,
    "dataset.eval_users_per_batch": POSITIVE,
    "model.users_per_batch": POSITIVE,
    # serving: the Recommender's settings and request limits (mmrec.serve, mmrec.recommend)
    "recommender.candidates": POSITIVE,
    "recommender.content_candidates": NON_NEGATIVE,
    "recommender.recent": POSITIVE,
    "recommender.query_items": POSITIVE,
    "recommender.limits.max_k": POSITIVE,
    "recommender.limits.max_items": POSITIVE,
    "recommender.limits.max_query_chars": POSITIVE,
    "recommender.limits.max_body_bytes": POSITIVE,
    "recommender.limits.search_limit": POSITIVE,
    "dataset.num_workers": NON_NEGATIVE,
    "dataset.verify": BOOL,
    # dataset sources: the demo generator
    "dataset.source.num_users": POSITIVE,
    "dataset.source.num_items": POSITIVE,
    "dataset.source.num_styles": POSITIVE,
    "dataset.source.styles_per_user": POSITIVE,
    "dataset.source.interactions_per_user": _int(5),   # the generator's minimum per user
    "dataset.source.noise_share": SHARE,
    "dataset.source.popularity_exponent": _float(0.0),
    "dataset.source.cold_item_share": PROPER_SHARE,          # all items cold: nothing to train on
    "dataset.source.image_size": POSITIVE,
    "dataset.source.misleading_text_share": SHARE,
    "dataset.source.feature_dim": POSITIVE,
    "dataset.source.seed": SEED,
    # dataset sources: the synthetic (Amazon-shaped) generator
    "dataset.source.num_interactions": POSITIVE,
    "dataset.source.user_exponent": _float(0.0),
    "dataset.source.item_exponent": _float(0.0),
    "dataset.source.chunk_items": POSITIVE,
    # dataset sources: the fashion shop's shopper generator
    "dataset.source.num_shoppers": POSITIVE,
    "dataset.source.interactions_per_shopper": _int(5),
    "dataset.source.temperature": _float(0.0, low_open=True),
    "dataset.source.valid_ratio": PROPER_SHARE,
    "dataset.source.test_ratio": PROPER_SHARE,
    # dataset sources: real data (MovieLens cold split, Amazon 2023 download, split and images)
    "dataset.source.cold_items": PROPER_SHARE,
    "dataset.source.cold_seed": SEED,
    "dataset.source.kcore": POSITIVE,
    "dataset.source.download_retries": POSITIVE,        # attempts, the first included
    "dataset.source.download_timeout": _float(0.0, low_open=True),
    "dataset.source.block_mb": POSITIVE,
    "dataset.source.split.valid_ratio": PROPER_SHARE,
    "dataset.source.split.test_ratio": PROPER_SHARE,
    "dataset.source.split.cold_items": PROPER_SHARE,
    "dataset.source.split.seed": SEED,
    "dataset.source.images.workers": POSITIVE,
    "dataset.source.images.timeout": _float(0.0, low_open=True),
    "dataset.source.images.retries": NON_NEGATIVE,
    "dataset.source.images.min_size": POSITIVE,
    "dataset.source.images.max_side": POSITIVE,
    "dataset.source.images.max_pixels": POSITIVE,
    "dataset.source.images.max_failure_share": SHARE,
    # model: encoder (keys differ per model; LightGCN documents num_layers=0 as matrix factorisation)
    "model.l2_weight": WEIGHT,
    "model.encoder.factors": POSITIVE,                   # iALS
    "model.encoder.regularization": WEIGHT,
    "model.encoder.iterations": POSITIVE,
    "model.encoder.embedding_dim": POSITIVE,
    "model.encoder.num_layers": NON_NEGATIVE,
    "model.encoder.num_ui_layers": NON_NEGATIVE,
    "model.encoder.num_ii_layers": NON_NEGATIVE,
    "model.encoder.routing_iters": NON_NEGATIVE,
    "model.encoder.knn_k": POSITIVE,
    "model.encoder.cold_neighbours": NON_NEGATIVE,
    "model.encoder.edge_dropout": PROPER_SHARE,
    "model.encoder.modality_loss_weight": WEIGHT,
    "model.encoder.lambda_coeff": SHARE,
    "model.encoder.eps": WEIGHT,                         # SimGCL / XSimGCL: noise length
    "model.encoder.cl_weight": WEIGHT,                   # weight of a contrastive term
    "model.encoder.reg_weight": WEIGHT,                  # BM3, MGCN: weight of the model's own regulariser term
    "model.encoder.num_mm_layers": NON_NEGATIVE,         # LGMRec: modality hops
    "model.encoder.num_hyper_layers": NON_NEGATIVE,      # LGMRec: hypergraph layers
    "model.encoder.num_hyperedges": POSITIVE,            # LGMRec: hyperedges per modality
    "model.encoder.keep_rate": _float(0.0, 1.0, low_open=True),   # LGMRec: share of hyperedge memberships kept
    "model.encoder.alpha": _float(0.0, low_open=True),   # iALS confidence; LGMRec: weight of the global part
    "model.encoder.user_knn_k": POSITIVE,                # DRAGON: co-occurring users per user
    "model.encoder.cl_layer": NON_NEGATIVE,              # XSimGCL: l*, the contrasted layer
    "model.encoder.random_prune_share": SHARE,           # LayerGCN: steps pruned uniformly instead of by degree
    "model.encoder.concat": BOOL,
    "model.encoder.learn_modality_weights": BOOL,
    "model.graph_weights.*": WEIGHT,
    "model.encoder.heads": POSITIVE,                     # SASRec / BERT4Rec
    "model.encoder.layers": POSITIVE,
    "model.encoder.dropout": PROPER_SHARE,
    "model.encoder.max_len": POSITIVE,                   # BERT4Rec: >= 2, its constructor says so
    "model.encoder.mask_prob": _float(0.0, 1.0, low_open=True, high_open=True),
    "model.encoder.negatives": POSITIVE,
    "model.encoder.loss": Spec("choice", choices=("softmax", "bpr", "ce", "bce")),   # two-tower | SASRec
    "model.encoder.temperature": _float(0.0, low_open=True),   # two-tower
    "model.encoder.uniform_negatives": NON_NEGATIVE,
    "model.encoder.pooling": Spec("choice", choices=("mean", "attention")),   # core.sequences.POOLINGS (no torch import here)
    "model.encoder.item_id": BOOL,
    "model.encoder.user_id": BOOL,
    "model.encoder.logq": BOOL,
    "model.encoder.subsample_history": BOOL,
    "model.encoder.id_dropout": PROPER_SHARE,
    # model: optimiser (absent for pop / random)
    "model.optimizer.lr": _float(0.0, low_open=True),
    "model.optimizer.weight_decay": WEIGHT,
    # fusion
    "fusion.dropout": PROPER_SHARE,
    "fusion.hidden": _int(1, nullable=True),
    "fusion.attention_dim": POSITIVE,
    "fusion.learn_weights": BOOL,
    "fusion.weights.*": WEIGHT,
    # negative sampling
    "sampler.num_negatives": POSITIVE,
    "sampler.num_candidates": POSITIVE,
    "sampler.alpha": _float(),
    "sampler.max_mix": _float(0.0, 1.0, low_open=True),
    # trainer
    "trainer.max_epochs": POSITIVE,      # Lightning's -1 (no limit) is refused: early stopping is the only end
    "trainer.min_epochs": NON_NEGATIVE,
    "trainer.check_val_every_n_epoch": _int(1, nullable=True),
    "trainer.gradient_clip_val": _float(0.0, nullable=True),
    "trainer.num_sanity_val_steps": _int(-1),   # -1: the whole validation set
    "trainer.log_every_n_steps": POSITIVE,
    "trainer.num_nodes": POSITIVE,
    "trainer.enable_model_summary": BOOL,
    "trainer.accelerator": Spec("choice", choices=("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")),
    # callbacks: selection and stopping on a validation metric that grows when the model improves
    "callbacks.*.mode": Spec("choice", choices=("max",)),
    "callbacks.early_stopping.patience": POSITIVE,
    "callbacks.early_stopping.min_delta": WEIGHT,
    "callbacks.model_checkpoint.save_top_k": _int(-1),   # -1: keep every checkpoint
    "callbacks.model_checkpoint.save_last": BOOL,
    "callbacks.wandb_recommendations.num_users": POSITIVE,
    "callbacks.wandb_recommendations.k": POSITIVE,
}

_ABSENT = object()
#: Checkpoint names Lightning resolves itself (``trainer.fit(ckpt_path="last")``).
_LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every value of ``cfg`` outside its allowed range.

    Reads only the keys it checks (nothing else is resolved), prepares nothing, writes nothing.
    """
    problems = [f"{key}={_show(value)}: must be {spec.describe()}"
                for pattern, spec in RULES.items() for key, value in _values(cfg, pattern)
                if not spec.accepts(value)]
    problems += _cross_checks(cfg)
    if problems:
        head = "invalid configuration" if len(problems) == 1 else f"{len(problems)} invalid configuration values"
        raise ConfigError(f"{head} (checked before any data work: nothing was prepared or written; "
                          f"set each as key=value on the command line):\n" + "\n".join(f"  - {p}" for p in problems))


class CheckConfig(_HydraCallback):
    """Hydra callback: :func:`check_config` before Hydra creates the run folder of a single
    run (in a multirun each job is checked by ``train()`` before it prepares anything)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_config(config)
            _run_folder_check(config)
        except MmrecError as err:
            # Hydra turns a callback's exception into a warning and goes on to create the run
            # folder and start the job; exiting is the only way to stop before that.
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from err


def _run_folder_check(config: DictConfig) -> None:
    """A training's run folder (``hydra.run.dir``) must be its own, and a resumed checkpoint of
    the configured model class (:mod:`mmrec.runs`): checked before Hydra writes ``.hydra/`` into
    a folder that holds another run."""
    if not all(key in config for key in ("trainer", "model", "ckpt_path")):
        return  # not a training (prepare writes no run folder of this kind)
    from mmrec.runs import RunFolderError, config_resume_problem, folder_problem, secondary_process

    if secondary_process():  # a DDP process re-running the command in the first one's run folder
        return

    run_dir = OmegaConf.select(config, "hydra.run.dir", default=None)
    ckpt = config.get("ckpt_path")
    problem = folder_problem(run_dir, ckpt) if run_dir else None
    problem = problem or config_resume_problem(ckpt, OmegaConf.select(config, "model.encoder._target_"))
    if problem:
        raise RunFolderError(problem)


def _values(cfg: DictConfig, pattern: str) -> Iterator[tuple[str, Any]]:
    """``(key, value)`` of the keys matching ``pattern`` (``*`` = any child of a mapping)."""
    head, star, tail = pattern.partition(".*")
    if not star:
        value = OmegaConf.select(cfg, pattern, default=_ABSENT)
        if value is not _ABSENT:
            yield pattern, value
        return
    node = OmegaConf.select(cfg, head, default=None)
    if isinstance(node, DictConfig):
        for child in node.keys():
            yield from _values(cfg, f"{head}.{child}{tail}")


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return repr(value)


def _get(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=_ABSENT)
    return None if value is _ABSENT else value


def _cross_checks(cfg: DictConfig) -> list[str]:
    """Checks that need a list, several keys or a class: evaluation cut-offs and lists mode,
    monitored metrics, epochs, sampler candidates, devices, model/fusion, resume checkpoint."""
    from mmrec.evaluation.evaluator import LIST_MODES

    problems = []
    ks = OmegaConf.select(cfg, "evaluation.ks", default=_ABSENT)
    ks_ok = isinstance(ks, ListConfig) and len(ks) > 0 and all(POSITIVE.accepts(k) for k in ks) \
        and len(set(ks)) == len(ks)
    if ks is not _ABSENT and not ks_ok:
        problems.append(f"evaluation.ks={_show(ks)}: must be a non-empty list of distinct ints >= 1 "
                        f"(the cut-offs k of Recall@k, NDCG@k, ...), e.g. [10,20,50]")
    lists = _get(cfg, "evaluation.lists")
    if lists is not None and lists not in LIST_MODES:
        problems.append(f"evaluation.lists={lists!r}: must be one of {list(LIST_MODES)}")
    optimized = _get(cfg, "optimized_metric")
    monitors = [("optimized_metric", optimized)] + [
        (key, metric) for key, metric in _values(cfg, "callbacks.*.monitor") if metric != optimized]  # once each
    for key, metric in monitors:
        if metric is not None:
            problems += _monitor_problem(key, metric, list(ks) if ks_ok else None, lists)
    max_epochs, min_epochs = _get(cfg, "trainer.max_epochs"), _get(cfg, "trainer.min_epochs")
    if RULES["trainer.max_epochs"].accepts(max_epochs) and RULES["trainer.min_epochs"].accepts(min_epochs) \
            and min_epochs > max_epochs:
        problems.append(f"trainer.min_epochs={min_epochs}: must be <= trainer.max_epochs={max_epochs}")
    negatives, candidates = _get(cfg, "sampler.num_negatives"), _get(cfg, "sampler.num_candidates")
    if POSITIVE.accepts(negatives) and POSITIVE.accepts(candidates) and candidates < negatives:
        problems.append(f"sampler.num_candidates={candidates}: must be >= sampler.num_negatives={negatives} "
                        f"(the kept negatives are chosen among the candidates)")
    devices = _get(cfg, "trainer.devices")
    if devices is not None and not _devices_ok(devices):
        problems.append(f"trainer.devices={_show(devices)}: must be an int >= 1, -1 (every device), 'auto', "
                        f"or device ids ([0, 1] or '0,1')")
    problems += _fusion_problem(cfg)
    problems += _history_problem(cfg)
    ckpt = _get(cfg, "ckpt_path")
    if ckpt is not None and str(ckpt) not in _LIGHTNING_CKPT_NAMES and not Path(str(ckpt)).is_file():
        problems.append(f"ckpt_path={str(ckpt)!r}: no such checkpoint file (resume from a run's "
                        f"checkpoints/last.ckpt, or ckpt_path=null to start afresh)")
    return problems


def _monitor_problem(key: str, metric: Any, ks: list[int] | None, lists: Any) -> list[str]:
    """Why ``metric`` cannot drive model selection, or nothing: it must be a validation metric
    that every validation reports (``val/[group/]name@k`` with ``k`` in ``evaluation.ks``)."""
    from mmrec.evaluation.metrics import METRICS

    if not str(metric).startswith("val/"):
        return [f"{key}={metric!r}: model selection must use a validation metric (val/...), never test."]
    match = re.fullmatch(r"val/(?:(\w+)/)?(\w+)@(\d+)", str(metric))
    groups = _item_groups()
    # the beyond-accuracy names (coverage, novelty, ...) are reported on every validation only
    # with evaluation.lists=every, and depend on the dataset (ild_content or ild_emb)
    names_known = lists != "every"
    if (match is None or (f"{match.group(1)}/" if match.group(1) else "") not in groups
            or (names_known and match.group(2) not in METRICS)
            or (ks is not None and int(match.group(3)) not in ks)):
        group_text = "|".join(g for g in groups if g)
        names = "|".join(METRICS) if names_known else "metric"
        cutoffs = f"k in evaluation.ks={ks}" if ks is not None else "k one of evaluation.ks"
        return [f"{key}={metric!r}: is not a metric validation reports; use val/[{group_text}]<{names}>@k "
                f"with {cutoffs}, e.g. val/recall@20"]
    return []


def _item_groups() -> tuple[str, ...]:
    """Prefixes of the item groups evaluation reports ("", "warm/", "cold/"), from ItemSets itself."""
    import torch

    from mmrec.core.items import ItemSets

    return tuple(ItemSets(torch.ones(1, dtype=torch.bool)).groups())


def _devices_ok(devices: Any) -> bool:
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    if isinstance(devices, str):
        return devices == "auto" or re.fullmatch(r"-1|\d+(,\d+)*,?", devices.replace(" ", "")) is not None
    if isinstance(devices, ListConfig):
        return len(devices) > 0 and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
    return False


def _fusion_problem(cfg: DictConfig) -> list[str]:
    """The model declares which fusions it accepts (``supported_fusions``); no data needed."""
    target, fusion_cfg = _get(cfg, "model.encoder._target_"), _get(cfg, "fusion")
    if target is None or fusion_cfg is None:
        return []
    from hydra.utils import get_class, instantiate

    from mmrec.fusion import fusion_name

    encoder_cls = get_class(target)
    name = fusion_name(instantiate(fusion_cfg))
    if name not in encoder_cls.supported_fusions:
        return [f"model {encoder_cls.__name__} accepts fusion in {list(encoder_cls.supported_fusions)}, "
                f"got fusion={name}; pick one of those with `fusion=<name>`."]
    return []


def _history_problem(cfg: DictConfig) -> list[str]:
    """A model that represents users from histories draws its negatives without scores, and its
    own loss must be one it has."""
    target, sampler = _get(cfg, "model.encoder._target_"), _get(cfg, "sampler._target_")
    if target is None:
        return []
    from hydra.utils import get_class

    encoder_cls = get_class(target)
    if not encoder_cls.user_from_history:
        return []
    from mmrec.models.base import history_sampler_problem

    problems = []
    if sampler is not None and (problem := history_sampler_problem(encoder_cls, get_class(sampler))):
        problems.append(problem)
    loss, allowed = _get(cfg, "model.encoder.loss"), getattr(encoder_cls, "losses", None)
    if loss is not None and allowed is not None and loss not in allowed:
        problems.append(f"model.encoder.loss={_show(loss)}: {encoder_cls.__name__} has the losses {list(allowed)}")
    return problems
