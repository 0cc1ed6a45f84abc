"""Every config group composes and instantiates; typos and test-set selection fail clearly."""

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_cfg
from mmrec.utils.config import CONFIG_DIR


def _choices(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["dataset", "model", "fusion", "sampler", "trainer", "logger", "callbacks",
                                   "experiment"])
def test_every_choice_composes(group, tmp_path):
    for choice in _choices(group):
        overrides = [f"{group}={choice}", f"paths.output_dir={tmp_path}"]
        if group == "dataset" and choice == "mmrec":
            overrides += ["dataset.source.path=/x", "dataset.source.name=y"]
        cfg = compose_cfg(overrides)
        OmegaConf.resolve(cfg)  # every interpolation resolves


@pytest.mark.parametrize("choice", _choices("sampler"))
def test_samplers_instantiate(choice):
    sampler = instantiate(compose_cfg([f"sampler={choice}"]).sampler)
    assert sampler.num_negatives >= 1


def test_datasets_instantiate_without_preparing(tmp_path):
    for choice in ("demo", "baby"):
        cfg = compose_cfg([f"dataset={choice}", f"paths.data_dir={tmp_path}"])
        dm = instantiate(cfg.dataset)
        assert dm.root.parent == tmp_path and hasattr(dm.source, "prepare")


def test_trainer_callbacks_loggers_instantiate(tmp_path):
    cfg = compose_cfg([f"paths.output_dir={tmp_path}", "logger=csv"])
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    assert sorted(type(c).__name__ for c in callbacks) == ["EarlyStopping", "EpochStats", "ModelCheckpoint",
                                                           "ModelCheckpoint", "RunProgress"]  # best + last
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=[instantiate(cfg.logger.csv)])
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_typo_in_key_fails():
    with pytest.raises(ConfigCompositionException, match="num_layerz"):
        compose_cfg(["model.encoder.num_layerz=2"])


def test_unknown_choice_fails():
    with pytest.raises(ConfigCompositionException, match="nosuchmodel"):
        compose_cfg(["model=nosuchmodel"])


def test_every_object_config_has_target():
    for path in CONFIG_DIR.rglob("*.yaml"):
        if path.parent.name in ("hydra", "paths", "experiment", "hparams_search") or path.name == "train.yaml":
            continue
        node = OmegaConf.load(path)
        if path.parent.name in ("callbacks", "logger"):
            nodes = [v for k, v in node.items() if k != "defaults"]
        elif path.parent.name == "model":
            # baselines with nothing to train (pop, random) have no optimiser
            nodes = [node.model.encoder] + ([node.model.optimizer] if node.model.optimizer is not None else [])
        else:
            nodes = [node] if "defaults" not in node else []
        for n in nodes:
            assert "_target_" in n, f"{path}: object config without _target_"


def test_every_yaml_key_is_commented():
    for path in CONFIG_DIR.rglob("*.yaml"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "-", "_target_", "_partial_", "{}")) or stripped.endswith(":"):
                continue
            if path.parent.name == "hydra":
                continue
            assert "#" in line, f"{path}:{n}: key without a comment: {stripped}"


def test_model_rejects_fusion_it_does_not_support(make_cfg):
    from mmrec.train import ConfigError, build

    with pytest.raises(ConfigError, match="accepts fusion in \\['late'\\], got fusion=concat"):
        build(make_cfg(["model=mmgcn", "fusion=concat"]))
    with pytest.raises(ConfigError, match="LightGCN accepts fusion in \\['none'\\]"):
        build(make_cfg(["fusion=attention"]))


@pytest.mark.parametrize("overrides, expected", [
    (["model=freedom"], [0.1, 0.9]),  # FREEDOM's mm_image_weight, whatever fusion= says
    (["model=freedom", "fusion=graph_sum"], [0.1, 0.9]),
    (["model=freedom", "model.graph_weights.image=0.9"], [0.5, 0.5]),
    (["model=freedom", "fusion.weights=null"], [0.5, 0.5]),
    (["model=lattice"], [0.5, 0.5]),  # no graph_weights: equal
])
def test_graph_sum_weights_default_to_the_models(overrides, expected):
    fusion = instantiate(compose_cfg(overrides).fusion)(feature_dims={"image": 4, "text": 3})
    assert fusion.weights.tolist() == pytest.approx(expected)
