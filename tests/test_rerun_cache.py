"""A day rerun with nothing changed comes from DVC's run cache: no stage recomputes but promote, which
changes the registry and so always runs (idempotent), same outputs."""
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

    # Every stage but promote comes from the cache; promote runs again, as it changes the registry.
    assert again.stdout.count("Running stage") == 1 and "Running stage 'promote'" in again.stdout, again.stdout
    for stage in dvc_stage_names(1, [DAY]):
        if stage != "promote":
            assert f"Stage '{stage}' is cached - skipping run" in again.stdout, again.stdout
    assert out_hashes(workspace) == hashes
    # It found its model already the champion: one promotion only.
    history = workspace / "registry" / "history.jsonl"
    assert len(history.read_text().splitlines()) == 1
    champion = (workspace / "registry" / "champion.json").read_text()

    # A registry that never saw the run (another workspace sharing this DVC cache, say) gets the
    # champion all the same: the restored outputs do not stand in for the promotion.
    shutil.rmtree(workspace / "work")
    (workspace / "dvc.lock").unlink()
    shutil.rmtree(workspace / "registry")
    third = repro(workspace, DAY)
    assert third.stdout.count("Running stage") == 1, third.stdout
    assert out_hashes(workspace) == hashes
    assert len(history.read_text().splitlines()) == 1
    assert yaml.safe_load((workspace / "registry" / "champion.json").read_text())["model_id"] == \
        yaml.safe_load(champion)["model_id"]
