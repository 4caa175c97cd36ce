"""Atomic outputs: a writer killed mid-write leaves a hidden temporary folder, which the next write of
the same output removes (while another live writer's folder is left alone)."""
import os
import subprocess
import sys

from pipeline.atomic import atomic_dir


def test_the_next_write_removes_a_dead_writers_temporary_folder(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    orphan = tmp_path / f".model.{dead.stdout.strip()}.abc123"
    (orphan / "half").mkdir(parents=True)
    live = tmp_path / f".model.{os.getppid()}.def456"
    live.mkdir()
    other = tmp_path / f".metrics.{dead.stdout.strip()}.xyz"
    other.mkdir()

    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("w")

    assert not orphan.exists()
    assert live.exists() and other.exists()
    assert (tmp_path / "model" / "weights").read_text() == "w"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "model"])
