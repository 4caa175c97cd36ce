"""`python -m pipeline init DIR`: a workspace for a user's own data, refused where it would clobber one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT


def init(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "init", *args], capture_output=True, text=True, cwd=cwd)


def test_a_new_folder_becomes_a_git_and_dvc_workspace(tmp_path):
    ws = tmp_path / "shop"
    result = init(str(ws))
    assert result.returncode == 0, result.stderr
    assert f"workspace ready: {ws}" in result.stdout
    for name in ("dvc.yaml", "weekly/dvc.yaml", "weekly/context.yaml", "params.yaml", ".dvcignore",
                 "pipeline/__main__.py", "pipeline/ops/repro.py"):
        assert (ws / name).read_bytes() == (ROOT / name).read_bytes(), name
    assert (ws / "data/raw/impressions").is_dir() and (ws / "data/raw/catalog").is_dir()
    # A first commit holds all of it, and nothing is left out of git but what .gitignore names.
    git = lambda *args: subprocess.run(["git", *args], cwd=ws, capture_output=True, text=True).stdout  # noqa: E731
    assert git("log", "--format=%s").splitlines() == ["sieve: workspace made by python -m pipeline init"]
    assert {"dvc.yaml", "weekly/dvc.yaml", "params.yaml", ".gitignore", "pipeline/__main__.py"} <= set(git("ls-files").split())
    assert git("status", "--porcelain") == ""
    assert not list((ws / "pipeline").rglob("__pycache__"))
    # A git repository with DVC in it (test_obd.py runs the retrain's stages in one).
    assert subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=ws, capture_output=True,
                          text=True).stdout.strip() == str(ws)
    analytics = subprocess.run([sys.executable, "-m", "dvc", "config", "core.analytics"], cwd=ws,
                               capture_output=True, text=True)
    assert analytics.returncode == 0 and analytics.stdout.strip() == "false", analytics.stderr
    assert not list(tmp_path.glob(".shop.init-*"))


def test_a_non_empty_folder_is_refused_unless_forced_and_forcing_keeps_data_and_params(tmp_path):
    ws = tmp_path / "shop"
    assert init(str(ws)).returncode == 0
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["simulate"]["impressions_per_day"] = 123
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    (ws / "data/raw/catalog/dt=2026-11-01").mkdir()
    (ws / "pipeline/removed_module.py").write_text("")
    before = sorted(p.relative_to(ws) for p in ws.rglob("*") if ".git" not in p.parts)

    refused = init(str(ws))
    assert refused.returncode == 2
    assert "not empty" in refused.stderr and "--force" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert sorted(p.relative_to(ws) for p in ws.rglob("*") if ".git" not in p.parts) == before

    forced = init(str(ws), "--force")
    assert forced.returncode == 0, forced.stderr
    assert yaml.safe_load((ws / "params.yaml").read_text())["simulate"]["impressions_per_day"] == 123
    assert (ws / "data/raw/catalog/dt=2026-11-01").is_dir()
    assert not (ws / "pipeline/removed_module.py").exists()  # the code is replaced whole
    # --params replaces them.
    assert init(str(ws), "--force", "--params", str(ROOT / "params.yaml")).returncode == 0
    assert (ws / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_bad_inputs_exit_2_with_one_line_and_leave_nothing(tmp_path):
    bad_params = tmp_path / "params.yaml"
    bad_params.write_text("- just\n- a list\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        ([str(tmp_path / "ws1"), "--params", str(bad_params)], "a params file is a YAML mapping"),
        ([str(tmp_path / "ws2"), "--params", str(tmp_path / "absent.yaml")], "absent.yaml: cannot be read"),
        ([str(tmp_path / "ws3"), "--source", str(tmp_path)], "is not the sieve project"),
        ([str(a_file)], "is a file, not a folder"),
    ]
    for args, expected in cases:
        result = init(*args)
        assert result.returncode == 2, args
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "params.yaml"]
