"""Training end to end on the (small) demo: every model x sampler, selection, resume, determinism."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SMALL_DEMO
from mmrec.train import ConfigError, _epoch_of, run, train
from mmrec.utils.config import CONFIG_DIR
from conftest import REPO_ROOT
from mmrec.utils.errors import MmrecError

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (CONFIG_DIR / "sampler").glob("*.yaml"))


def _allowed_combinations():
    """Every (model, fusion) pair the models declare, from their classes, with every sampler;
    a model that represents users from histories has its own objective (the two-tower's BPR
    option reads the sampler; scored samplers are refused for it): the uniform sampler only."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    for model in MODELS:
        cls = get_class(OmegaConf.load(CONFIG_DIR / "model" / f"{model}.yaml").model.encoder._target_)
        for fusion in cls.supported_fusions:
            for sampler in (["uniform"] if cls.user_from_history else SAMPLERS):
                yield model, fusion, sampler


@pytest.mark.parametrize("model,fusion,sampler", list(_allowed_combinations()))
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
                        f"paths.output_dir={tmp_path / 'a'}"])
    _, objects = train(resumed)
    assert objects["trainer"].current_epoch == 4
    state = torch.load(last, weights_only=False)
    assert state["epoch"] == 3  # the resumed run went on in its own folder: its last.ckpt is now epoch index 3


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
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    # a crash in the middle of training, after the W&B run has started
    cfg = make_cfg(["logger=wandb", "trainer.max_epochs=3", "+callbacks.crash._target_=conftest.RaiseAt",
                    "+callbacks.crash.epoch=1", "+callbacks.crash.error=ZeroDivisionError"])
    with pytest.raises(ZeroDivisionError):
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


def _val_curve(run_dir: Path, epochs_trained: int) -> dict[int, float]:
    """``{epoch: val/recall@20}`` over every CSV version of a run (a resume adds a version)."""
    from mmrec.report import read_curves

    curve = read_curves(run_dir, "val/recall@20", epochs_trained)
    return dict(zip(curve["epoch"].tolist(), curve["value"].tolist()))


def test_last_checkpoint_is_the_latest_epoch_not_the_best(make_cfg, tmp_path):
    cfg = make_cfg(["trainer.max_epochs=4", f"paths.output_dir={tmp_path / 'a'}"])
    train(cfg)
    state = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["epoch"] == 3  # Lightning's save_last would hold the best epoch's weights


def test_resume_continues_the_same_run_and_selects_over_all_its_epochs(make_cfg, tmp_path):
    run = tmp_path / "a"
    train(make_cfg(["trainer.max_epochs=2", f"paths.output_dir={run}"]))
    resumed = make_cfg(["trainer.max_epochs=5", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                        f"paths.output_dir={run}"])
    metrics, objects = train(resumed)
    record = json.loads((run / "metrics.json").read_text())
    curve = _val_curve(run, record["epochs_trained"])
    assert sorted(curve) == [0, 1, 2, 3, 4]  # both legs of the run, one curve
    best = max(curve, key=curve.get)
    assert record["best_epoch"] == best and record["resumed_from"].endswith("last.ckpt")
    assert metrics["val/recall@20"] == pytest.approx(curve[best], abs=1e-6)


def test_resume_that_would_train_nothing_says_so(make_cfg, tmp_path):
    run = tmp_path / "a"
    train(make_cfg(["trainer.max_epochs=2", f"paths.output_dir={run}"]))
    with pytest.raises(ConfigError, match=r"has finished 2 epochs and trainer.max_epochs=2.*raise trainer.max_epochs"):
        train(make_cfg(["trainer.max_epochs=2", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                        f"paths.output_dir={run}"]))


def test_interrupted_run_records_the_best_checkpoint_so_far(make_cfg, tmp_path):
    cfg = make_cfg(["trainer.max_epochs=6", f"paths.output_dir={tmp_path / 'a'}",
                    "+callbacks.interrupt._target_=conftest.RaiseAt", "+callbacks.interrupt.epoch=3"])
    metrics, objects = train(cfg)
    assert objects["interrupted"] == "Ctrl-C"
    record = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert record["interrupted"] == "Ctrl-C" and record["best_epoch"] in (0, 1, 2)
    assert "test/recall@20" in record["metrics"]
    import signal
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again afterwards


def _cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python -m mmrec.train`` with output piped (as in CI, nohup or a cluster job)."""
    cmd = [sys.executable, "-m", "mmrec.train", f"paths.log_dir={tmp_path / 'logs'}",
           f"paths.data_dir={tmp_path / 'data'}", "trainer.accelerator=cpu", *overrides]
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "OMP_NUM_THREADS")}
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_user_error_is_one_line_without_traceback_and_leaves_no_run_folder(tmp_path):
    proc = _cli(tmp_path, "dataset=ml100k")  # a real dataset that was never prepared
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "python -m mmrec.prepare dataset=" in errors[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert list((tmp_path / "logs").rglob("*.log")) == []  # the run folder Hydra made is gone again


def test_piped_output_has_one_plain_line_per_epoch_and_no_noise(tmp_path):
    proc = _cli(tmp_path, "trainer.max_epochs=3", "logger=none", *SMALL_DEMO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if "] - epoch " in line]
    assert [line.split("] - ")[1].split()[1] for line in lines] == ["0/2", "1/2", "2/2"]
    assert all("train/loss" in line and "val/recall@20" in line and line.endswith(" s") for line in lines)
    assert "CPU threads: " in out and "Training budget: up to 3 epochs" in out
    for noise in ("GPU available", "TPU available", "litlogger", "LeafSpec", "Sparse invariant checks", "v_num"):
        assert noise not in out, noise
    table = out[out.index("Results of the checkpoint"):].splitlines()
    rows = [line.split()[0] for line in table if line.startswith(("val/", "test/"))]
    assert rows[:4] == ["val/recall", "val/ndcg", "test/recall", "test/ndcg"]  # the headline first


def test_resume_from_a_file_that_is_not_a_checkpoint_names_it(make_cfg, tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(MmrecError, match=r"broken.ckpt: not a readable checkpoint"):
        train(make_cfg([f"ckpt_path={broken}"]))


def test_mlflow_run_has_config_curves_final_metrics_and_the_record(make_cfg):
    import mlflow

    import warnings

    cfg = make_cfg(["logger=mlflow", "trainer.max_epochs=2"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)
    # 8 steps an epoch on the small demo, under log_every_n_steps=10: logged once an epoch, no warning
    assert not [w for w in caught if "logging interval" in str(w.message)]
    out = Path(cfg.paths.output_dir)
    assert (out / "csv" / "version_0" / "metrics.csv").is_file()  # the CSV log is kept beside MLflow
    client = mlflow.tracking.MlflowClient(f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.data.params["model.encoder._target_"] == "mmrec.models.LightGCN"
    curve = client.get_metric_history(run.info.run_id, "val/recall_at_20")
    assert len(curve) >= 2  # one per epoch (+ the selected checkpoint's validation)
    record = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["selected/test/recall_at_20"] == pytest.approx(record["metrics"]["test/recall@20"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "config.yaml"}
    assert (out / "mlflow" / "artifacts").is_dir()  # everything of the run stays in its folder
