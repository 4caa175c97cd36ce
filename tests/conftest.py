"""Shared fixtures: tiny params, and real DVC workspaces (git + dvc init) in temp folders."""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

# Before anything imports Airflow: its home (and SQLite database) lives in a temp folder.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="sieve-airflow-")
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
ROOT = Path(__file__).resolve().parents[1]
os.environ.update({
    "AIRFLOW_HOME": _AIRFLOW_HOME,
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
})

DAY = "2026-11-01"
NEXT_DAY = "2026-11-02"
TINY_IMPRESSIONS = 3000


def tiny_params() -> dict:
    """The project's params with the test-size knobs: tiny BERT, a few steps, a few thousand rows."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["simulate"]["impressions_per_day"] = TINY_IMPRESSIONS
    # One torch thread: tiny models gain nothing from two, and on a busy 2-CPU machine two threads per
    # process made them many times slower.
    params["compute"]["threads"] = 1
    params["pretrain"].update(base_model="tiny-bert", max_steps=4, batch_size=8, embed_batch_size=128)
    params["ranker"]["hidden"] = 32
    params["importance"].update(folds=2, epochs=1)
    params["importance"]["estimators"]["noise_mixture"].update(folds=2, epochs=1)
    params["train"]["epochs"] = 2
    # Tiny days give noisy rates: drift only fails on gross changes (tests of drift set their own).
    checks = params["validate"]["drift"]["checks"]
    checks["ctr_position"].update(warn=0.5, fail=2.0)
    checks["new_item_share"].update(warn=0.5, fail=0.9)
    # Tiny days give noisy metrics: the test gate only refuses clear regressions.
    params["gate"]["checks"] = {
        "auc_click": {"direction": "higher", "min_value": 0.5, "max_regression": 0.05},
        "logloss_click": {"direction": "lower", "max_value": 1.0, "max_regression": 0.05},
    }
    # The tiny BERT's random vectors carry no relevance, so a tiny ranker cannot beat the trivial
    # baselines: these plumbing runs leave the ranking checks out (test_gate_ranking.py and
    # test_gate_degraded.py test them).
    for key in ("primary", "baseline_margin", "baselines", "baseline_slices", "min_score_spread"):
        params["gate"].pop(key)
    return params


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def make_workspace(path: Path, params: dict | None = None) -> Path:
    """A fresh DVC repository holding the project's dvc.yaml, params and pipeline code, made as
    `python -m pipeline init` makes one."""
    from pipeline.ops.workspace import init_workspace

    return init_workspace(path, params or tiny_params(), source=ROOT, force=True)


def simulate(workspace: Path, day: str, days: int = 1) -> None:
    run([sys.executable, "-m", "pipeline", "simulate", "--start", day, "--days", str(days),
         "--params", "params.yaml", "--out", "data/raw"], workspace)


def repro(workspace: Path, day: str, *stages: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pipeline", "repro", "--workspace", str(workspace), "--day", day,
                *stages], workspace, check=check)


@pytest.fixture(scope="session")
def completed_run(tmp_path_factory) -> Path:
    """One workspace where the whole retrain ran once, through DVC, on a tiny simulated day. Read it,
    never change it: a test that runs a further day copies it first."""
    workspace = make_workspace(tmp_path_factory.mktemp("completed") / "ws")
    simulate(workspace, DAY, days=2)
    repro(workspace, DAY)
    return workspace


@pytest.fixture
def workspace(tmp_path) -> Path:
    return make_workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Airflow's SQLite metadata database, migrated once per test session."""
    run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], ROOT)
    return _AIRFLOW_HOME


def pytest_terminal_summary(terminalreporter):
    """Print what a test recorded as its `deployment_log` property (the deployment test's account of
    where each task ran): it reaches the end of the run's output, from any xdist worker."""
    for report in terminalreporter.getreports("passed") + terminalreporter.getreports("failed"):
        for name, value in getattr(report, "user_properties", []):
            if name == "deployment_log":
                terminalreporter.write_sep("-", f"deployment: {report.nodeid}")
                terminalreporter.write_line(value)
