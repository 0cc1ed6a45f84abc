"""Fault injection, bad configs: a value out of range fails at start-up, naming the key, the
value and the allowed range, before any dataset is prepared or any run folder is written.

Every case runs ``train(cfg)`` on a config whose data and output folders do not exist yet and
checks that they still do not exist afterwards: the check ran before any data work.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from conftest import compose_cfg
from mmrec.train import ConfigError, build, train
from mmrec.utils.config import CONFIG_DIR
from conftest import REPO_ROOT
from mmrec.config_check import RULES, CheckConfig, check_config

pytestmark = pytest.mark.faults


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _run_cfg(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """A training config whose data, log and output folders are fresh (not yet created)."""
    return compose_cfg([f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path / 'run'}",
                        f"paths.log_dir={tmp_path / 'logs'}", "trainer.accelerator=cpu", "logger=none",
                        *overrides])


def _assert_nothing_written(tmp_path: Path) -> None:
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == [], f"a refused config still wrote {written}"


# (overrides, what the message must say: key=value and the allowed range)
BAD = {
    "negative l2 weight": (["model.l2_weight=-1"], "model.l2_weight=-1: must be a finite float >= 0"),
    "NaN l2 weight": (["model.l2_weight=nan"], "model.l2_weight=nan: must be a finite float >= 0"),
    "zero epochs": (["trainer.max_epochs=0"], "trainer.max_epochs=0: must be an int >= 1"),
    "epochs as a float": (["trainer.max_epochs=2.5"], "trainer.max_epochs=2.5: must be an int >= 1"),
    "min epochs above max": (["trainer.min_epochs=5", "trainer.max_epochs=2"],
                             "trainer.min_epochs=5: must be <= trainer.max_epochs=2"),
    "cut-off 0": (["evaluation.ks=[0]"], "evaluation.ks=[0]: must be a non-empty list of distinct ints >= 1"),
    "negative cut-off": (["evaluation.ks=[10,-5]"], "evaluation.ks=[10, -5]: must be a non-empty list"),
    "no cut-offs": (["evaluation.ks=[]"], "evaluation.ks=[]: must be a non-empty list"),
    "repeated cut-off": (["evaluation.ks=[20,20]"], "evaluation.ks=[20, 20]: must be a non-empty list of distinct"),
    "zero eval batch": (["dataset.eval_users_per_batch=0"], "dataset.eval_users_per_batch=0: must be an int >= 1"),
    "negative batch": (["dataset.pairs_per_batch=-256"], "dataset.pairs_per_batch=-256: must be an int >= 1"),
    "negative workers": (["dataset.num_workers=-1"], "dataset.num_workers=-1: must be an int >= 0"),
    "zero learning rate": (["model.optimizer.lr=0"], "model.optimizer.lr=0: must be a finite float > 0"),
    "negative learning rate": (["model.optimizer.lr=-1.0"], "model.optimizer.lr=-1.0: must be a finite float > 0"),
    "zero embedding": (["model.encoder.embedding_dim=0"], "model.encoder.embedding_dim=0: must be an int >= 1"),
    "negative depth": (["model.encoder.num_layers=-1"], "model.encoder.num_layers=-1: must be an int >= 0"),
    "GRCN negative depth": (["model=grcn", "model.encoder.num_layers=-2"],
                            "model.encoder.num_layers=-2: must be an int >= 0"),
    "FREEDOM drops every edge": (["model=freedom", "model.encoder.edge_dropout=1.0"],
                                 "model.encoder.edge_dropout=1.0: must be a float in [0, 1)"),
    "FREEDOM negative graph weight": (["model=freedom", "model.graph_weights.image=-0.1"],
                                      "model.graph_weights.image=-0.1: must be a finite float >= 0"),
    "fusion dropout 1": (["model=vbpr", "fusion.dropout=1.0"], "fusion.dropout=1.0: must be a float in [0, 1)"),
    "image failure share above 1": (["dataset=ml100k", "dataset.source.images.max_failure_share=1.5"],
                                    "dataset.source.images.max_failure_share=1.5: must be a float in [0, 1]"),
    "zero pixel limit": (["dataset=ml100k", "dataset.source.images.max_pixels=0"],
                         "dataset.source.images.max_pixels=0: must be an int >= 1"),
    "zero patience": (["callbacks.early_stopping.patience=0"],
                      "callbacks.early_stopping.patience=0: must be an int >= 1"),
    "minimised metric": (["callbacks.model_checkpoint.mode=min"],
                         "callbacks.model_checkpoint.mode='min': must be one of ['max']"),
    "negative seed": (["seed=-3"], "seed=-3: must be an int in [0, 4294967295] or null"),
    "seed too large": (["seed=4294967296"], "seed=4294967296: must be an int in [0, 4294967295]"),
    "fractional seed": (["seed=1.5"], "seed=1.5: must be an int in [0, 4294967295]"),
    "test metric selects": (["optimized_metric=test/recall@20"],
                            "optimized_metric='test/recall@20': model selection must use a validation metric"),
    "cut-off not evaluated": (["optimized_metric=val/recall@25"],
                              "optimized_metric='val/recall@25': is not a metric validation reports"),
    "metric typo": (["optimized_metric=val/recal@20"], "optimized_metric='val/recal@20': is not a metric"),
    "item group typo": (["optimized_metric=val/wram/recall@20"], "optimized_metric='val/wram/recall@20': is not"),
    "early stopping on a metric never logged": (["callbacks.early_stopping.monitor=val/ndcg@5"],
                                                "callbacks.early_stopping.monitor='val/ndcg@5': is not a metric"),
    "lists mode typo": (["evaluation.lists=always"], "evaluation.lists='always': must be one of"),
    "zero rank block": (["evaluation.rank_block=0"], "evaluation.rank_block=0: must be an int >= 1 or null"),
    "fewer candidates than negatives": (["sampler=dns", "sampler.num_negatives=4", "sampler.num_candidates=2"],
                                        "sampler.num_candidates=2: must be >= sampler.num_negatives=4"),
    "zero negatives": (["sampler.num_negatives=0"], "sampler.num_negatives=0: must be an int >= 1"),
    "zero devices": (["trainer.devices=0"], "trainer.devices=0: must be an int >= 1, -1 (every device)"),
    "accelerator typo": (["trainer.accelerator=gpux"], "trainer.accelerator='gpux': must be one of"),
    "demo with too few interactions": (["dataset.source.interactions_per_user=2"],
                                       "dataset.source.interactions_per_user=2: must be an int >= 5"),
    "demo with every item cold": (["dataset.source.cold_item_share=1.0"],
                                  "dataset.source.cold_item_share=1.0: must be a float in [0, 1)"),
    "model/fusion mismatch": (["model=mmgcn", "fusion=concat"],
                              "model MMGCN accepts fusion in ['late'], got fusion=concat"),
}


@pytest.mark.parametrize("overrides, message", list(BAD.values()), ids=list(BAD))
def test_bad_value_fails_before_any_data_or_run_folder(tmp_path, overrides, message):
    cfg = _run_cfg(tmp_path, overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(cfg)
    _assert_nothing_written(tmp_path)


def test_missing_resume_checkpoint_fails_before_any_data(tmp_path):
    missing = tmp_path / "gone" / "last.ckpt"
    with pytest.raises(ConfigError, match=re.escape(f"ckpt_path='{missing}': no such checkpoint file")):
        train(_run_cfg(tmp_path, [f"ckpt_path={missing}"]))
    _assert_nothing_written(tmp_path)


def test_every_bad_value_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        train(_run_cfg(tmp_path, ["model.l2_weight=-1", "trainer.max_epochs=0", "evaluation.ks=[0]",
                                  "dataset.eval_users_per_batch=0"]))
    text = str(err.value)
    assert text.startswith("4 invalid configuration values")
    for key in ("model.l2_weight=-1", "trainer.max_epochs=0", "evaluation.ks=[0]", "dataset.eval_users_per_batch=0"):
        assert f"  - {key}:" in text, key
    _assert_nothing_written(tmp_path)


def test_build_checks_too(tmp_path):
    """``build()`` (what tests and notebooks call) refuses before preparing the dataset."""
    with pytest.raises(ConfigError, match=re.escape("dataset.eval_users_per_batch=0: must be an int >= 1")):
        build(_run_cfg(tmp_path, ["dataset.eval_users_per_batch=0"]))
    _assert_nothing_written(tmp_path)


def test_key_absent_from_a_model_is_not_required():
    """Rules constrain keys where they exist: pop has no optimiser, LightGCN no edge_dropout."""
    cfg = compose_cfg(["model=pop"])
    assert OmegaConf.select(cfg, "model.optimizer") is None and "edge_dropout" not in cfg.model.encoder
    check_config(cfg)


def test_beyond_accuracy_metric_may_drive_selection_only_when_computed_every_validation():
    with pytest.raises(ConfigError, match=re.escape("optimized_metric='val/coverage@20': is not a metric")):
        check_config(compose_cfg(["optimized_metric=val/coverage@20"]))  # lists=final: not logged while training
    check_config(compose_cfg(["optimized_metric=val/coverage@20", "evaluation.lists=every"]))


# --------------------------------------------------------------------------------------
# The command line: Hydra's run folder is not created either
# --------------------------------------------------------------------------------------
def test_cli_refuses_before_hydra_creates_the_run_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmrec.train", "trainer.max_epochs=0", "model.l2_weight=-1",
                           f"paths.log_dir={tmp_path / 'logs'}", f"paths.data_dir={tmp_path / 'data'}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]  # a user error (mmrec.utils.errors)
    assert "trainer.max_epochs=0: must be an int >= 1" in proc.stderr
    assert "model.l2_weight=-1: must be a finite float >= 0" in proc.stderr
    assert "Traceback" not in proc.stderr  # a message, not a stack trace
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("config_name", ["train", "prepare"])
def test_both_entry_points_check_in_hydra_before_the_run_folder(config_name, capsys):
    """``mmrec.train`` and ``mmrec.prepare`` share conf/hydra/default.yaml, whose callback
    checks the composed config in ``on_run_start`` (before Hydra makes the run folder)."""
    from hydra import compose, initialize_config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=["dataset.source.num_users=0"], return_hydra_config=True)
    assert cfg.hydra.callbacks.check_config._target_ == "mmrec.config_check.CheckConfig"
    with pytest.raises(SystemExit) as err:
        CheckConfig().on_run_start(config=cfg)
    assert err.value.code == 2
    assert "dataset.source.num_users=0: must be an int >= 1" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# The shipped configs pass, and the rule table names real keys
# --------------------------------------------------------------------------------------
def _shipped_overrides() -> list[list[str]]:
    """Every choice of every group test_configs composes, plus experiments and searches, each
    with the settings it needs (required keys; the model a fusion belongs to).

    A compose costs ~0.2 s, so choices of groups that do not depend on each other share one:
    the i-th model is composed with the i-th dataset, trainer, logger and callbacks choice (cycled),
    with a fusion it supports not yet covered, and, if it takes any sampler (it does not build
    users from histories), with the next sampler: the groups' choices in 21 composes instead of 33."""
    from hydra.utils import get_class

    supports, any_sampler = {}, set()
    for model in _choices("model"):
        cls = get_class(OmegaConf.load(CONFIG_DIR / "model" / f"{model}.yaml").model.encoder._target_)
        supports[model] = set(cls.supported_fusions)
        if not cls.user_from_history:
            any_sampler.add(model)
    required = {"mmrec": ["dataset.source.path=/x", "dataset.source.name=y"],
                "amazon2023": ["dataset.source.category=All_Beauty"]}
    cycled = {group: _choices(group) for group in ("dataset", "trainer", "logger", "callbacks")}
    fusions, samplers, out = _choices("fusion"), _choices("sampler"), []
    for i, model in enumerate(_choices("model")):
        combo = [f"model={model}"]
        for group, choices in cycled.items():
            choice = choices[i % len(choices)]
            combo += [f"{group}={choice}", *(required.get(choice, []) if group == "dataset" else [])]
        fusion = next((f for f in fusions if f in supports[model]), None)
        if fusion is not None:
            fusions.remove(fusion)
            combo.append(f"fusion={fusion}")
        if samplers and model in any_sampler:
            combo.append(f"sampler={samplers.pop(0)}")
        out.append(combo)
    assert not samplers and len(_choices("dataset")) <= len(out), "more choices than models: add composes"
    for fusion in fusions:  # any fusion no model took above: with the first model that supports it
        out.append([f"fusion={fusion}", f"model={next(m for m in supports if fusion in supports[m])}"])
    for group in ("experiment", "hparams_search"):
        for choice in _choices(group):
            if group == "hparams_search" and choice == "optuna":
                continue  # the shared base of the *_optuna searches, not selectable alone
            out.append([f"{group}={choice}"])
    return out


