"""A day rerun with nothing changed comes from DVC's run cache: no stage recomputes, same outputs."""
import shutil

import pytest
import yaml

from conftest import DAY, repro, simulate
from pipeline.runplan import dvc_stage_names

pytestmark = pytest.mark.slow


def out_hashes(workspace):
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    return {stage: {o["path"]: o.get("md5") for o in body.get("outs", [])} for stage, body in lock["stages"].items()}


def test_rerun_is_served_from_the_run_cache(workspace):
    simulate(workspace, DAY)
    first = repro(workspace, DAY)
    assert first.stdout.count("Running stage") == len(dvc_stage_names(1, [DAY]))
    hashes = out_hashes(workspace)
    # Start over from an empty workspace state: only DVC's cache remembers the first run.
    shutil.rmtree(workspace / "work")
    (workspace / "dvc.lock").unlink()

    again = repro(workspace, DAY)

    assert "Running stage" not in again.stdout, again.stdout
    for stage in dvc_stage_names(1, [DAY]):
        assert f"Stage '{stage}' is cached - skipping run" in again.stdout, again.stdout
    assert out_hashes(workspace) == hashes
    # The registry was not touched again: one promotion only.
    assert len((workspace / "registry" / "history.jsonl").read_text().splitlines()) == 1
