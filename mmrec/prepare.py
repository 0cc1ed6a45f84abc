"""Prepare a dataset end to end: ``python -m mmrec.prepare dataset=ml100k modality_encoder=offline``.

Runs the source's stages (Amazon 2023: download -> parse -> filter -> split -> items ->
images -> tables; ml100k: items -> images -> tables) and then one feature stage per modality
of the chosen ``modality_encoder`` (image, text: the pretrained feature extractors, not the
recommender's ``model.encoder``), which extracts the features once, offline, into
``features/<modality>.lmdb``. Every stage is resumable and a finished one is skipped; the
end prints a summary (counts after each step, missing images / text, seconds per stage),
also written to ``<root>/prepare_summary.json``.

``prepare(cfg)`` is a plain function; ``main()`` the thin Hydra wrapper.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmrec.data.prepared import (DatasetError, declare_expected, expecting, feature_problem, is_complete, is_prepared,
                                 read_manifest, source_mismatch, unregister_feature)
from mmrec.data.stages import Stage, format_summary, prepare_command, run_stages
from mmrec.config_check import check_config
from mmrec.utils import cli
from mmrec.utils.errors import hydra_user_errors

log = logging.getLogger(__name__)


def feature_stages(root: Path, modality_encoder_cfg: DictConfig | None, overwrite: bool,
                   progress: bool, engine: Any = None) -> list[Stage]:
    """One stage per modality the ``modality_encoder`` config covers (``image`` / ``text`` not
    null). Modality encoders are built when their stage runs, so a skipped stage loads no model.
    ``engine``: None to encode in this process, or a :class:`mmrec.features.ray_engine.RayEngine`."""
    if modality_encoder_cfg is None:
        return []
    from mmrec.data.features_stage import extract_modality

    modality_encoders = instantiate(modality_encoder_cfg)  # a ModalityEncoderSet; builds nothing yet
    stages = []
    for modality in modality_encoders.modalities:
        params = OmegaConf.to_container(modality_encoder_cfg[modality], resolve=True)
        params |= {"dtype": str(modality_encoder_cfg.dtype)}
        stages.append(Stage(f"features_{modality}", params,
                            lambda m=modality: extract_modality(root, m, modality_encoders, overwrite, progress,
                                                                               engine)))
    return stages


def _tables_check(root: Path) -> str | None:
    """Why a finished tables stage must run again: its manifest is gone or unreadable."""
    try:
        read_manifest(root)
    except DatasetError as err:
        return str(err).split(";")[0]
    return None


def _feature_check(root: Path, modality: str) -> str | None:
    """Why a finished feature stage must run again: its store is unregistered, gone or damaged
    in any way a reader would find (checksum, header, dims, count, NaN values: a full read);
    the stage then replaces it (:func:`mmrec.data.features_stage.extract_modality`)."""
    try:
        return feature_problem(root, modality)
    except DatasetError as err:
        return str(err).split(";")[0]


def _single_step_stages(source, root: Path, command: str, force: set[str]) -> list[Stage]:
    """The stages of a source that writes a whole dataset in one call (demo generator, MMRec
    import): ``tables``, then one ``features_<modality>`` stage per store it declares. A stage
    that is forced, or whose output is damaged, unregisters what it redoes and calls the
    source again, which rewrites the same tables and extracts the stores that are missing."""
    def redo(names: list[str]) -> dict:
        for name in names:
            unregister_feature(root, name)  # the source resumes a store: a damaged one must go first
        source.prepare(root)
        declare_expected(root, read_manifest(root).get("expected_features", []), command)
        return {}

    def tables() -> dict:
        if is_prepared(root):
            if problem := source_mismatch(root, source):
                raise DatasetError(problem)
            registered = list(read_manifest(root).get("features", {}))
            if "tables" not in force and is_complete(root):
                return {"existing": "already prepared"}  # e.g. by a training run
            return redo(registered if "tables" in force else [])
        return redo([])

    def feature(name: str) -> dict:
        if f"features_{name}" in force or _feature_check(root, name):
            redo([name])
        entry = read_manifest(root)["features"][name]
        return {k: entry[k] for k in ("dim", "count", "missing") if k in entry}

    stages = [Stage("tables", {"source": json.loads(json.dumps(source.describe()))}, tables,
                    check=lambda: None if is_complete(root) else "the dataset is incomplete")]
    for name in source.feature_names() or _declared(root):
        stages.append(Stage(f"features_{name}", {}, lambda n=name: feature(n), check=lambda n=name: _feature_check(root, n)))
    return stages


def _declared(root: Path) -> list[str]:
    """The feature stores an existing dataset declares (``[]`` before it is first written)."""
    try:
        return list(read_manifest(root).get("expected_features", []))
    except DatasetError:
        return []


def prepare(cfg: DictConfig) -> list[dict]:
    """Prepare ``cfg.dataset`` (its ``source``) into ``cfg.dataset.root``; returns the stage records.

    The tables stage also records in the manifest which feature stores complete the dataset
    and the command that finishes it, so a reader of a half-prepared folder can say both.
    """
    check_config(cfg)  # also from Python, not only behind the command line's Hydra callback
    root = Path(cfg.dataset.root)
    source = instantiate(cfg.dataset.source)
    opts = cfg.prepare
    command = prepare_command()  # recorded in the manifest: what finishes an interrupted preparation
    if not source.staged:  # single-step sources (demo generator, MMRec import)
        stages = _single_step_stages(source, root, command, set(opts.force or []))
    else:
        stages = list(source.stages(root))
    modality_encoder_cfg = None if source.makes_features or not opts.features else cfg.get("modality_encoder")
    engine = instantiate(opts.ray) if opts.get("engine", "local") == "ray" and modality_encoder_cfg is not None else None
    extra = feature_stages(root, modality_encoder_cfg, bool(opts.overwrite_features), bool(opts.progress), engine)
    if source.staged:
        modalities = [s.name.removeprefix("features_") for s in extra]
        stages = [_declaring(stage, root, modalities, command) if stage.name == "tables" else stage
                  for stage in stages]
    for stage in extra:
        stage.check = lambda m=stage.name.removeprefix("features_"): _feature_check(root, m)
    stages.extend(extra)
    records = run_stages(root, stages, force=list(opts.force or []), until=opts.until)
    summary = {"root": str(root), "stages": records}
    (root / "prepare_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return records


def _declaring(tables: Stage, root: Path, modalities: list[str], command: str) -> Stage:
    """The tables stage of a staged source, declaring the feature stores to come in the same
    manifest write that makes the tables readable (so no reader sees tables without them)."""
    def run() -> dict:
        with expecting(modalities):
            summary = tables.run()
        declare_expected(root, modalities, command)
        return {**summary, "expected_features": ",".join(modalities) or "none"}

    return Stage(tables.name, {**tables.params, "expected_features": modalities}, run,
                 check=lambda: _tables_check(root))


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def main(cfg: DictConfig) -> Any:
    with hydra_user_errors():
        records = prepare(cfg)
    print(format_summary(records))
    images = next((r["summary"].get("image_status") for r in records if r["stage"] == "images"), None)
    if images:
        print("\nimages: " + ", ".join(f"{k}={v}" for k, v in sorted(images.items())))
    return None


if __name__ == "__main__":
    cli.run(main, "prepare")  # a mistyped key or choice: one error line (mmrec.utils.cli)
