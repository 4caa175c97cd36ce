"""One day's training data as the modelling stages see it: rows, features and the time split."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import embeddings, features
from pipeline.contract import read_catalog, read_impressions


@dataclass
class DayData:
    impressions: pd.DataFrame
    catalog: pd.DataFrame
    x: features.Features
    holdout: np.ndarray  # bool per row: the held-out time slice

    @property
    def train_index(self) -> np.ndarray:
        return np.flatnonzero(~self.holdout)

    @property
    def holdout_index(self) -> np.ndarray:
        return np.flatnonzero(self.holdout)


def load_day(data_dir: str | Path, day: str, embeddings_dir: str | Path, params: dict) -> DayData:
    impressions = read_impressions(data_dir, day)
    catalog = read_catalog(data_dir, day)
    x = features.build(impressions, catalog, embeddings.load(embeddings_dir), params["ranker"]["max_position"])
    return DayData(impressions, catalog, x, features.holdout_mask(impressions, params["split"]["holdout_fraction"]))
