"""Fault injection for trust (issue 25): the same seed gives the same numbers whatever the
dataset's history, a run is never overwritten or mixed with another, export and serving never
show a silently wrong result, and every repair hint works when it is followed.

Each case asserts the message (file / key / id and the next step) and, where something was
written before, that it is unchanged (SHA-256 of every file before and after). The trained runs
are made once per module and copied where a case alters them.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import numpy as np
import pytest

from conftest import SMALL_DEMO, compose_cfg
from mmrec.data.prepared import damaged_features, read_manifest, repair_command
from mmrec.prepare import prepare
from mmrec.runs import RunFolderError, RunLock
from mmrec.serving.bundle import BundleError, load_bundle
from mmrec.export import export_run
from mmrec.serving.recommender import Recommender
from mmrec.train import train
from conftest import REPO_ROOT
from mmrec.utils.errors import MmrecError

pytestmark = pytest.mark.faults


def _snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (to prove that nothing written was altered)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "train.log"}


def _cfg(data_dir: Path, out: Path, *extra: str):
    return compose_cfg([f"paths.data_dir={data_dir}", f"paths.output_dir={out}", f"paths.log_dir={out.parent / 'logs'}",
                        "trainer.max_epochs=1", "trainer.accelerator=cpu", "+trainer.enable_progress_bar=false",
                        "logger=none", *SMALL_DEMO, *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished VBPR run and an interrupted LightGCN run on the small demo, each with its
    data folder: ``{"data": ..., "vbpr": run folder, "interrupted": run folder}``."""
    root = tmp_path_factory.mktemp("trust")
    data = root / "data"
    train(_cfg(data, root / "vbpr", "model=vbpr", "trainer.max_epochs=2"))
    train(_cfg(data, root / "interrupted", "trainer.max_epochs=4", "+callbacks.stop._target_=conftest.RaiseAt",
               "+callbacks.stop.epoch=2"))
    return {"data": data, "vbpr": root / "vbpr", "interrupted": root / "interrupted"}


# -- reproducibility: preparation never changes what a seed gives ----------------------------------

