"""Experiments at scale: Hydra multiruns with a sweep summary, Optuna searches on validation,
launchers, DDP, experiment configs, and W&B tracking (offline)."""

from __future__ import annotations

import json
import os
import re
import statistics
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from conftest import SMALL_DEMO, compose_cfg
from mmrec.utils.config import CONFIG_DIR
from conftest import REPO_ROOT

SEARCHES = sorted(p.stem for p in (CONFIG_DIR / "hparams_search").glob("*_optuna.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())
QUICK = SMALL_DEMO + ["trainer.accelerator=cpu", "+trainer.enable_progress_bar=false"]


def offline_env() -> dict[str, str]:
    """The environment of a sweep subprocess: W&B offline, no credentials."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(NETRC="/nonexistent", WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="1",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def train_cli(args: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "mmrec.train", *args], cwd=REPO_ROOT, env=offline_env(),
                          capture_output=True, text=True, timeout=timeout)
    proc.log = f"$ mmrec.train {' '.join(args)}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def metrics_of(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def wandb_records(run_dir: Path):
    """Records of an offline W&B run file (``run-*.wandb``: W&B's LevelDB-style log of
    protobuf records; 7-byte header, 32 KiB blocks, 7-byte chunk headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, block, chunks = 7, 32768, []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            continue
        chunks.append(data[pos:pos + length])
        pos += length
        if kind in (1, 4):  # full record, or last chunk of one
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def wandb_run_contents(run_dir: Path) -> dict:
    """Group, config, history keys, final summary and artifact files of an offline run, and
    whether the file holds the run's exit record (``complete``): W&B writes the file's last
    block only when the run's stream is closed, so a file without it was read too early."""
    def key(item) -> str:
        return "/".join(item.nested_key) if item.nested_key else item.key

    out = {"group": None, "config": {}, "history": set(), "summary": {}, "artifact_files": [], "complete": False}
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["group"] = record.run.run_group
            out["config"].update({key(u): json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "history":
            out["history"] |= {key(i) for i in record.history.item}
        elif kind == "summary":
            out["summary"].update({key(u): json.loads(u.value_json) for u in record.summary.update})
        elif kind == "artifact":
            out["artifact_files"] += [e.path for e in record.artifact.manifest.contents]
        elif kind == "exit":
            out["complete"] = True
    return out


# --------------------------------------------------------------------------------------
# Multirun + sweep summary
# --------------------------------------------------------------------------------------
def test_multirun_2x2_writes_one_folder_per_job_and_a_summary(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    proc = train_cli(["-m", "model=lightgcn,vbpr", "seed=0,1", "trainer.max_epochs=1", *QUICK,
                      f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path / 'logs'}",
                      f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.log
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    for job in jobs:  # the same figures without W&B: metrics.json + CSV curves in every job
        assert (job / "metrics.json").is_file() and (job / "config.yaml").is_file()
        assert (job / "csv" / "version_0" / "metrics.csv").is_file()
    for name in ("summary.md", "summary.csv", "runs.csv", "val_curve.png", "recall_at_k.png", "warm_cold.png"):
        assert (sweep / name).is_file(), name

    runs = pd.read_csv(sweep / "runs.csv")
    assert len(runs) == 4  # one row per job
    summary = pd.read_csv(sweep / "summary.csv")
    assert sorted(summary["model"]) == ["lightgcn", "vbpr"] and set(summary["n_seeds"]) == {2}
    # The report's numbers are the jobs' metrics.json values (mean / sample std recomputed here).
    records = [metrics_of(job) for job in jobs]
    for model in ("lightgcn", "vbpr"):
        mine = [r for r in records if r["model"].lower().endswith(model)]
        row = summary[summary["model"] == model].iloc[0]
        for metric in ("val/recall@20", "test/recall@20", "test/cold/ndcg@10"):
            values = [r["metrics"][metric] for r in mine]
            assert row[metric] == pytest.approx(statistics.mean(values), abs=1e-9)
            assert row[f"{metric}_std"] == pytest.approx(statistics.stdev(values), abs=1e-9)
    best = summary.loc[summary["val/recall@20"].idxmax()]
    assert bool(best["best"]) and summary["best"].sum() == 1
    text = (sweep / "summary.md").read_text()
    assert "4 finished runs, 2 configurations" in text and "± " in text


def test_optuna_search_runs_trials_and_optimises_validation(tmp_path, data_dir):
    logs = tmp_path / "logs"
    proc = train_cli(["hparams_search=lightgcn_optuna", "hydra.sweeper.n_trials=2",
                      "hydra.sweeper.sampler.n_startup_trials=1", "+trainer.fast_dev_run=true", "logger=none",
                      *QUICK, f"paths.data_dir={data_dir}", f"paths.log_dir={logs}"])
    assert proc.returncode == 0, proc.log
    # Default folder layout (hydra.sweep.dir with ${now:...}): the summary lands in the same folder.
    (sweep,) = list((logs / "lightgcn_optuna" / "multiruns").iterdir())
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(trials) == 2
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    vals = [metrics_of(t)["metrics"]["val/recall@20"] for t in trials]
    # What the sweeper received and maximised is each trial's validation Recall@20 (train()
    # validates after fast_dev_run too), never a test metric.
    assert result["best_value"] == pytest.approx(max(vals))
    assert set(result["best_params"]) == {"model.optimizer.lr", "model.l2_weight", "model.encoder.num_layers",
                                          "model.encoder.embedding_dim"}
    best = trials[vals.index(max(vals))]
    assert yaml.safe_load((best / "config.yaml").read_text())["model"]["encoder"]["num_layers"] == \
        result["best_params"]["model.encoder.num_layers"]
    assert len(pd.read_csv(sweep / "summary.csv")) == 2


@pytest.mark.parametrize("search", SEARCHES)
def test_search_space_names_real_keys_and_validation_metric(search):
    cfg = compose_cfg([f"hparams_search={search}"])
    hydra_cfg = compose_cfg_with_hydra([f"hparams_search={search}"])
    sweeper = hydra_cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/recall@20"
    # the space belongs to the model config of its name (mf_optuna -> model=mf, LightGCN with 0 layers)
    assert hydra_cfg.hydra.runtime.choices["model"] == search.removesuffix("_optuna")
    params = dict(sweeper.params)
    if cfg.model.get("optimizer") is None:  # fitted in closed form (iALS): its own size and regularisation
        assert {"model.encoder.factors", "model.encoder.regularization"} <= set(params)
    else:
        assert "model.optimizer.lr" in params and params["model.optimizer.lr"].startswith("tag(log")
        # a regularisation weight is searched: L2, or FREEDOM's per-modality BPR weight (its
        # reg_weight; FREEDOM has no L2 term), a model's own regulariser term (BM3, MGCN:
        # reg_weight), or weight decay / dropout for the models with their own objective
        assert {"model.l2_weight", "model.encoder.modality_loss_weight", "model.encoder.reg_weight",
                "model.optimizer.weight_decay", "model.encoder.dropout"} & set(params)
        assert "model.encoder.embedding_dim" in params
    for key, space in params.items():
        if key in GROUPS:  # a config-group choice: every option exists and the model accepts it
            from hydra.utils import get_class

            options = re.fullmatch(r"choice\((.*)\)", space).group(1).split(",")
            for option in (o.strip() for o in options):
                assert (CONFIG_DIR / key / f"{option}.yaml").is_file(), (key, option)
                if key == "fusion":
                    assert option in get_class(cfg.model.encoder._target_).supported_fusions
        else:
            assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", f"{search}: no key {key}"


def compose_cfg_with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_sweep_params_name_real_keys(experiment):
    cfg = compose_cfg_with_hydra([f"experiment={experiment}"])
    params = dict(cfg.hydra.sweeper.get("params") or {})
    for key in params:
        if key not in GROUPS:
            assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", f"{experiment}: no key {key}"
    assert str(cfg.optimized_metric).startswith("val/")


def test_slurm_launcher_config_composes():
    cfg = compose_cfg_with_hydra(["hydra/launcher=slurm"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.timeout_min > 0


def test_ddp_trainer_config_adds_distributed_evaluation():
    cfg = compose_cfg(["trainer=ddp"])
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy")
    assert "broadcast_buffers" not in cfg.trainer.strategy  # deprecated; DistributedEvaluation keeps buffers out of DDP's sync
    assert cfg.callbacks.distributed_evaluation._target_.endswith("DistributedEvaluation")
    assert "model_checkpoint" in cfg.callbacks  # the chosen callbacks stay


# --------------------------------------------------------------------------------------
# W&B tracking
# --------------------------------------------------------------------------------------
def test_wandb_run_has_config_history_test_summary_and_recommendation_table(make_cfg, monkeypatch):
    from mmrec.train import run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg(["logger=wandb", "trainer.max_epochs=2", "callbacks.wandb_recommendations.num_users=3",
                    "callbacks.wandb_recommendations.k=5"])
    run(cfg)  # returns only once the W&B service has closed (flushed) the run file
    out = Path(cfg.paths.output_dir)
    record = metrics_of(out)
    (run_dir,) = list((out / "wandb").glob("offline-run-*"))
    contents = wandb_run_contents(run_dir)
    assert contents["complete"], "run file without its exit record: read before W&B finished writing it"
    assert contents["group"] == "train"  # a single run: the task name
    assert contents["config"]["model"]["encoder"]["_target_"] == "mmrec.models.LightGCN"  # the whole config
    assert contents["config"]["seed"] == cfg.seed
    for key in ("train/loss", "val/recall@20", "val/warm/recall@20", "epoch"):
        assert key in contents["history"], key
    for key in ("test/recall@20", "test/cold/recall@20", "val/ndcg@20"):
        assert contents["summary"][key] == pytest.approx(record["metrics"][key], abs=1e-6), key
    table = {k.split("/", 2)[-1]: v for k, v in contents["summary"].items() if k.startswith("val/recommendations/")}
    assert table["_type"] == "table-file" and table["nrows"] == 3 * 5 and table["ncols"] == 7
    # the pictures beside the table, as media files of the run (inside its folder; one file per
    # distinct picture: W&B names them by content)
    (table_file,) = (run_dir / "files" / "media" / "table").rglob("*.table.json")
    rows = json.loads(table_file.read_text())["data"]
    assert all(row[4].startswith("images/") for row in rows)  # the image column: paths in the dataset
    images = list((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert len(images) == len({row[2] for row in rows}), "item images not logged"


def test_wandb_runs_of_a_sweep_are_grouped_by_sweep_folder(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from mmrec.utils.logging import sweep_context, wandb_logger

    cfg = compose_cfg_with_hydra(["seed=3"])
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path / "multiruns" / "2026-01-02_03-04-05")
        cfg.hydra.job.num = 7
        cfg.hydra.job.override_dirname = "seed=3"
    HydraConfig.instance().set_config(cfg)
    try:
        assert sweep_context() == {"sweep": "2026-01-02_03-04-05", "job": "7", "overrides": "seed=3"}
        logger = wandb_logger(project="p", save_dir=str(tmp_path), mode="disabled", group="train")
        assert logger._wandb_init["group"] == "train/2026-01-02_03-04-05"
        assert logger._wandb_init["name"] == "7: seed=3"
    finally:
        HydraConfig.instance().cfg = None


def test_recommendation_rows_follow_the_evaluation_ranking(make_cfg):
    import torch

    from mmrec.lit.callbacks import recommendation_rows
    from mmrec.train import build

    objects = build(make_cfg(["logger=none"]))
    module, dm = objects["module"], objects["datamodule"]
    rows = recommendation_rows(module, dm, num_users=3, k=8)
    assert len(rows) == 24
    with torch.no_grad():
        user_emb, item_emb = module()
    for user in {r["user"] for r in rows}:
        mine = [r for r in rows if r["user"] == user]
        train_items = set(module.train_matrix.indices[module.train_matrix.indptr[user]:
                                                      module.train_matrix.indptr[user + 1]].tolist())
        valid = module.evaluator.splits["valid"]
        valid_items = set(valid.indices[valid.indptr[user]:valid.indptr[user + 1]].tolist())
        assert valid_items, "only validation users are shown"
        assert [r["rank"] for r in mine] == list(range(1, 9))
        assert not train_items & {r["item"] for r in mine}  # training items are masked, as in evaluation
        assert all(r["hit"] == (r["item"] in valid_items) for r in mine)
        scores = module.encoder.score_all(user_emb[[user]], item_emb)[0]
        assert [r["score"] for r in mine] == pytest.approx(scores[[r["item"] for r in mine]].tolist())
        assert all(a["score"] >= b["score"] for a, b in zip(mine, mine[1:]))
    assert all(r["title"] and r["image"] and Path(r["image"]).is_file() for r in rows)


# --------------------------------------------------------------------------------------
# Heavier: crash isolation with W&B, parallel launcher, DDP
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_crashed_job_does_not_stop_the_next_and_wandb_groups_by_sweep(tmp_path, data_dir):
    logs = tmp_path / "logs"
    # job 0 crashes in its first epoch, after W&B started (tests/conftest.py's RaiseAt); job 1's
    # crash epoch is never reached
    proc = train_cli(["-m", "+callbacks.crash._target_=conftest.RaiseAt", "+callbacks.crash.epoch=0,5",
                      "+callbacks.crash.error=ZeroDivisionError", "logger=wandb", "trainer.max_epochs=1", *QUICK,
                      f"paths.data_dir={data_dir}", f"paths.log_dir={logs}"])
    assert proc.returncode != 0 and "ZeroDivisionError" in proc.stderr  # the sweep reports the failure
    (sweep,) = list((logs / "train" / "multiruns").iterdir())
    assert not (sweep / "0" / "metrics.json").exists() and (sweep / "1" / "metrics.json").is_file()
    # The summary written after each job survives the failed sweep and names the failed job.
    text = (sweep / "summary.md").read_text()
    assert "1 finished runs" in text and "without metrics.json" in text
    groups = {wandb_run_contents(next((sweep / job / "wandb").glob("offline-run-*")))["group"] for job in "01"}
    assert groups == {f"train/{sweep.name}"}


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    proc = train_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=lightgcn,vbpr",
                      "trainer.max_epochs=1", "logger=none", *QUICK, f"paths.data_dir={data_dir}",
                      f"paths.log_dir={tmp_path / 'logs'}", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.log
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "1" / "metrics.json").is_file()
    assert len(pd.read_csv(sweep / "summary.csv")) == 2


def test_submitit_local_launcher_runs_the_sweep_as_submitted_jobs(tmp_path, data_dir):
    """hydra/launcher=local: the SLURM launcher's path (submitit pickles each job and runs it in
    its own process) on this machine; every job finishes, the sweep summary counts both."""
    sweep = tmp_path / "sweep"
    proc = train_cli(["-m", "hydra/launcher=local", "seed=0,1", "trainer.max_epochs=1", "logger=none", *QUICK,
                      f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path / 'logs'}", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.log
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # two submitit jobs, each with its result
    records = [metrics_of(sweep / job) for job in "01"]
    assert all(r["best_checkpoint"] for r in records)
    assert len(pd.read_csv(sweep / "summary.csv")) == 1  # one configuration, two seeds


def test_ddp_on_cpu_two_processes_evaluates_exactly(tmp_path, data_dir):
    from mmrec.train import build

    out = tmp_path / "ddp"
    common = ["trainer.max_epochs=2", *QUICK, f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path / 'logs'}"]
    proc = train_cli(["trainer=ddp", "trainer.devices=2", f"hydra.run.dir={out}", *common], timeout=600)
    assert proc.returncode == 0, proc.log
    output = proc.stdout + proc.stderr
    for noise in ("sync_dist", "broadcast_buffers", "GPU available"):
        assert noise not in output, noise
    assert output.count("Results of the checkpoint selected") == 1 and output.count("CPU threads") == 1  # rank 0 only
    record = metrics_of(out)
    assert record["best_checkpoint"] and record["epochs_trained"] == 2
    # Every process ranked all users: the metrics equal a single-process evaluation of the
    # selected checkpoint.
    cfg = compose_cfg(common + [f"paths.output_dir={tmp_path / 'check'}", "logger=none", "callbacks=none"])
    objects = build(cfg)
    (val,) = objects["trainer"].validate(objects["module"], datamodule=objects["datamodule"],
                                         ckpt_path=record["best_checkpoint"], verbose=False)
    (test,) = objects["trainer"].test(objects["module"], datamodule=objects["datamodule"],
                                      ckpt_path=record["best_checkpoint"], verbose=False)
    # beyond-accuracy metrics are functions of all users' lists together (coverage, Gini, ...): they
    # cannot be averaged over ranks, so they must come out equal too
    beyond = ("coverage@20", "gini@20", "entropy@20", "novelty@20", "avg_pop@20", "aplt@20", "cold_exposure@20",
              "ild_content@20")
    for key in ("val/recall@20", "val/ndcg@50", "val/cold/recall@20", *(f"val/{b}" for b in beyond)):
        assert key in val, key
        assert record["metrics"][key] == pytest.approx(val[key], abs=1e-6), key
    for key in ("test/recall@20", "test/warm/ndcg@20", *(f"test/{b}" for b in beyond)):
        assert key in test, key
        assert record["metrics"][key] == pytest.approx(test[key], abs=1e-6), key


def test_offline_wandb_run_folder_holds_everything_of_the_run(make_cfg, monkeypatch, tmp_path):
    """Copy the run folder, `wandb sync` it: nothing of the run may sit in the home folder."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setenv("WANDB_MODE", "offline")
    from mmrec.utils import logging as mlog

    monkeypatch.setattr(mlog, "_set_by_us", set())
    cfg = make_cfg(["logger=wandb", "trainer.max_epochs=1", "callbacks.wandb_recommendations.num_users=2",
                    "callbacks.wandb_recommendations.k=3"])
    from mmrec.train import run

    run(cfg)  # closes W&B
    out = Path(cfg.paths.output_dir)
    leaked = [p for p in home.rglob("*") if p.is_file() and "wandb" in str(p)]
    assert leaked == [], leaked
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert list((run_dir / "files" / "media" / "images").rglob("*.png"))  # the pictures, inside the run folder
    assert (out / "csv" / "version_0" / "metrics.csv").is_file()  # curves for mmrec.report as well