SHIPPED = _shipped_overrides()


@pytest.fixture(scope="module")
def shipped_cfgs() -> list[DictConfig]:
    # the training configs of every group choice, the serving entry configs (recommender, limits), prepare
    # one Hydra context for all of them (a fresh one per config costs ~20% more)
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return ([compose("train", overrides=o) for o in SHIPPED] + [compose(name, overrides=["bundle=/b"])
                                                                    for name in ("serve", "recommend")]
                + [compose("prepare")])


def test_every_shipped_config_passes(shipped_cfgs):
    for cfg in shipped_cfgs:
        check_config(cfg)  # raises, naming the key, if a shipped default were out of range


def test_the_shipped_composes_cover_every_choice():
    """Bundling choices into shared composes must not leave one out."""
    covered = {item for overrides in SHIPPED for item in overrides}
    groups = ("dataset", "model", "fusion", "sampler", "trainer", "logger", "callbacks", "experiment", "hparams_search")
    missing = [f"{g}={c}" for g in groups for c in _choices(g)
               if f"{g}={c}" not in covered and (g, c) != ("hparams_search", "optuna")]
    assert not missing, missing


def test_test_suite_settings_pass():
    """The quick settings every training test uses (conftest's make_cfg) are valid too."""
    from conftest import SMALL_DEMO

    check_config(compose_cfg(SMALL_DEMO + ["trainer.max_epochs=2", "trainer.accelerator=cpu",
                                           "+trainer.enable_progress_bar=false", "+trainer.fast_dev_run=true"]))


