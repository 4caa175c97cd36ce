"""Same inputs and params give byte-identical outputs on CPU: what DVC's run cache relies on."""
import hashlib
import subprocess
import sys

from conftest import DAY


def tree_hashes(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def stage(workspace, *args):
    subprocess.run([sys.executable, "-m", "pipeline", *args, "--params", "params.yaml"],
                   cwd=workspace, check=True, capture_output=True)


def test_model_stages_are_byte_identical_when_rerun(completed_run, tmp_path):
    runs = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt
        stage(completed_run, "pretrain", "--data", "data/raw", "--day", DAY, "--out", str(out / "pretrain"))
        stage(completed_run, "importance", "--data", "data/raw", "--day", DAY,
              "--embeddings", str(out / "pretrain/embeddings"), "--out", str(out / "importance"))
        stage(completed_run, "train", "--data", "data/raw", "--day", DAY,
              "--embeddings", str(out / "pretrain/embeddings"),
              "--weights", str(out / "importance/scores.parquet"), "--out", str(out / "train"))
        runs.append(tree_hashes(out))
    assert runs[0] == runs[1]
    assert "train/model/ranker.safetensors" in runs[0] and "pretrain/encoder/model.safetensors" in runs[0]
