"""mmrec.report on hand-made run folders: collection, grouping, mean/std, best-on-validation,
Markdown/CSV/PNG output, curves from CSV logs, and clear errors."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mmrec import report
from mmrec.report import ReportError

TARGETS = {"lightgcn": ("mmrec.models.LightGCN", "mmrec.fusion.NoFusion", "none"),
           "vbpr": ("mmrec.models.VBPR", "mmrec.fusion.ConcatFusion", "concat"),
           "pop": ("mmrec.models.Popularity", "mmrec.fusion.NoFusion", "none")}


def fake_run(folder: Path, model: str, seed: int, val: float, test: float, lr: float = 1e-3,
             epochs: int = 3, hydra_choices: bool = False) -> Path:
    """A run folder as mmrec.train writes it (metrics.json, config.yaml, CSV log)."""
    folder.mkdir(parents=True)
    encoder, fusion, fusion_choice = TARGETS[model]
    config = {"task_name": "train", "seed": seed, "optimized_metric": "val/recall@20",
              "dataset": {"root": "/data/demo-s0", "batch_size": 256},
              "fusion": {"_target_": fusion, "_partial_": True},
              "model": {"encoder": {"_target_": encoder, "embedding_dim": 64},
                        "optimizer": {"lr": lr}, "l2_weight": 1e-4},
              "sampler": {"_target_": "mmrec.sampling.UniformSampler", "num_negatives": 1},
              "paths": {"output_dir": str(folder)}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {}
    for split, base in (("val", val), ("test", test)):
        for k, factor in ((10, 0.6), (20, 1.0), (50, 1.8)):
            metrics[f"{split}/recall@{k}"] = base * factor
            metrics[f"{split}/ndcg@{k}"] = base * factor / 2
            metrics[f"{split}/warm/recall@{k}"] = base * factor * 1.2
            metrics[f"{split}/cold/recall@{k}"] = base * factor * 0.1
            metrics[f"{split}/coverage@{k}"] = 0.5 * factor - base  # beyond accuracy: a trade-off
            metrics[f"{split}/novelty@{k}"] = 9.0 - 10 * base
    record = {"metrics": metrics, "best_epoch": epochs - 1, "epochs_trained": epochs, "seed": seed,
              "optimized_metric": "val/recall@20", "fit_seconds": 1.5,
              "perf": {"train_epoch_s": [2.0] + [1.0] * (epochs - 1), "val_s": [0.5] * epochs,
                       "peak_rss_mb": 900.0}}
    (folder / "metrics.json").write_text(json.dumps(record))
    # Per-epoch validation rows, then the post-fit validation and test rows (epoch = epochs).
    rows = [{"epoch": e, "step": e, "val/recall@20": val * (e + 1) / epochs} for e in range(epochs)]
    rows += [{"epoch": e, "step": e, "train/loss": 0.7 - 0.1 * e} for e in range(epochs)]
    rows += [{"epoch": epochs, "step": epochs, "val/recall@20": val},
             {"epoch": epochs, "step": epochs, "test/recall@20": test}]
    (folder / "csv" / "version_0").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "csv" / "version_0" / "metrics.csv", index=False)
    if hydra_choices:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
            {"hydra": {"runtime": {"choices": {"model": model, "fusion": fusion_choice,
                                               "sampler": "uniform", "dataset": "demo"}}}}))
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model={model}", f"seed={seed}"]))
    return folder


@pytest.fixture
def sweep(tmp_path) -> tuple[Path, dict]:
    """2 models x 3 seeds, plus a lightgcn learning-rate variant (1 seed)."""
    root = tmp_path / "multirun"
    values = {("lightgcn", 1e-3): [(0.30, 0.28), (0.32, 0.27), (0.31, 0.29)],
              ("vbpr", 1e-3): [(0.25, 0.26), (0.27, 0.24), (0.26, 0.25)],
              ("lightgcn", 1e-2): [(0.20, 0.31)]}
    n = 0
    for (model, lr), pairs in values.items():
        for seed, (val, test) in enumerate(pairs):
            fake_run(root / str(n), model, seed, val, test, lr=lr)
            n += 1
    return root, values


def test_find_runs_reads_every_run_folder(sweep):
    root, values = sweep
    runs = report.find_runs(root)
    assert len(runs) == sum(len(v) for v in values.values())
    assert [r.path.name for r in runs] == [str(i) for i in range(len(runs))]  # natural order
    assert runs[0].config["model.optimizer.lr"] == 1e-3 and runs[0].seed == 0


def test_summary_groups_by_configuration_and_recomputes_mean_std(sweep):
    root, values = sweep
    runs = report.runs_frame(report.find_runs(root))
    # model.optimizer.lr differs between lightgcn runs: it becomes a configuration column;
    # seed, folders and the dataset batch size (constant) do not.
    assert report.config_columns(runs) == ["dataset", "model", "fusion", "sampler", "model.optimizer.lr"]
    summary = report.summarize(runs)
    assert len(summary) == 3
    for (model, lr), pairs in values.items():
        row = summary[(summary["model"] == model) & (summary["model.optimizer.lr"] == str(lr))].iloc[0]
        vals, tests = [p[0] for p in pairs], [p[1] for p in pairs]
        assert row["n_seeds"] == len(pairs)
        assert row["val/recall@20"] == pytest.approx(statistics.mean(vals))
        assert row["test/recall@20"] == pytest.approx(statistics.mean(tests))
        if len(pairs) > 1:
            assert row["val/recall@20_std"] == pytest.approx(statistics.stdev(vals))
            assert row["test/warm/recall@20_std"] == pytest.approx(statistics.stdev([t * 1.2 for t in tests]))
        else:
            assert math.isnan(row["val/recall@20_std"])
        assert row["fusion"] == ("none" if model == "lightgcn" else "concat")  # from conf/fusion targets
        assert row["s_per_epoch"] == pytest.approx(1.0)  # the first (warm-up) epoch is left out


def test_best_is_chosen_on_validation_never_on_test(sweep):
    root, _ = sweep
    summary = report.summarize(report.runs_frame(report.find_runs(root)))
    best = summary[summary["best"]]
    assert len(best) == 1
    # lightgcn lr=1e-3 has the best validation mean; lightgcn lr=1e-2 has the best test mean.
    assert best.iloc[0]["model"] == "lightgcn" and best.iloc[0]["model.optimizer.lr"] == "0.001"
    assert summary["test/recall@20"].idxmax() != best.index[0]


def test_markdown_shows_mean_std_seeds_and_best(sweep):
    root, values = sweep
    summary = report.summarize(report.runs_frame(report.find_runs(root)))
    text = report.to_markdown(summary)
    lines = text.strip().splitlines()
    assert len(lines) == 2 + len(summary)
    vals = [p[0] for p in values[("lightgcn", 1e-3)]]
    expected = f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}"
    best_line = next(line for line in lines if "**" in line)
    assert expected in best_line and "| 3 |" in best_line
    assert "val R@20" in lines[0] and "test cold R@20" in lines[0]
    assert "test Cov@20" in lines[0] and "test Nov@20" in lines[0]
    assert "ILD" not in lines[0]  # columns the runs do not have are left out


def test_write_report_files_and_csv_round_trip(sweep, tmp_path):
    root, _ = sweep
    files = report.write_report(root, tmp_path / "out")
    for key in ("summary_md", "summary_csv", "runs_csv", "val_curve", "recall_at_k", "warm_cold",
                "accuracy_beyond"):
        assert files[key].is_file() and files[key].stat().st_size > 0, key
    assert files["val_curve"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = pd.read_csv(files["summary_csv"])
    assert len(back) == 3 and bool(back["best"].sum() == 1)
    assert report.config_columns(back) == ["dataset", "model", "fusion", "sampler", "model.optimizer.lr"]
    runs_back = pd.read_csv(files["runs_csv"])
    assert report.config_columns(runs_back) == report.config_columns(back)


def test_curves_drop_post_fit_rows(sweep):
    root, values = sweep
    curve = report.read_curves(root / "0", "val/recall@20", epochs_trained=3)
    assert curve["epoch"].tolist() == [0, 1, 2]  # the post-fit validation (epoch 3) is not a training epoch
    runs = report.runs_frame(report.find_runs(root))
    curves = report.curves_frame(runs)
    assert set(curves["label"]) == {"lightgcn / none / lr=0.001", "vbpr / concat",
                                    "lightgcn / none / lr=0.01"}  # the settings that vary within a model
    assert len(curves) == 3 * len(runs)


def test_resumed_run_curves_concatenate_versions(tmp_path):
    run = fake_run(tmp_path / "r", "lightgcn", 0, 0.3, 0.3, epochs=2)
    (run / "csv" / "version_1").mkdir()
    pd.DataFrame([{"epoch": 2, "val/recall@20": 0.35}, {"epoch": 3, "val/recall@20": 0.36}]).to_csv(
        run / "csv" / "version_1" / "metrics.csv", index=False)
    curve = report.read_curves(run, epochs_trained=4)
    assert curve["epoch"].tolist() == [0, 1, 2, 3]
    assert curve["value"].iloc[-1] == pytest.approx(0.36)


def test_hydra_choices_name_the_configuration(tmp_path):
    fake_run(tmp_path / "0", "vbpr", 0, 0.2, 0.2, hydra_choices=True)
    fake_run(tmp_path / "1", "vbpr", 1, 0.2, 0.2, hydra_choices=False)
    frame = report.runs_frame(report.find_runs(tmp_path))
    # Hydra's choices and the names derived from conf/ targets agree; the dataset is named
    # by its prepared folder either way.
    for _, row in frame.iterrows():
        assert (row["model"], row["fusion"], row["sampler"], row["dataset"]) == ("vbpr", "concat", "uniform",
                                                                                "demo-s0")
    assert len(report.summarize(frame)) == 1


def test_missing_folder_and_empty_folder_fail_clearly(tmp_path):
    with pytest.raises(ReportError, match="no such folder"):
        report.find_runs(tmp_path / "nope")
    with pytest.raises(ReportError, match="no finished runs below"):
        report.find_runs(tmp_path)


def test_broken_run_is_skipped_with_its_name(tmp_path, caplog):
    fake_run(tmp_path / "ok", "lightgcn", 0, 0.3, 0.3)
    bad = fake_run(tmp_path / "bad", "lightgcn", 1, 0.3, 0.3)
    (bad / "metrics.json").write_text("{not json")
    runs = report.find_runs(tmp_path)
    assert [r.path.name for r in runs] == ["ok"]
    assert "bad/metrics.json" in caplog.text


def test_unfinished_jobs_are_listed(tmp_path):
    fake_run(tmp_path / "0", "lightgcn", 0, 0.3, 0.3, hydra_choices=True)
    (tmp_path / "1" / ".hydra").mkdir(parents=True)
    (tmp_path / "1" / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    files = report.write_report(tmp_path, plots=False)
    assert "without metrics.json" in files["summary_md"].read_text() and "1" in files["summary_md"].read_text()


def test_cli(sweep, tmp_path, capsys):
    root, _ = sweep
    assert report.main([str(root), "--out", str(tmp_path / "cli"), "--no-plots"]) == 0
    assert (tmp_path / "cli" / "summary.md").is_file() and not (tmp_path / "cli" / "val_curve.png").exists()
    assert "val R@20" in capsys.readouterr().out
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_copies_of_one_seed_count_once_and_are_listed(tmp_path):
    """A resume that re-evaluated an old checkpoint, or a trial run twice, is not another seed."""
    root = tmp_path / "runs"
    fake_run(root / "a", "lightgcn", 0, 0.30, 0.28)
    fake_run(root / "b", "lightgcn", 1, 0.32, 0.27)
    fake_run(root / "c", "lightgcn", 1, 0.10, 0.10)  # a second run of seed 1, finished last
    fake_run(root / "d", "vbpr", 42, 0.25, 0.26)
    fake_run(root / "e", "vbpr", 42, 0.25, 0.26)  # the same trial twice
    import os
    for n, name in enumerate("abcde"):
        os.utime(root / name / "metrics.json", (1000 + n, 1000 + n))
    summary = report.summarize(report.runs_frame(report.find_runs(root))).set_index("model")
    assert summary.loc["lightgcn", "n_seeds"] == 2 and summary.loc["lightgcn", "duplicates"] == 1
    assert summary.loc["lightgcn", "val/recall@20"] == pytest.approx((0.30 + 0.10) / 2)  # newest copy of seed 1
    assert summary.loc["vbpr", "n_seeds"] == 1 and math.isnan(summary.loc["vbpr", "val/recall@20_std"])  # no 0.0 std
    files = report.write_report(root, plots=False)
    text = files["summary_md"].read_text()
    assert "| 1 (+1 duplicate) |" in text and "Left out as further runs of a seed already counted" in text
    assert "b" in text.split("Left out")[1] and "d" in text.split("Left out")[1]


def test_labels_show_only_settings_that_differ_within_a_model_and_wrap(tmp_path):
    frame = pd.DataFrame({"dataset": ["demo"] * 3, "model": ["lightgcn", "lightgcn", "grcn"],
                          "fusion": ["none", "none", "late"], "sampler": ["uniform"] * 3,
                          "model.optimizer.lr": ["0.001", "0.01", "0.001"],
                          "model.encoder.start_method": ["-", "-", "spawn"]})
    frame.attrs["config_columns"] = list(frame.columns)
    labels = report.configuration_labels(frame).tolist()
    assert labels[0].replace("\n", " ") == "lightgcn / none / lr=0.001"
    assert labels[2].replace("\n", " ") == "grcn / late"  # start_method does not vary within grcn; '-' never shown
    assert all(len(line) <= report.LABEL_WIDTH for label in labels for line in label.split("\n"))


def test_an_untrained_deterministic_model_has_no_sampler_no_fake_std_and_a_named_missing_curve(sweep, tmp_path):
    """pop: fitted without training (no negatives drawn, so no sampler), the same numbers for
    every seed (not "± 0.0000"), and no per-epoch curve (named in the legend, not left out)."""
    import shutil

    root, _ = sweep
    for seed in (0, 1):
        folder = fake_run(root / f"pop{seed}", "pop", seed, 0.11, 0.12)
        record = json.loads((folder / "metrics.json").read_text())
        record.update(trained=False, epochs_trained=0, best_epoch=None)
        (folder / "metrics.json").write_text(json.dumps(record))
        shutil.rmtree(folder / "csv")
    runs = report.runs_frame(report.find_runs(root))
    assert set(runs.loc[runs["model"] == "pop", "sampler"]) == {"-"}
    assert set(runs.loc[runs["model"] == "lightgcn", "sampler"]) != {"-"}
    line = next(x for x in report.to_markdown(report.summarize(runs)).splitlines() if "| pop |" in x)
    assert "| 2 (identical results) |" in line and "±" not in line and "0.1100" in line
    curves = report.curves_frame(runs)
    labels = report.configuration_labels(runs)
    fig = report.plot_curves(curves, without=sorted(set(labels[runs["model"] == "pop"])))
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("pop") and "no curve" in t for t in texts)
    assert report.write_report(root, tmp_path / "out")["val_curve"].stat().st_size > 0  # the report's own call


def test_curves_mark_the_selected_epoch_and_legends_sit_outside(sweep):
    root, _ = sweep
    runs = report.runs_frame(report.find_runs(root))
    fig = report.plot_curves(report.curves_frame(runs))
    ax = fig.axes[0]
    from matplotlib.collections import PathCollection

    stars = [c for c in ax.collections if isinstance(c, PathCollection)]
    epochs = sorted(x for c in stars for x, _ in c.get_offsets())
    assert epochs == [2.0] * len(runs)  # best_epoch of every fake run is its last (2)
    legend = ax.get_legend()
    fig.canvas.draw()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # right of the axes, not over the data


def test_empty_cold_bars_say_cannot_score(sweep):
    root, _ = sweep
    summary = report.summarize(report.runs_frame(report.find_runs(root)))
    summary.loc[summary["model"] == "lightgcn", "test/cold/recall@20"] = 0.0
    fig = report.plot_warm_cold(summary)
    notes = [t.get_text() for t in fig.axes[0].texts]
    assert notes.count("cannot score") == int((summary["model"] == "lightgcn").sum())
