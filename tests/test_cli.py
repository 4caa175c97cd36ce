"""The command line: every stage is a sub-command; bad invocations fail clearly."""
import subprocess
import sys

from pipeline.__main__ import COMMANDS
from pipeline.runplan import SHARD_STAGE, STAGES


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_stage():
    result = cli("--help")
    assert result.returncode == 0
    for stage in STAGES:
        if stage == SHARD_STAGE:  # a DVC stage of the importance command (--shard i/n)
            continue
        assert stage in COMMANDS and f"  {stage} " in result.stdout


def test_unknown_command_exits_2():
    result = cli("bogus")
    assert result.returncode == 2 and "unknown command 'bogus'" in result.stderr


def test_stage_help_shows_explicit_paths():
    result = cli("train", "--help")
    assert result.returncode == 0
    for flag in ("--data", "--day", "--embeddings", "--weights", "--out", "--params"):
        assert flag in result.stdout


def test_repro_refuses_unknown_stage_and_non_dvc_folder(workspace, tmp_path):
    unknown = cli("repro", "--workspace", str(workspace), "--day", "2026-11-01", "fly")
    assert unknown.returncode == 2 and "unknown stage(s) fly" in unknown.stderr
    not_dvc = cli("repro", "--workspace", str(tmp_path / "nowhere"), "--day", "2026-11-01")
    assert not_dvc.returncode == 2 and "not a DVC repository" in not_dvc.stderr


def test_repro_rejects_a_malformed_day(workspace):
    result = cli("repro", "--workspace", str(workspace), "--day", "2026-13-01", "gate")
    assert result.returncode == 2 and "day must be a YYYY-MM-DD date, got '2026-13-01'" in result.stderr
    assert "Traceback" not in result.stderr