#: Rules for keys no shipped config sets, only a user with ``+key=value``.
ADDED_BY_USERS = {"model.optimizer.weight_decay"}


def test_every_rule_names_a_key_of_some_shipped_config(shipped_cfgs):
    """A renamed key must not leave its rule checking nothing."""
    def present(pattern: str) -> bool:
        head, star, _ = pattern.partition(".*")
        for cfg in shipped_cfgs:
            node = OmegaConf.select(cfg, head, default="<absent>")
            if node != "<absent>" and (not star or isinstance(node, DictConfig)):
                return True
        return False

    missing = [key for key in RULES if key not in ADDED_BY_USERS and not present(key)]
    assert not missing, f"rules for keys no shipped config has: {missing}"


# --------------------------------------------------------------------------------------
# Mistakes Hydra catches: one line with the nearest valid names, exit status 2 (mmrec.utils.cli)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("config_name,args,expected", [
    ("train", ["model=lightgcm"], "model=lightgcm: no such model choice (did you mean lightgcn?); the choices are"),
    ("train", ["model.encoder.num_layerz=2"], "model.encoder.num_layerz=2: model.encoder.num_layerz is not a key of "
                                              "this configuration (did you mean num_layers?)"),
    ("train", ["modle=lightgcn"], "modle is not a key of this configuration (did you mean model"),
    ("train", ["+model.encoder.num_layers=3"], "model.encoder.num_layers already exists; set it without the +"),
    ("train", ["trainer.max_epochs=="], "trainer.max_epochs==: not a valid override"),
    ("prepare", ["modality_encoder=offlin"], "no such modality_encoder choice (did you mean offline?)"),
    ("export", ["run=/x", "export.force=true"], "export.force is not a key of this configuration (did you mean force?)"),
])
def test_a_mistyped_override_is_named_with_the_nearest_valid_names(config_name, args, expected):
    from mmrec.utils.cli import override_problem

    assert expected in (override_problem(config_name, args) or "")


def test_valid_overrides_and_hydra_flags_pass_the_check():
    from mmrec.utils.cli import override_problem

    for args in (["model=freedom", "dataset=ml100k", "seed=3"], ["hydra.run.dir=/tmp/x", "experiment=lightgcn_baby"],
                 ["--cfg", "job"], ["-m", "seed=0,1"], ["+model.optimizer.weight_decay=0.1"]):
        assert override_problem("train", args) is None, args


def test_a_mistyped_choice_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmrec.train", "model=lightgcm", f"paths.log_dir={tmp_path / 'logs'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model=lightgcm: no such model choice (did you mean lightgcn?)")
    assert not (tmp_path / "logs").exists()  # refused before Hydra made a run folder


def test_a_bad_request_limit_is_one_line_before_the_bundle_loads(tmp_path):
    from mmrec.recommend import main  # noqa: F401 - the entry point's config is checked by check_config

    cfg = compose_cfg([f"bundle={tmp_path}", "recommender.limits.max_k=0", "user=u1"], config_name="recommend")
    with pytest.raises(ConfigError, match=r"recommender.limits.max_k=0: must be an int >= 1"):
        check_config(cfg)