def _damage_bytes(path: Path, offset: int = 20000, length: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, min(offset + length, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_same_seed_same_metrics_whatever_the_dataset_history(tmp_path):
    """Generated in this process, found prepared, repaired in this process (a damaged store
    re-registers last): one seed, identical validation metrics and the same modality order."""
    def once(tag: str):
        metrics, objects = train(_cfg(tmp_path / "data", tmp_path / tag, "model=vbpr", "seed=3", "test=false"))
        return metrics, objects["run"].data.features.names

    generated, names_a = once("generated")
    prepared, names_b = once("prepared")
    store = next((tmp_path / "data").glob("demo-*")) / "features" / "image.lmdb" / "data.mdb"
    _damage_bytes(store)
    repaired, names_c = once("repaired")
    assert generated == prepared == repaired
    assert names_a == names_b == names_c == ["image", "text"]


# -- never lose a run --------------------------------------------------------------------------------

def _kept(run: Path) -> dict[str, str]:
    snap = _snapshot(run)
    assert "config.yaml" in snap and "metrics.json" in snap
    return snap


@pytest.mark.parametrize("extra,match", [
    (["model=lightgcn"], r"is a checkpoint of VBPR .* but this configuration trains LightGCN"),
    (["model=vbpr", "dataset.source.seed=1"], r"was trained on dataset 'demo' \(.*demo-s0.*but this configuration "
                                             r"trains on 'demo' \(.*demo-s1"),
    (["model=vbpr", "model.encoder.embedding_dim=32"], r"its weights do not fit this model \(encoder\..*64"),
])
def test_a_resume_from_another_run_is_refused_before_anything_is_written(runs, extra, match):
    run = runs["vbpr"]
    before = _kept(run)
    with pytest.raises(RunFolderError, match=match):
        train(_cfg(runs["data"], run, *extra, "trainer.max_epochs=4", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"))
    assert _snapshot(run) == before  # config.yaml, metrics.json, checkpoints: untouched
    export_run(run, out=run.parent / "vbpr-bundle", force=True)  # and the run still exports


def test_a_second_training_into_a_run_folder_is_refused(runs):
    run = runs["vbpr"]
    before = _kept(run)
    with pytest.raises(RunFolderError, match=r"already holds a run .*continued only by resuming it \(ckpt_path="):
        train(_cfg(runs["data"], run, "model=vbpr"))
    assert _snapshot(run) == before


def test_a_folder_another_training_writes_into_is_refused_and_kept(runs, tmp_path):
    folder = tmp_path / "busy"
    with RunLock(folder):  # another process (here: this one) trains into it
        with pytest.raises(RunFolderError, match=rf"another training \(pid {os.getpid()}\) is writing into"):
            train(_cfg(runs["data"], folder))
        assert (folder / ".run.lock").is_file()
    assert not (folder / ".run.lock").exists()  # released: the folder reads as free again
    assert not (folder / "config.yaml").exists()


def test_a_resume_into_another_folder_is_refused(runs, tmp_path):
    run = runs["vbpr"]
    before = _kept(run)
    other = tmp_path / "other"
    with pytest.raises(RunFolderError, match=rf"belongs to the run {run}.*but the output folder is {other}"):
        train(_cfg(runs["data"], other, "model=vbpr", "trainer.max_epochs=4",
                   f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"))
    assert _snapshot(run) == before and not (other / "config.yaml").exists()


def test_a_full_disk_never_leaves_a_truncated_checkpoint(runs, tmp_path, capsys):
    """The first checkpoint does not fit under the file-size limit: the run ends with one line
    naming the file and the next step, and no partial file is left under its name. The limit is
    this process's soft RLIMIT_FSIZE, lowered only around the training and restored after it (the
    kernel then fails every write past it with EFBIG, as a full disk fails it with ENOSPC)."""
    from mmrec.utils.errors import user_errors

    run = tmp_path / "full"
    cfg = _cfg(runs["data"], run)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, hard))  # config, logs fit; a checkpoint does not
        with pytest.raises(SystemExit) as stop, user_errors():
            train(cfg)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"error: disk full at {run / 'checkpoints' / 'epoch_000.ckpt'}" in err and "free space and rerun" in err
    assert list((run / "checkpoints").iterdir()) == []  # neither a truncated epoch_000.ckpt nor a temporary file


# -- export and serving never show a silently wrong result ------------------------------------------

def _writable(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def test_a_nan_vector_in_a_bundle_is_refused_and_never_ranked_first(runs, tmp_path):
    bundle = export_run(runs["vbpr"], out=tmp_path / "bundle")
    _writable(bundle)
    vectors = np.load(bundle / "item_vectors.npy")
    rec = Recommender.load(bundle)
    top = rec.recommend(["u3"], k=1)[0][0].item
    row = int(rec.item_index[top])
    vectors[row] = np.nan
    np.save(bundle / "item_vectors.npy", vectors)
    manifest = json.loads((bundle / "manifest.json").read_text())  # a checksum that agrees with the damage
    data = (bundle / "item_vectors.npy").read_bytes()
    manifest["files"]["item_vectors.npy"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"item_vectors.npy: 1 rows hold NaN or inf \(rows \[{row}\]\).*"
                                          rf"altered after export.*python -m mmrec.export run=.*vbpr.*force=true"):
        load_bundle(bundle)
    unverified = Recommender.load(bundle, verify=False)  # read without checks: NaN still never leads
    for diversity in (0.0, 0.5):
        ranked = [r.item for r in unverified.recommend(["u3"], k=10, diversity=diversity)[0]]
        assert top not in ranked[:9]


def test_a_run_of_an_mmrec_format_dataset_exports_its_own_ids(tmp_path):
    src = tmp_path / "toy"
    src.mkdir()
    rng = np.random.default_rng(0)
    lines = ["userID\titemID\trating\ttimestamp\tx_label\n"]
    for u in range(30):
        items = rng.choice(20, size=6, replace=False)
        lines += [f"{u}\t{i}\t1\t0\t{label}\n" for i, label in zip(items, [0, 0, 0, 0, 1, 2])]
    (src / "toy.inter").write_text("".join(lines))
    cfg = compose_cfg([f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path / 'run'}",
                       "dataset=mmrec", f"dataset.source.path={src}", "dataset.source.name=toy", "trainer.max_epochs=1",
                       "trainer.accelerator=cpu", "+trainer.enable_progress_bar=false", "logger=none"])
    train(cfg)
    bundle = load_bundle(export_run(tmp_path / "run"))
    assert bundle.items["raw_id"].tolist() == [str(i) for i in range(20)]  # the dataset's own ids
    assert bundle.items["title"].tolist() == [str(i) for i in range(20)]  # a card never without a name
    assert bundle.users["raw_id"].tolist() == [str(u) for u in range(30)]
    assert Recommender(bundle).recommend(["3"], k=3)[0][0].item.isdigit()


def test_an_interrupted_run_is_marked_in_the_bundle_and_info(runs, tmp_path):
    from fastapi.testclient import TestClient

    from mmrec.serving.app import create_app

    bundle = export_run(runs["interrupted"], out=tmp_path / "bundle")
    card = load_bundle(bundle).card
    assert card["interrupted"] == "Ctrl-C" and card["best_epoch"] in (0, 1)
    with TestClient(create_app(lambda: Recommender.load(bundle))) as client:
        assert client.get("/info").json()["interrupted"] == "Ctrl-C"
    finished = load_bundle(export_run(runs["vbpr"], out=tmp_path / "finished")).card
    assert finished["interrupted"] is None


def test_a_copied_run_folder_exports_its_own_checkpoint_or_nothing(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs["vbpr"], copy)
    recorded = Path(json.loads((copy / "metrics.json").read_text())["best_checkpoint"])
    assert recorded.parent.parent == runs["vbpr"]  # metrics.json names the original folder's file
    card = load_bundle(export_run(copy)).card
    assert Path(card["checkpoint"]) == copy / "checkpoints" / recorded.name
    (copy / "checkpoints" / recorded.name).unlink()
    with pytest.raises(BundleError, match=rf"recorded as {recorded}, outside this run folder, and "
                                          rf"{copy / 'checkpoints' / recorded.name} does not exist"):
        export_run(copy, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_a_truncated_selected_checkpoint_is_named(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs["vbpr"], copy)
    best = copy / "checkpoints" / Path(json.loads((copy / "metrics.json").read_text())["best_checkpoint"]).name
    best.write_bytes(best.read_bytes()[:5000])
    with pytest.raises(BundleError, match=rf"{best}: the selected checkpoint cannot be read .*truncated or damaged"):
        export_run(copy)


# -- repair hints that work when followed -------------------------------------------------------------

def _follow(hint: str, config_name: str):
    """Compose the config a printed ``python -m mmrec.<x> k=v ...`` command would run (Hydra's
    struct mode refuses a key that does not exist, as the command line would)."""
    words = shlex.split(hint)
    assert words[:3] == ["python", "-m", f"mmrec.{config_name}"], hint
    return compose_cfg(words[3:], config_name=config_name)


def test_the_damaged_bundle_hint_reexports_it(runs, tmp_path):
    from mmrec.export import export

    run = tmp_path / "run"
    shutil.copytree(runs["vbpr"], run)
    bundle = export_run(run)
    _writable(bundle)
    _damage_bytes(bundle / "user_vectors.npy", offset=200, length=8)
    with pytest.raises(BundleError) as err:
        load_bundle(bundle)
    hint = str(err.value).split("re-export it with `")[1].rstrip("`")
    assert hint == f"python -m mmrec.export run={run} force=true"
    export(_follow(hint, "export"))
    load_bundle(bundle)  # whole again


def _flip(root: Path) -> None:
    _damage_bytes(root / "features" / "image.lmdb" / "data.mdb")


def _wrong_dim(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["features"]["image"]["dim"] = 32
    (root / "manifest.json").write_text(json.dumps(manifest))


def _reregister(root: Path) -> None:
    """Record the store's current size and checksum, so that only deeper checks can find the damage."""
    manifest = json.loads((root / "manifest.json").read_text())
    data = root / "features" / "image.lmdb" / "data.mdb"
    manifest["features"]["image"].update(bytes=data.stat().st_size, sha256=hashlib.sha256(data.read_bytes()).hexdigest())
    (root / "manifest.json").write_text(json.dumps(manifest))


def _wrong_count(root: Path) -> None:
    from mmrec.features.store import FeatureStore

    path = root / "features" / "image.lmdb"
    shutil.rmtree(path)
    with FeatureStore.create(path, dim=64, num_items=151, modality_encoder="x", dtype="float16") as writer:
        writer.put_many(np.arange(151), np.ones((151, 64)))
    _reregister(root)


def _nan(root: Path) -> None:
    path = root / "features" / "image.lmdb"
    env = lmdb.open(str(path), max_dbs=8, subdir=True)
    blocks = env.open_db(b"blocks")
    with env.begin(write=True) as txn:
        key, value = next(iter(txn.cursor(db=blocks)))
        txn.put(key, b"\xff\xff" + bytes(value)[2:], db=blocks)  # float16 0xFFFF is NaN: item 0's first value
    env.close()
    _reregister(root)


DAMAGE = {"flipped bytes": _flip, "wrong dim": _wrong_dim, "wrong count": _wrong_count, "nan": _nan}


@pytest.fixture
def damaged_demo(tmp_path):
    """A fresh copy of the small demo dataset (as training prepared it) and the damage to apply."""
    def make(kind: str) -> Path:
        cfg = compose_cfg([f"paths.data_dir={tmp_path / 'data'}", *SMALL_DEMO], config_name="prepare")
        root = Path(cfg.dataset.root)
        if not root.exists():
            from hydra.utils import instantiate

            instantiate(cfg.dataset.source).prepare(root)  # as a training run prepares it: no prepare_command
        DAMAGE[kind](root)
        assert "image" in damaged_features(root, deep=True), kind
        return root
    return make


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_demo_store_is_repaired_by_the_printed_command(damaged_demo, kind):
    root = damaged_demo(kind)
    hint = repair_command(read_manifest(root), root)
    assert f"dataset.root={root}" in hint and "dataset.source.num_users=200" in hint
    records = prepare(_follow(hint, "prepare"))
    assert {r["stage"]: r["status"] for r in records}["features_image"] == "ran"
    assert damaged_features(root, deep=True) == {}


@pytest.mark.parametrize("force", [["features_image"], ["tables"]])
def test_forcing_a_stage_of_a_damaged_demo_repairs_it(damaged_demo, force):
    root = damaged_demo("flipped bytes")
    hint = repair_command(read_manifest(root), root)
    prepare(_follow(f"{hint} prepare.force=[{','.join(force)}]", "prepare"))
    assert damaged_features(root, deep=True) == {}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_training_repairs_a_damaged_demo_store_itself(damaged_demo, tmp_path, kind):
    damaged_demo(kind)
    train(_cfg(tmp_path / "data", tmp_path / "run", "model=vbpr"))
    assert damaged_features(next((tmp_path / "data").glob("demo-*")), deep=True) == {}


def test_a_dataset_without_validation_rows_fails_at_start(tmp_path):
    src = tmp_path / "toy"
    src.mkdir()
    lines = ["userID\titemID\trating\ttimestamp\tx_label\n"] + [f"{u}\t{i}\t1\t0\t{0 if i < 4 else 2}\n"
                                                             for u in range(10) for i in range(u % 3, u % 3 + 6)]
    (src / "toy.inter").write_text("".join(lines))
    with pytest.raises(MmrecError, match=r"has no validation interactions \(split 1 in interactions.parquet\)"):
        train(compose_cfg([f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path / 'run'}",
                           "dataset=mmrec", f"dataset.source.path={src}", "dataset.source.name=toy",
                           "trainer.accelerator=cpu", "logger=none"]))
    assert not (tmp_path / "run" / "config.yaml").exists()


def _train_cli(tmp_path: Path, data_dir: Path, prefix: list[str] | None = None, **popen) -> subprocess.CompletedProcess:
    cmd = [*(prefix or []), sys.executable, "-m", "mmrec.train", f"paths.log_dir={tmp_path / 'logs'}",
           f"paths.data_dir={data_dir}", "trainer.max_epochs=1", "trainer.accelerator=cpu", "logger=none", *SMALL_DEMO]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env, **popen)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def test_a_read_only_data_folder_is_one_line_and_leaves_no_run_folder(tmp_path):
    data = tmp_path / "ro"
    data.mkdir()
    # a read-only bind mount in a private mount namespace (nothing outside this process sees it); where
    # namespaces are not allowed, a data folder below a regular file cannot be written either
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True) if shutil.which("unshare") else None
    if probe is not None and probe.returncode == 0:
        prefix = ["unshare", "-rm", "sh", "-c", f'mount --bind "{data}" "{data}" && mount -o remount,bind,ro "{data}" '
                                                f'&& exec "$0" "$@"']
        proc = _train_cli(tmp_path, data, prefix)
        expected = f"cannot write {data / 'demo-s0'} ([Errno 30] Read-only file system"
    else:
        blocker = tmp_path / "file"
        blocker.write_text("")
        proc = _train_cli(tmp_path, blocker / "data")
        expected = f"cannot write {blocker / 'data'}"
    line = _one_error_line(proc)
    assert expected in line and "set paths.data_dir (or dataset.root) to a writable folder" in line
    assert not list((tmp_path / "logs").rglob("*.log"))  # the run folder Hydra made is gone again


def test_a_full_disk_while_generating_the_demo_is_one_line_and_leaves_no_run_folder(tmp_path):
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # the demo's first feature store does not fit

    line = _one_error_line(_train_cli(tmp_path, tmp_path / "data", preexec_fn=limit))
    assert f"disk full or write error at {tmp_path / 'data' / 'demo-s0' / 'features'}" in line and "rerun" in line
    assert not list((tmp_path / "logs").rglob("*.log"))


def test_an_item_id_that_is_not_a_number_is_named(tmp_path):
    from mmrec.data.images import fetch_images
    from mmrec.data.prepared import DatasetError

    with pytest.raises(DatasetError, match=r"item id '../../evil' is not a whole number >= 0"):
        fetch_images([("../../evil", ["http://127.0.0.1:9/a.jpg"])], tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def test_the_resume_hint_repeats_the_run_s_own_overrides():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from mmrec.utils.config import CONFIG_DIR, command_line

    GlobalHydra.instance().clear()
    overrides = ["model=vbpr", "seed=3", "ckpt_path=/x/last.ckpt", "hydra.run.dir=/x"]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert command_line("mmrec.train", drop=("ckpt_path", "hydra.run.dir")) == "python -m mmrec.train model=vbpr seed=3"
    finally:
        HydraConfig.instance().cfg = None
