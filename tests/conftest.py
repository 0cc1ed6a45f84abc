"""Shared fixtures: composed configs pointed at tmp folders, the demo dataset generated once."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from mmrec.utils.config import CONFIG_DIR

#: the checkout (tests run from it; the package itself never needs it)
REPO_ROOT = Path(__file__).resolve().parents[1]

SHARED = Path(os.environ.get("MMREC_SHARED", REPO_ROOT.parent / "shared"))
SHARED_DATA = SHARED / "data"

# Small demo so that a training test takes seconds.
SMALL_DEMO = ["dataset.source.num_users=200", "dataset.source.num_items=150",
              "dataset.source.num_styles=6", "dataset.source.interactions_per_user=12",
              "dataset.pairs_per_batch=256"]


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (real data lives in ../shared beside the checkout)")
    return path


def compose_cfg(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name, overrides=overrides or [])


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data folder per test session: datasets are prepared once and shared."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def make_cfg(tmp_path, data_dir):
    """``make_cfg([...overrides])`` -> a training config writing into tmp folders, quick settings."""

    made = []

    def _make(overrides: list[str] | None = None, small: bool = True) -> DictConfig:
        # each config its own run folder (a folder that holds a run is continued only by a resume):
        # tmp_path/run, then run-1, run-2, ...
        made.append(None)
        out = tmp_path / ("run" if len(made) == 1 else f"run-{len(made) - 1}")
        base = [f"paths.data_dir={data_dir}", f"paths.output_dir={out}",
                f"paths.log_dir={tmp_path / 'logs'}", "trainer.max_epochs=2",
                "trainer.accelerator=cpu", "+trainer.enable_progress_bar=false"]
        return compose_cfg(base + (SMALL_DEMO if small else []) + (overrides or []))

    return _make


def train_demo(root: Path, data_dir: Path, model: str, extra: list[str] | None = None):
    """Train ``model`` for 2 epochs on the small demo into ``root/<model>``: ``(run folder, objects)``."""
    from mmrec.train import train

    cfg = compose_cfg([f"paths.data_dir={data_dir}", f"paths.output_dir={root / model}",
                       f"paths.log_dir={root / 'logs'}", "trainer.max_epochs=2", "trainer.accelerator=cpu",
                       "+trainer.enable_progress_bar=false", "logger=none", f"model={model}"] + SMALL_DEMO
                      + (extra or []))
    _, objects = train(cfg)
    return root / model, objects


@pytest.fixture(scope="session")
def serving_runs(tmp_path_factory, data_dir):
    """Demo runs of LightGCN (ID-only, with a saved FAISS index) and FREEDOM (content) and their
    bundles: ``{model: (run folder, bundle folder, objects)}``, made once per session."""
    from mmrec.export import export_run

    root = tmp_path_factory.mktemp("serving")
    out = {}
    for model in ("lightgcn", "freedom"):
        run, objects = train_demo(root, data_dir, model)
        index = {"factory": "HNSW32", "ef_construction": 200} if model == "lightgcn" else None
        out[model] = (run, export_run(run, index=index), objects)
    return out


FASHION = ["dataset=fashion", "dataset.source.num_shoppers=300"]


@pytest.fixture(scope="session")
def fashion_shop(tmp_path_factory):
    """``dataset=fashion`` prepared once: the real photos of ../shared/data/product-photos, 300
    generated shoppers, the simple modality encoders. ``(prepare config, photos folder)``."""
    from mmrec.prepare import prepare

    path = shared_path("product-photos")
    data = tmp_path_factory.mktemp("fashion")
    cfg = compose_cfg(FASHION + ["modality_encoder=simple", f"paths.data_dir={data}", f"dataset.source.path={path}",
                                 "dataset.source.progress=false", "prepare.progress=false"], config_name="prepare")
    prepare(cfg)
    return cfg, path


@pytest.fixture(scope="session")
def fashion_bundle(fashion_shop, tmp_path_factory) -> Path:
    """FREEDOM trained 2 epochs on the fashion shop, exported: the bundle folder."""
    from mmrec.export import export_run
    from mmrec.train import train

    cfg, path = fashion_shop
    root = tmp_path_factory.mktemp("fashion_run")
    train(compose_cfg(FASHION + [f"paths.data_dir={cfg.paths.data_dir}", f"dataset.source.path={path}",
                                 f"paths.output_dir={root / 'run'}", f"paths.log_dir={root / 'logs'}",
                                 "trainer.max_epochs=2", "trainer.accelerator=cpu", "+trainer.enable_progress_bar=false",
                                 "logger=none", "model=freedom"]))
    return export_run(root / "run")


class RaiseAt:
    """A callback (``+callbacks.x._target_=conftest.RaiseAt +callbacks.x.epoch=N``) that raises
    ``error`` (a builtin exception name; KeyboardInterrupt = Ctrl-C) at the start of training
    epoch ``epoch``: a crash or an interruption in the middle of a run."""

    def __new__(cls, epoch: int, error: str = "KeyboardInterrupt"):
        import builtins

        import lightning as L

        exc = getattr(builtins, error)

        class _Raise(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module) -> None:
                if trainer.current_epoch == epoch:
                    raise exc(f"raised by the test at epoch {epoch}")

        return _Raise()


def random_graph(num_users: int, num_items: int, nnz: int = 60, cold: int | None = None, seed: int = 0):
    """A small random training graph (``nnz`` distinct pairs drawn at random) in which item ``cold``
    has no interaction: the shared fixture of the model tests."""
    import torch

    from mmrec.core.interactions import InteractionMatrix
    from mmrec.graph.bipartite import BipartiteGraph

    g = torch.Generator().manual_seed(seed)
    keys = torch.randperm(num_users * num_items, generator=g)[:nnz]
    if cold is not None:
        keys = keys[keys % num_items != cold]
    return BipartiteGraph(InteractionMatrix(keys // num_items, keys % num_items, num_users, num_items))


def info_nce_by_hand(a, b, tau: float) -> float:
    """-1/N sum_n log( exp(cos(a_n, b_n)/tau) / sum_m exp(cos(a_n, b_m)/tau) ), with loops: the
    reference the vectorised InfoNCE terms of the self-supervised models are tested against."""
    import torch.nn.functional as F

    total = 0.0
    for n in range(len(a)):
        sims = [float(F.cosine_similarity(a[n], b[m], dim=0)) / tau for m in range(len(b))]
        total -= sims[n] - math.log(sum(math.exp(s) for s in sims))
    return total / len(a)
