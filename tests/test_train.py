"""Training end to end on the (small) demo: every model x sampler, selection, resume, determinism."""

import json
from pathlib import Path

import pytest
import torch

from mmrec.train import ConfigError, _epoch_of, run, train
from mmrec.utils.config import CONFIG_DIR

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (CONFIG_DIR / "sampler").glob("*.yaml"))


def _allowed_combinations():
    """Every (model, fusion) pair the models declare, from their classes."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    for model in MODELS:
        target = OmegaConf.load(CONFIG_DIR / "model" / f"{model}.yaml").model.encoder._target_
        for fusion in get_class(target).supported_fusions:
            yield model, fusion


@pytest.mark.parametrize("model,fusion", list(_allowed_combinations()))
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_fast_dev_run_every_allowed_combination(make_cfg, model, fusion, sampler):
    cfg = make_cfg([f"model={model}", f"fusion={fusion}", f"sampler={sampler}",
                    "+trainer.fast_dev_run=true", "logger=none"])
    metrics, objects = train(cfg)
    assert 0.0 <= metrics["val/recall@20"] <= 1.0
    assert 0.0 <= metrics["test/ndcg@20"] <= 1.0
    assert "test/cold/recall@20" in metrics and "test/warm/recall@20" in metrics


def test_run_writes_metrics_config_and_selects_on_validation(make_cfg):
    cfg = make_cfg(["trainer.max_epochs=3"])
    metrics, objects = train(cfg)
    out = Path(cfg.paths.output_dir)
    record = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        for name in ("recall", "ndcg", "precision", "map", "hit"):
            for k in (10, 20, 50):
                assert f"{split}/{name}@{k}" in record["metrics"]
    assert (out / "config.yaml").exists() and (out / "checkpoints" / "last.ckpt").exists()
    ckpt = objects["trainer"].checkpoint_callback
    assert record["best_epoch"] is not None
    assert record["metrics"]["val/recall@20"] == pytest.approx(float(ckpt.best_model_score), abs=1e-6)
    assert objects["module"].test_runs == 1  # the test split was evaluated exactly once
    assert len(record["perf"]["train_epoch_s"]) == 3 and record["perf"]["rss_mb_max"] > 0
    assert (out / "csv" / "version_0" / "metrics.csv").exists()


def test_training_learns_beyond_popularity(make_cfg):
    metrics, _ = train(make_cfg(["trainer.max_epochs=15", "logger=none"]))
    # Chance level on this demo is about 20 / 150 items per test item; LightGCN is far above.
    assert metrics["test/recall@20"] > 0.3
    pop, _ = train(make_cfg(["model=pop", "logger=none"]))
    assert metrics["test/recall@20"] > pop["test/recall@20"]


def test_same_seed_same_metrics(make_cfg, tmp_path):
    a, _ = train(make_cfg(["seed=7", "logger=none", f"paths.output_dir={tmp_path / 'a'}"]))
    b, _ = train(make_cfg(["seed=7", "logger=none", f"paths.output_dir={tmp_path / 'b'}"]))
    c, _ = train(make_cfg(["seed=8", "logger=none", f"paths.output_dir={tmp_path / 'c'}"]))
    assert a == b
    assert a != c


def test_resume_from_last_checkpoint(make_cfg, tmp_path):
    first = make_cfg(["trainer.max_epochs=2", "logger=none", f"paths.output_dir={tmp_path / 'a'}"])
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = make_cfg(["trainer.max_epochs=4", "logger=none", f"ckpt_path={last}",
                        f"paths.output_dir={tmp_path / 'b'}"])
    _, objects = train(resumed)
    assert objects["trainer"].current_epoch == 4
    state = torch.load(last, weights_only=False)
    assert state["epoch"] == 1  # the run resumed after epoch index 1 (2 epochs done)


def test_test_metric_cannot_drive_selection(make_cfg):
    with pytest.raises(ConfigError, match="validation metric"):
        train(make_cfg(["optimized_metric=test/recall@20"]))


def test_wandb_offline_run(make_cfg, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg(["logger=wandb", "trainer.max_epochs=1"])
    try:
        train(cfg)
    finally:
        from mmrec.utils.logging import finish_wandb
        finish_wandb()
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert runs, "no offline W&B run directory"
    # Offline runs keep history in the protobuf record file; keys are stored as strings.
    records = b"".join(p.read_bytes() for p in runs[0].glob("run-*.wandb"))
    for key in ("val/recall@20", "test/recall@20", "train/loss", "perf/train_epoch_s"):
        assert key.encode() in records, key


def test_crashed_run_still_closes_wandb(make_cfg, monkeypatch, tmp_path):
    import pickle

    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    # a crash no config check can foresee: the resume checkpoint exists but is not one, and is
    # read by fit() after the W&B run has started
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    cfg = make_cfg(["logger=wandb", "trainer.max_epochs=1", f"ckpt_path={broken}"])
    with pytest.raises(pickle.UnpicklingError):
        run(cfg)
    assert list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*")), "W&B never started"
    assert wandb.run is None


def test_validation_every_n_epochs(make_cfg):
    cfg = make_cfg(["trainer.max_epochs=4", "trainer.check_val_every_n_epoch=2", "logger=none"])
    _, objects = train(cfg)
    stats = [cb for cb in objects["callbacks"] if type(cb).__name__ == "EpochStats"][0]
    assert len(stats.val_s) == 2 and len(stats.train_epoch_s) == 4


def test_best_epoch_parsed_from_versioned_checkpoint_names():
    assert _epoch_of("/x/checkpoints/epoch_044.ckpt") == 44
    assert _epoch_of("/x/checkpoints/epoch_044-v1.ckpt") == 44
    assert _epoch_of("/x/checkpoints/last.ckpt") is None and _epoch_of(None) is None


def test_id_only_model_ranks_cold_items_last(make_cfg):
    import torch

    from mmrec.train import build

    for model, expect_unknown in (("lightgcn", True), ("vbpr", False)):
        module = build(make_cfg([f"model={model}", "logger=none"]))["module"]
        cold = module.train_matrix.item_degree() == 0
        assert cold.any(), "the demo holds items out of training"
        unknown = module.unrankable_items()
        assert (unknown is not None) == expect_unknown
        module.eval()  # the representations recommendations are made from (cold items estimated)
        with torch.no_grad():
            user_emb, item_emb = module()
        users = torch.arange(module.train_matrix.num_users)
        top, top_scores = module.recommend(users, 50, split="valid")
        assert torch.isfinite(top_scores).all()
        assert torch.equal(top_scores, module.encoder.score_all(user_emb, item_emb).gather(1, top))
        if expect_unknown:
            assert torch.equal(unknown.cpu(), cold)
            assert not cold[top].any()  # never recommended: nothing is known about them
        else:
            assert cold[top].any()  # content models score them like any other item


def test_keep_freed_memory_applies_on_glibc():
    import platform

    from mmrec.utils.memory import keep_freed_memory

    applied = keep_freed_memory()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_reference_baselines_and_beyond_accuracy_metrics(make_cfg):
    """Popularity and random go through the same entry point without fitting; every run's final
    evaluations carry the beyond-accuracy metrics, and they tell the two apart."""
    out = {}
    for model in ("pop", "random", "lightgcn"):
        metrics, objects = train(make_cfg([f"model={model}", "logger=none"]))
        out[model] = metrics
        assert objects["module"].test_runs == 1
        for split in ("val", "test"):
            for name in ("coverage", "gini", "entropy", "avg_pop", "aplt", "novelty", "ild_content",
                         "cold_exposure", "cold/coverage"):
                assert f"{split}/{name}@20" in metrics, (model, split, name)
    pop, rnd = out["pop"], out["random"]
    assert objects["trainer"].current_epoch == 2  # LightGCN trained; pop and random did not
    assert pop["test/gini@20"] > 0.8 > rnd["test/gini@20"]
    assert rnd["test/coverage@20"] > 0.8 > pop["test/coverage@20"]
    assert pop["test/avg_pop@20"] > rnd["test/avg_pop@20"]
    assert rnd["test/novelty@20"] > pop["test/novelty@20"]
    for metrics in out.values():  # ID-only models never show cold items
        assert metrics["test/cold_exposure@20"] == 0.0
    assert pop["test/recall@20"] > rnd["test/recall@20"]  # the demo's popularity is skewed


def test_beyond_accuracy_every_validation_is_a_switch(make_cfg, tmp_path):
    import csv

    for lists, expected in (("final", False), ("every", True)):
        cfg = make_cfg([f"evaluation.lists={lists}", f"paths.output_dir={tmp_path / lists}"])
        train(cfg)
        rows = list(csv.DictReader(open(Path(cfg.paths.output_dir) / "csv" / "version_0" / "metrics.csv")))
        during_fit = [r for r in rows if r.get("val/recall@20") and r.get("epoch") in ("0", "1")
                      and r.get("train/loss") == ""]
        assert any(r.get("val/coverage@20") for r in rows)  # the final evaluation has them either way
        assert any(r.get("val/coverage@20") for r in during_fit[:2]) == expected, lists
