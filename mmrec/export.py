"""Export a finished run as a serving bundle: ``python -m mmrec.export run=<run folder>``.

Export belongs to the training side; the bundle (:mod:`mmrec.serving.bundle`) is the only
thing it shares with serving. :func:`export_run` rebuilds the run from its resolved
``config.yaml`` with the composition root (:func:`mmrec.run.assemble`, no Lightning), loads the
checkpoint that was selected on validation (``metrics.json``'s ``best_checkpoint``, inside the
run folder), computes the user and item vectors once - through the same functions evaluation
ranks with - and writes them with everything serving needs into a bundle.

Scores are dot products for every model: a late-fusion model (MMGCN, GRCN, VBPR late) scores
``sum_m <u_m, i_m>``, which is the dot product of the concatenated per-modality vectors its
encoder already returns (tested: bundle scores equal the model's ``score_all``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from mmrec import __version__
from mmrec.data.prepared import feature_modality_encoder
from mmrec.run import assemble, saved_config
from mmrec.serving.bundle import BundleError, load_bundle, write_bundle
from mmrec.two_stage import RankerSettings, csr_with_times
from mmrec.utils import cli
from mmrec.utils.errors import hydra_user_errors

log = logging.getLogger(__name__)


def _checkpoint(run_dir: Path, record: dict[str, Any], trainable: bool) -> Path | None:
    """The run's validation-selected checkpoint, always inside ``run_dir`` (a copied or moved run
    folder is exported from its own checkpoint, never from the folder it was copied from), or
    ``None`` for a model that has nothing to load."""
    best = record.get("best_checkpoint")
    if not trainable:
        return None
    if not best:
        raise BundleError(f"{run_dir / 'metrics.json'}: the run recorded no selected checkpoint (fast_dev_run, or "
                          f"no ModelCheckpoint callback): train it with checkpointing to export it")
    path = Path(best)
    if not path.is_absolute():
        path = run_dir / path
    try:
        inside = path.resolve().is_relative_to(run_dir.resolve())
    except OSError:
        inside = False
    if not inside:
        # recorded by the folder this one was copied or moved from: its own copy of the same file
        own = run_dir / "checkpoints" / path.name
        if not own.is_file():
            raise BundleError(f"{run_dir / 'metrics.json'}: the selected checkpoint is recorded as {best}, outside this "
                              f"run folder, and {own} does not exist: copy the run folder with its checkpoints/, or "
                              f"export the original folder")
        return own
    if not path.is_file():
        raise BundleError(f"{path}: the selected checkpoint is missing; the run cannot be exported without it "
                          f"(retrain, or restore the file)")
    return path


def _load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load the model's weights (the training module's ``encoder.*`` entries) from the selected
    checkpoint; a truncated or foreign file is a :class:`BundleError` naming it."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    except Exception as err:  # noqa: BLE001 - torch raises OSError, RuntimeError, EOFError, ... for a damaged file
        raise BundleError(f"{checkpoint}: the selected checkpoint cannot be read ({type(err).__name__}: {err}); it is "
                          f"truncated or damaged: restore it, or retrain the run") from err
    weights = {key.removeprefix("encoder."): value for key, value in state.items() if key.startswith("encoder.")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise BundleError(f"{checkpoint}: its weights do not fit the model of the run's config.yaml ({err}); the "
                          f"checkpoint or config.yaml was replaced after training") from err


def _finite(name: str, vectors: torch.Tensor, raw_ids: np.ndarray, checkpoint: Path | None) -> None:
    """Refuse non-finite vectors: served, a NaN score ranks as if it were a number."""
    bad = ~torch.isfinite(vectors).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().squeeze(1)[:5].tolist()
        raise BundleError(f"the selected checkpoint {checkpoint} gives NaN or inf {name} vectors for {int(bad.sum())} "
                          f"rows (e.g. {[str(raw_ids[r]) for r in rows]}): the model diverged; retrain it (a lower "
                          f"learning rate, gradient clipping: trainer.gradient_clip_val)")


def _with_ids(table: pd.DataFrame, id_column: str, kind: str) -> pd.DataFrame:
    """``table`` with an empty ``raw_id`` replaced by the dataset's own id (an MMRec-format
    dataset has no original ids), and for items an empty ``title`` by the raw id: every served
    id is unique and every card has a name."""
    table = table.copy()
    raw = table["raw_id"].fillna("").astype(str)
    table["raw_id"] = raw.where(raw != "", table[id_column].astype(str))
    duplicated = table["raw_id"][table["raw_id"].duplicated()]
    if len(duplicated):
        raise BundleError(f"the dataset's {kind} raw ids are not unique (e.g. {duplicated.iloc[0]!r}, with the "
                          f"dataset's own ids standing in for empty ones); a served id must name one {kind}")
    if "title" in table:
        title = table["title"].fillna("").astype(str)
        table["title"] = title.where(title != "", table["raw_id"])
    return table


def export_run(run_dir: str | Path, out: str | Path | None = None, force: bool = False,
               index: dict[str, Any] | None = None, group_column: str | None = None, verify: bool = True,
               ranker: RankerSettings | None = None) -> Path:
    """Export the run in ``run_dir`` into a bundle at ``out`` (default ``<run_dir>/bundle``).

    Args:
        index: build a FAISS index now and save it in the bundle: ``{"factory": "HNSW32",
            "ef_construction": 200}`` (``None``: no saved index; exact search needs none).
        group_column: an items-table column copied as the ``group`` of the category-cap rule.
        verify: load the written bundle back (checksums) before returning.
        ranker: fit a learned ranking stage (:func:`mmrec.two_stage.fit_ranker`: candidates from
            the training histories, labels from validation) and put it in the bundle.
    """
    run_dir = Path(run_dir)
    config_file, metrics_file = run_dir / "config.yaml", run_dir / "metrics.json"
    for required in (config_file, metrics_file):
        if not required.is_file():
            raise BundleError(f"{required}: missing; {run_dir} is not a finished `python -m mmrec.train` run folder "
                              f"(a run writes config.yaml and, when it finishes, metrics.json)")
    record = json.loads(metrics_file.read_text())
    cfg = saved_config(config_file)
    start = time.perf_counter()
    run = assemble(cfg)  # the run as training built it (a closed-form model refitted with the run's seed)
    model, data = run.model, run.data
    checkpoint = _checkpoint(run_dir, record, model.trainable)
    if checkpoint is not None:
        _load_weights(model, checkpoint)
    model.eval()
    with torch.no_grad():
        # a history model's users from their known history (training + validation), as at test time
        user_emb, item_emb = run.vectors("known")
    unrankable = run.unrankable_items()
    ds = data.dataset
    items = _with_ids(ds.items[["item", "raw_id", "title", "text", "image"]], "item", "item")
    users = _with_ids(ds.users[["user", "raw_id"]], "user", "user")
    _finite("user", user_emb, users["raw_id"].to_numpy(), checkpoint)
    _finite("item", item_emb, items["raw_id"].to_numpy(), checkpoint)
    indptr, indices, times = csr_with_times(ds.interactions, (0, 1), ds.num_users)  # known: train + valid
    arrays: dict[str, np.ndarray] = {
        "user_vectors": user_emb.detach().float().cpu().numpy(),
        "item_vectors": item_emb.detach().float().cpu().numpy(),
        "item_rankable": (np.ones(ds.num_items, dtype=bool) if unrankable is None
                          else (~unrankable).cpu().numpy()),
        "item_popularity": data.train_matrix.item_degree().cpu().numpy().astype(np.int64),
        "history_indptr": indptr, "history_indices": indices,
    }
    tower = model.serving_user_tower()
    if tower is not None:  # two-tower: new visitors go through the user tower
        arrays.update({name: t.float().cpu().numpy() for name, t in tower[0].items()})
    content = data.features.content_vectors()
    if content is not None:
        arrays["content_vectors"] = content.float().numpy()
    extra: dict[str, Any] = {"num_users": ds.num_users, "num_items": ds.num_items,
                             "dim": int(arrays["item_vectors"].shape[1]), "score": "dot"}
    if tower is not None:
        extra["user_tower"] = tower[1]
    if "text" in data.features:
        values, mask = data.features["text"]
        arrays["text_vectors"] = (values * mask.unsqueeze(1)).float().numpy()
        extra["text_encoder"] = feature_modality_encoder(ds.feature_entries["text"])
    if group_column:
        if group_column not in ds.items.columns:
            raise BundleError(f"export.group_column={group_column!r}: the items table of {ds.root} has no such column "
                              f"(it has {list(ds.items.columns)})")
        items["group"] = ds.items[group_column].astype(str)
    images = {int(i): p for i, v in zip(ds.items["item"], ds.items["image"]) if (p := ds.local_image(v)) is not None}
    index_writer = None
    if index and index.get("factory"):
        from mmrec.serving.index import FaissIndex

        params = {k: v for k, v in index.items() if k in ("ef_construction", "mips")}
        built = FaissIndex(arrays["item_vectors"], arrays["item_rankable"], index["factory"], **params)
        log.info("built a FAISS %s index in %.1fs", index["factory"], built.build_seconds)
        index_writer = built.save
        # the key serving matches its own settings against (factory and inner-product search)
        extra["index"] = {"factory": f"{index['factory']}/{built.mips}", "build_seconds": round(built.build_seconds, 3),
                          **params}
        target = index.get("target_recall")
        if target is not None:  # the search breadth for the target, chosen on user queries, recall measured on others
            rng = np.random.default_rng(int(index.get("seed", 0)))
            sample = rng.permutation(len(arrays["user_vectors"]))[:int(index.get("tuning_queries", 1000))]
            tuned = built.tune(np.asarray(arrays["user_vectors"][np.sort(sample)]), float(target),
                               int(index.get("recall_k", 100)))
            extra["index"].update(tuned)
            log.info("FAISS %s: %s for recall@%d >= %.3f (measured %.4f on %d held-out user queries)", index["factory"],
                     {k: v for k, v in tuned.items() if k in ("efSearch", "nprobe")}, tuned["k"], float(target),
                     tuned["recall"], tuned["queries"])
    ranker_model = None
    if ranker is not None:
        from mmrec.serving.two_stage import StageData, bundle_arrays
        from mmrec.two_stage import fit_ranker, item_groups

        booster, report = fit_ranker(run, ranker, group_column)
        known = StageData.build(item_emb.detach().float().cpu(), None if content is None else content.float(),
                                dict(data.features.dims), indptr, indices, times, torch.from_numpy(arrays["item_rankable"]),
                                item_groups(ds.items, group_column), ranker.neighbours)
        arrays.update(bundle_arrays(known))
        extra["ranker"] = {**report, "now": known.now, "modalities": dict(data.features.dims)}
        ranker_model = booster.model_to_string()
    card = {
        "model": cfg.model.encoder._target_.rsplit(".", 1)[-1], "model_target": cfg.model.encoder._target_,
        "dataset": ds.name, "dataset_root": str(ds.root), "metrics": record.get("metrics", {}),
        "selected_on": record.get("optimized_metric"), "best_epoch": record.get("best_epoch"),
        "epochs_trained": record.get("epochs_trained"),
        "checkpoint": None if checkpoint is None else str(checkpoint), "seed": record.get("seed"),
        "run": str(run_dir.resolve()), "mmrec_version": __version__,
        # training stopped early by Ctrl-C / SIGTERM: the best checkpoint so far, not a finished run
        "interrupted": record.get("interrupted"),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    out = Path(out) if out is not None else run_dir / "bundle"
    if card["interrupted"]:
        log.warning("%s: the run was interrupted (%s); the bundle holds its best checkpoint so far and says so in "
                    "its model card", run_dir, card["interrupted"])
    write_bundle(out, arrays, items, users, card, extra, images, index_writer, force=force, ranker_model=ranker_model)
    if verify:
        load_bundle(out, verify=True)
    log.info("Exported %s (%s on %s, %d users x %d items, %d-d) to %s in %.1fs", run_dir, card["model"], ds.name,
             ds.num_users, ds.num_items, extra["dim"], out, time.perf_counter() - start)
    return out


def export(cfg: DictConfig) -> Path:
    """``python -m mmrec.export`` without Hydra's wrapper: the bundle of ``cfg.run``."""
    index = OmegaConf.to_container(cfg.index, resolve=True) if cfg.get("index") else None
    ranker = instantiate(cfg.ranker, _convert_="all") if cfg.get("ranker") else None
    return export_run(cfg.run, cfg.out, force=cfg.force, index=index, group_column=cfg.group_column,
                      verify=cfg.verify, ranker=ranker)


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with hydra_user_errors():
        out = export(cfg)
    print(f"bundle written to {out}")


if __name__ == "__main__":
    cli.run(main, "export")  # a mistyped key or choice: one error line (mmrec.utils.cli)
