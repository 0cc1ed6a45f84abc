"""The README's "Your own model / dataset" example works as printed: its files are copied into a
folder outside the checkout and trained with ``python -m mmrec.train --config-dir``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from conftest import REPO_ROOT, SMALL_DEMO


def _example_files() -> dict[str, str]:
    """``{relative path: text}`` of every block marked ``<!-- example: <path> -->`` in the README."""
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- example: (\S+) -->\n```\w*\n(.*?)```", readme, flags=re.S)
    return dict(blocks)


def test_the_readme_extension_example_trains_from_another_folder(tmp_path):
    files = _example_files()
    assert set(files) == {"mypkg/scaled_mf.py", "my_conf/model/scaled_mf.yaml"}
    project = tmp_path / "my_project"
    for rel, text in files.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    env = {**os.environ, "PYTHONPATH": "."}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "mmrec.train", "--config-dir", "my_conf", "model=scaled_mf",
                           "trainer.max_epochs=2", "logger=none", *SMALL_DEMO], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (project / "logs" / "train" / "runs").iterdir()
    record = json.loads((run / "metrics.json").read_text())
    assert record["model"] == "mypkg.scaled_mf.ScaledMF" and record["metrics"]["test/recall@20"] > 0
    # a mistake in the user's own config folder is reported like one in the package's
    bad = subprocess.run([sys.executable, "-m", "mmrec.train", "--config-dir", "my_conf", "model=scaled_mff"],
                         cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "did you mean scaled_mf" in bad.stderr
