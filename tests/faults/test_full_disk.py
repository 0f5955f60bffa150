"""A real full disk under the resume checkpoints: one line naming the file and the fix, exit 2, the run FAILED
with its parameters kept. The disk is a 16 KiB tmpfs (mounting needs root; skipped, with the reason, elsewhere)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medvlm.cli import main
from tests.conftest import BREAST_ROOT, needs_breastmnist

pytestmark = needs_breastmnist


@pytest.fixture
def full_disk(tmp_path) -> Iterator[Path]:
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({mounted.stderr.strip() or 'mount failed'}); run as root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_under_the_checkpoints_is_one_line_and_the_run_failed(workdir, tiny_model_dir, full_disk, capsys):
    code = main(["finetune", "--model", f"local-dir:{tiny_model_dir}", "--dataset", "breastmnist", "--size", "28",
                 "--data_root", str(BREAST_ROOT), "--strategy", "full", "--epochs", "2", "--checkpoint_every", "0",
                 "--checkpoint_dir", str(full_disk)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("medvlm: error:")]
    assert line.startswith(f"medvlm: error: cannot write checkpoint {full_disk}/") and "No space left on device" in line
    assert line.endswith("free disk space or pass checkpoint_dir=WRITABLE_FOLDER")
    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["medvlm.error"]
    assert run.data.params["strategy"] == "full" and run.data.params["epochs"] == "2"  # what was logged is kept
