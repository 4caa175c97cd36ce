"""score: every impression of one day scored by the champion (or a named registry model).

For offline evaluation and to export scores for serving: one row per impression of the day with
`event_id, score, p_click, p_purchase` (`score` is the position-free ranking score; `p_click` is at
the logged position; `p_purchase` = p_click x p(purchase | click)). The model embeds the day's texts
with its own encoder (pipeline.model.scoring), and its history features (pipeline/model/history.py) read the
impressions of the day and of the ranker.history.days days before it, each row only those strictly
before its own time.

A bad input (a broken params file, a registry with no champion, an unknown model id, a model folder
without its encoder or ranker, a day with no logs) stops it with one line naming what is wrong and
exit 2, and no output file is written; the output is written in one rename, so it is never half there.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pandas as pd

from pipeline.atomic import write_bytes_atomic
from pipeline.data.contract import ContractError
from pipeline.days import parse_day
from pipeline.release import champions

EXIT_BAD_INPUT = 2
COLUMNS = ["event_id", "score", "p_click", "p_purchase"]
# The params scoring reads; a missing one is reported before any model loads.
NEEDED_PARAMS = (("seed",), ("registry", "dir"), ("pretrain", "max_length"), ("pretrain", "embed_batch_size"),
                 ("ranker", "max_position"))


class ScoreError(Exception):
    """An input the score command cannot use: the message names what is wrong and where."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=".", help="the workspace: params.yaml, data/raw and the registry")
    parser.add_argument("--day", required=True, help="the day to score (YYYY-MM-DD), from data/raw")
    parser.add_argument("--model", metavar="MODEL_ID",
                        help="a model in the registry's models/ (default: the champion)")
    parser.add_argument("--out", required=True, help="the Parquet file to write (event_id, score, p_click, p_purchase)")


def workspace_params(workspace: Path) -> dict:
    """WS/params.yaml, with a clear error for a missing, unreadable or incomplete file."""
    import yaml

    from pipeline.params import load_params

    path = workspace / "params.yaml"
    if not path.is_file():
        raise ScoreError(f"{workspace} has no params.yaml")
    try:
        params = load_params(path)
    except yaml.YAMLError as exc:
        raise ScoreError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ScoreError(f"{path}: {exc}") from None
    for keys in NEEDED_PARAMS:
        section = params
        for i, key in enumerate(keys):
            if not isinstance(section, dict) or key not in section:
                raise ScoreError(f"{path}: {'.'.join(keys[:i + 1])} is missing")
            section = section[key]
    return params


def resolve_model(registry_dir: Path, model_id: str | None) -> tuple[str, Path]:
    """(model id, folder) of the named registry model, or of the champion."""
    from pipeline.model import ranker

    if model_id is None:
        champion = champions.current(registry_dir)
        if champion is None:
            raise ScoreError(f"no champion yet: {registry_dir / champions.POINTER} does not exist "
                             "(promote a model first, or name one with --model)")
        model_id, folder = champion["model_id"], champions.model_dir(registry_dir, champion)
    else:
        folder = registry_dir / champions.MODELS / model_id
        if "/" in model_id or model_id in ("", ".", "..") or not folder.is_dir():
            stored = sorted(p.name for p in (registry_dir / champions.MODELS).glob("*") if p.is_dir())
            raise ScoreError(f"unknown model {model_id!r}: not in {registry_dir / champions.MODELS} "
                             f"(it holds: {', '.join(stored) or 'none'})")
    if not folder.is_dir():
        raise ScoreError(f"model {model_id!r}: its folder {folder} is missing")
    # What the folder must hold (as pretrain and train write it), checked before anything loads.
    for part, files in {"encoder": ("config.json",), "ranker": (ranker.CONFIG_FILE, ranker.WEIGHTS_FILE)}.items():
        absent = [name for name in files if not (folder / part / name).is_file()]
        if absent:
            raise ScoreError(f"model {model_id!r}: {folder / part} lacks {', '.join(absent)} "
                             f"(its {part} is missing or incomplete)")
    return model_id, folder


def read_day(data_dir: Path, day: str, params: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(the day's impressions with their f_* columns, its catalog, the rows its history features read:
    the day's own and those of the ranker.history.days days before it)."""
    from pipeline.model.dataset import logged_history, read_log

    # Always with the f_* columns: the model reads the ones it was trained on, whatever params say now.
    impressions, catalog = read_log(data_dir, [day], extra_features=True)
    return impressions, catalog, logged_history(data_dir, [day], impressions, params)


def run(workspace: str | Path, day: str, out: str | Path, model_id: str | None = None) -> dict:
    from pipeline.compute import setup
    from pipeline.model.scoring import model_predictions
    from pipeline.params import stage_seed

    workspace, out = Path(workspace), Path(out)
    if not workspace.is_dir():
        raise ScoreError(f"workspace {workspace} is not a folder")
    if out.is_dir():
        raise ScoreError(f"--out {out} is a folder: name the Parquet file to write")
    params = workspace_params(workspace)
    registry_dir = workspace / params["registry"]["dir"]
    data_dir = workspace / "data" / "raw"
    if not (data_dir / "impressions" / f"dt={day}").is_dir():
        raise ScoreError(f"no logs for {day}: {data_dir / 'impressions' / f'dt={day}'} does not exist")
    model_id, folder = resolve_model(registry_dir, model_id)
    impressions, catalog, history = read_day(data_dir, day, params)
    device = setup(params, stage_seed(params, "score"))
    predictions = model_predictions(folder, impressions, catalog, params, device, history=history)
    scored = pd.DataFrame({"event_id": impressions["event_id"].astype(str).to_numpy(),
                           **{name: predictions[name] for name in COLUMNS[1:]}})
    write_parquet_atomic(scored, out, {"model_id": model_id, "day": day})
    return {"day": day, "model_id": model_id, "rows": len(scored), "out": str(out)}


def write_parquet_atomic(frame: pd.DataFrame, path: Path, metadata: dict[str, str]) -> None:
    """The table with `metadata` in its schema, written in full beside `path` and renamed onto it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           **{f"sieve.{k}".encode(): str(v).encode() for k, v in metadata.items()}})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def main(args: argparse.Namespace) -> int:
    try:
        day = parse_day(args.day)
        result = run(args.workspace, day, args.out, args.model)
    except (ScoreError, ContractError, ValueError) as exc:
        # Nothing is written: one line naming the problem.
        print(f"score: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"score: {result['day']}: {result['rows']} impressions scored by {result['model_id']} -> {result['out']}")
    return 0
