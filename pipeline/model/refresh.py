"""pretrain stage: refresh the text encoder on the day's corpus, measure the refresh, embed the texts.

Each run records in metrics.json what the refresh did, before and after on the same inputs:
  - masked-LM loss on held-out texts (a seeded share of the corpus the refresh never trains on,
    masked with the same seed both times);
  - recall@k of search queries against the titles of the items clicked for them, ranked among
    the day's candidate titles by cosine similarity of the mean-pooled embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data import corpus as corpus_mod

# Independent random streams of the stage seed, so changing one knob does not move the others.
HELDOUT_STREAM, MASK_STREAM, PAIRS_STREAM, CANDIDATES_STREAM = 1, 2, 3, 4


def whole(section: dict, key: str, minimum: int, where: str) -> int:
    """A whole-number knob of params, checked: `where.key` >= minimum."""
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}.{key} must be a whole number of at least {minimum}, got {value!r}")
    return value


def check_knobs(cfg: dict) -> None:
    for key, minimum in (("max_texts", 1), ("max_heldout_texts", 0), ("heldout_batch_size", 1),
                         ("embed_batch_size", 1)):
        whole(cfg, key, minimum, "pretrain")
    if not isinstance(cfg.get("recall"), dict):
        raise ValueError("pretrain.recall must be a mapping (k, heldout_pairs_fraction, max_pairs, max_candidates)")
    for key in ("k", "max_pairs", "max_candidates"):
        whole(cfg["recall"], key, 1, "pretrain.recall")


def stream_seed(seed: int, stream: int) -> int:
    return int(np.random.default_rng([seed, stream]).integers(2**31))


@dataclass
class Split:
    train: list[str]     # what the refresh trains on (capped by pretrain.max_texts)
    heldout: list[str]   # never trained on; the held-out MLM loss is measured on these
    heldout_all: set[str]  # every held-out text, also the ones beyond max_heldout_texts


def split_texts(texts: list[str], cfg: dict, seed: int) -> Split:
    """Hold out a seeded `heldout_fraction` of the texts; sample the refresh's texts from the rest."""
    fraction = cfg.get("heldout_fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"pretrain.heldout_fraction must be a number in [0, 1), got {fraction!r}")
    if not texts:
        raise ValueError("the corpus has no text: no catalog title and no search query")
    order = np.random.default_rng(stream_seed(seed, HELDOUT_STREAM)).permutation(len(texts))
    n_held = 0 if fraction == 0 else min(max(1, round(fraction * len(texts))), len(texts) - 1)
    held = order[:n_held]
    rest = np.sort(order[n_held:])
    if len(rest) > cfg["max_texts"]:
        rest = np.sort(np.random.default_rng(seed).choice(rest, cfg["max_texts"], replace=False))
    evaluated = np.sort(held[:cfg["max_heldout_texts"]])
    return Split([texts[i] for i in rest], [texts[i] for i in evaluated], {texts[i] for i in held})


def recall_at_k(query_vectors: np.ndarray, candidate_vectors: np.ndarray, clicked: np.ndarray, k: int) -> float:
    """Share of queries whose clicked candidate is among the k most similar candidates.

    Vectors are L2-normalised (cosine similarity = dot product); `clicked[i]` is the row of query
    i's clicked title in `candidate_vectors`. A clicked title counts as in the top k when fewer
    than k other candidates score strictly higher (ties do not push it out).
    """
    if len(query_vectors) == 0:
        raise ValueError("recall_at_k: no query to score")
    if k < 1:
        raise ValueError(f"recall_at_k: k must be at least 1, got {k}")
    clicked = np.asarray(clicked, dtype=np.int64)
    if clicked.min() < 0 or clicked.max() >= len(candidate_vectors):
        raise ValueError("recall_at_k: a clicked index is outside the candidates")
    scores = query_vectors @ candidate_vectors.T
    own = scores[np.arange(len(clicked)), clicked]
    higher = (scores > own[:, None]).sum(axis=1)
    return float((higher < k).mean())


@dataclass
class RetrievalSet:
    queries: list[str]
    candidates: list[str]
    clicked: np.ndarray  # row of each query's clicked title in `candidates`
    heldout_pairs: set[tuple[str, str]]  # every held-out pair, also those beyond recall.max_pairs


def held_out_pairs(pairs: list, rcfg: dict, seed: int) -> tuple[list, set]:
    """(pairs recall is measured on, every held-out pair): a seeded `heldout_pairs_fraction` of the
    pairs, kept out of the contrastive loss whether it is on or off, so runs compare either way."""
    fraction = rcfg.get("heldout_pairs_fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"pretrain.recall.heldout_pairs_fraction must be a number in (0, 1], got {fraction!r}")
    order = np.random.default_rng(stream_seed(seed, PAIRS_STREAM)).permutation(len(pairs))
    held = order[:max(1, round(fraction * len(pairs)))]
    measured = np.sort(held[:rcfg["max_pairs"]])
    return [pairs[i] for i in measured], {pairs[i] for i in held}


def retrieval_set(corpus: corpus_mod.Corpus, cfg: dict, seed: int) -> RetrievalSet | None:
    """Held-out (query, clicked title) pairs, and candidate titles: every clicked title of those
    pairs plus a seeded sample of the day's other titles, up to recall.max_candidates."""
    rcfg = cfg["recall"]
    if rcfg["max_candidates"] < rcfg["max_pairs"]:
        raise ValueError(f"pretrain.recall.max_candidates ({rcfg['max_candidates']}) must be at least "
                         f"pretrain.recall.max_pairs ({rcfg['max_pairs']}): every measured pair's title is a candidate")
    if not corpus.pairs:
        return None
    pairs, held = held_out_pairs(corpus.pairs, rcfg, seed)
    clicked_titles = {t for _, t in pairs}
    others = [t for t in corpus.titles if t not in clicked_titles]
    room = min(rcfg["max_candidates"] - len(clicked_titles), len(others))
    extra = np.random.default_rng(stream_seed(seed, CANDIDATES_STREAM)).choice(len(others), room, replace=False)
    candidates = sorted(clicked_titles | {others[i] for i in extra})
    row = {t: i for i, t in enumerate(candidates)}
    return RetrievalSet([q for q, _ in pairs], candidates, np.array([row[t] for _, t in pairs], dtype=np.int64), held)


def measure(model, tokenizer, split: Split, retrieval: RetrievalSet | None, cfg: dict, seed: int,
            device: str) -> dict:
    """Held-out MLM loss (only when the refresh trains the MLM head: an untrained head's loss says
    nothing, and costs a pass over the held-out texts) and retrieval recall of the model as it is now."""
    from pipeline.model import encoder as enc

    def embed(texts: list[str]) -> np.ndarray:
        return enc.embed(model.base_model, tokenizer, texts, cfg["max_length"], cfg["embed_batch_size"], device)

    trains_mlm = float(cfg.get("mlm_weight", 1.0)) > 0
    loss = enc.heldout_mlm_loss(model, tokenizer, split.heldout, cfg, stream_seed(seed, MASK_STREAM), device,
                                cfg["heldout_batch_size"]) if split.heldout and trains_mlm else None
    recall = None
    if retrieval is not None:
        recall = recall_at_k(embed(retrieval.queries), embed(retrieval.candidates), retrieval.clicked,
                             cfg["recall"]["k"])
    return {"mlm_loss_heldout": None if loss is None else round(loss, 6),
            "recall": None if recall is None else round(recall, 6)}


def training_pairs(corpus: corpus_mod.Corpus, split: Split, retrieval: RetrievalSet | None) -> list[tuple[str, str]]:
    """Pairs for the contrastive loss: no held-out pair, and none with a held-out text."""
    held = retrieval.heldout_pairs if retrieval is not None else set()
    return [(q, t) for q, t in corpus.pairs
            if (q, t) not in held and q not in split.heldout_all and t not in split.heldout_all]


def mean_window(values: list[float]) -> tuple[float | None, float | None]:
    """Mean of the first and of the last fifth of a loss curve (noisy step by step)."""
    if not values:
        return None, None
    window = max(1, len(values) // 5)
    return round(sum(values[:window]) / window, 6), round(sum(values[-window:]) / window, 6)


def step_losses(losses: dict[str, list[float]], cfg: dict, contrastive: dict | None) -> dict[str, list]:
    """The refresh's curves, (step, value) from step 1: the loss it minimised (the weighted sum of its
    parts) and each part. A part the knobs turn off has no point; a day without a refresh, none at all."""
    mlm_weight = float(cfg.get("mlm_weight", 1.0))
    contrastive_weight = float(contrastive["weight"]) if contrastive is not None else 0.0
    steps = max(len(losses["mlm"]), len(losses["contrastive"]))
    mlm = losses["mlm"] or [0.0] * steps
    pairs = losses["contrastive"] or [0.0] * steps
    total = [mlm_weight * a + contrastive_weight * b for a, b in zip(mlm, pairs)]
    return {name: list(enumerate(values, start=1)) for name, values in
            (("loss", total), ("contrastive_loss", losses["contrastive"]), ("mlm_loss", losses["mlm"]))}


def refresh_decision(recall_before: float | None, recall_after: float | None, cfg: dict) -> tuple[bool, str]:
    """(whether the refreshed encoder is used, why): only a refresh that raises held-out recall@k by at
    least pretrain.min_recall_gain is; without held-out pairs nothing shows it helps, so none is."""
    k, gain = cfg["recall"]["k"], float(cfg.get("min_recall_gain", 0.0))
    if recall_before is None or recall_after is None:
        return False, "no held-out (query, clicked title) pairs to measure a refresh by: the base encoder is used"
    if recall_after >= recall_before + gain and recall_after > recall_before:
        return True, f"refresh used: held-out recall@{k} {recall_before} -> {recall_after}"
    return False, (f"refresh not used: held-out recall@{k} {recall_before} -> {recall_after} did not rise by "
                   f"pretrain.min_recall_gain={gain}; the base encoder is used")


def too_few_pairs(pairs: list | None) -> str | None:
    """Why a contrastive refresh cannot run (in-batch negatives need 2 pairs), or None when it can."""
    if pairs is None or len(pairs) >= 2:
        return None
    return (f"only {len(pairs)} (query, clicked title) pairs to train on after those held out "
            f"(pretrain.recall.heldout_pairs_fraction, pretrain.heldout_fraction), at least 2 needed: "
            f"no refresh, the base encoder is used")
