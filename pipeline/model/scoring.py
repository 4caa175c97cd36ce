"""Predictions of a saved model (a registry entry: its encoder and its ranker) on any rows of a log.

The model's own encoder embeds the rows' texts, so a model is always scored with the text vectors it
was trained on. Used by evaluate (the champion) and by the score command (any registry model).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def model_predictions(folder: str | Path, impressions: pd.DataFrame, catalog: pd.DataFrame, params: dict,
                      device: str, history: pd.DataFrame | None = None) -> dict:
    """{p_click, p_purchase, score} of the model saved in `folder` (encoder/ and ranker/) for each row of
    `impressions`. `history`: clicked rows (user_id, item_id, ts) the user-history features may read;
    each row reads only the clicks strictly before its own time."""
    from pipeline.model import encoder as enc
    from pipeline.model import features, ranker, text_tower
    from pipeline.model.dataset import build_features
    from pipeline.model.embeddings import EmbeddingTable

    folder = Path(folder)
    tokenizer, model = enc.load_encoder(folder / "encoder")
    texts = sorted(set(features.item_titles(impressions, catalog)) | set(impressions["query"].dropna()))
    cfg = params["pretrain"]
    table = EmbeddingTable(texts, enc.embed(model, tokenizer, texts, cfg["max_length"], cfg["embed_batch_size"], device))
    saved_ranker = ranker.load(folder / "ranker")
    # Positions clipped as the model was trained: its position table has max_position + 1 rows.
    model_params = {**params, "ranker": {**params["ranker"], "max_position": saved_ranker.config.max_position}}
    x = build_features(impressions, catalog, table, model_params, history)
    if saved_ranker.config.tower_layers:  # its tuned layers read its own encoder's bottom layers
        x.states = text_tower.cached_states(model, tokenizer, texts, saved_ranker.config.tower_layers, params,
                                            device)
    return ranker.predict(saved_ranker, x, device, with_position=True)
