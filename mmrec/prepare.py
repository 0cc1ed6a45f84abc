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

from mmrec.data.prepared import is_prepared, read_manifest, write_manifest
from mmrec.data.stages import Stage, format_summary, run_stages

log = logging.getLogger(__name__)


def feature_stages(root: Path, modality_encoder_cfg: DictConfig | None, overwrite: bool,
                   progress: bool) -> list[Stage]:
    """One stage per modality the ``modality_encoder`` config covers (``image`` / ``text`` not
    null). Modality encoders are built when their stage runs, so a skipped stage loads no model."""
    if modality_encoder_cfg is None:
        return []
    from mmrec.data.features_stage import extract_modality

    modality_encoders = instantiate(modality_encoder_cfg)  # a ModalityEncoderSet; builds nothing yet
    stages = []
    for modality in modality_encoders.modalities:
        params = OmegaConf.to_container(modality_encoder_cfg[modality], resolve=True)
        params |= {"dtype": str(modality_encoder_cfg.dtype)}
        stages.append(Stage(f"features_{modality}", params,
                            lambda m=modality: extract_modality(root, m, modality_encoders, overwrite, progress)))
    return stages


def _expect_features(root: Path, modalities: list[str]) -> dict:
    """Record in the manifest which feature stores this preparation will produce, so training
    refuses a dataset whose feature extraction did not finish."""
    manifest = read_manifest(root)
    manifest["expected_features"] = modalities
    write_manifest(root, manifest)
    return {"expected_features": ",".join(modalities) or "none"}


def prepare(cfg: DictConfig) -> list[dict]:
    """Prepare ``cfg.dataset`` (its ``source``) into ``cfg.dataset.root``; returns the stage records."""
    root = Path(cfg.dataset.root)
    source = instantiate(cfg.dataset.source)
    opts = cfg.prepare
    if not hasattr(source, "stages"):  # single-step sources (demo generator, MMRec import)
        def single_step() -> dict:
            if is_prepared(root) and "tables" not in (opts.force or []):
                return {"existing": "already prepared"}  # e.g. by a training run
            source.prepare(root)
            return {}

        stages = [Stage("tables", {"source": json.loads(json.dumps(source.describe()))}, single_step)]
        makes_features = bool(getattr(source, "makes_features", False))
    else:
        stages = list(source.stages(root))
        makes_features = False
    modality_encoder_cfg = None if makes_features or not opts.features else cfg.get("modality_encoder")
    extra = feature_stages(root, modality_encoder_cfg, bool(opts.overwrite_features), bool(opts.progress))
    if extra:
        modalities = [s.name.removeprefix("features_") for s in extra]
        stages.append(Stage("expect", {"modalities": modalities}, lambda: _expect_features(root, modalities)))
        stages.extend(extra)
    records = run_stages(root, stages, force=list(opts.force or []), until=opts.until)
    summary = {"root": str(root), "stages": records}
    (root / "prepare_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return records


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare")
def main(cfg: DictConfig) -> Any:
    records = prepare(cfg)
    print(format_summary(records))
    images = next((r["summary"].get("image_status") for r in records if r["stage"] == "images"), None)
    if images:
        print("\nimages: " + ", ".join(f"{k}={v}" for k, v in sorted(images.items())))
    return None


if __name__ == "__main__":
    main()
