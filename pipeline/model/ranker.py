"""The ranker: an MLP over query and title embeddings, dense features and hashed item, category and
brand embeddings, with ESMM-style click and purchase heads.

The click logit gets an additive per-position bias during training only, so the score used for
ranking does not depend on where the logging system happened to show the item.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from pipeline.model.features import DENSE_FEATURES, ID_FEATURES, Features
from pipeline.model.text_tower import TextTower

WEIGHTS_FILE = "ranker.safetensors"
CONFIG_FILE = "ranker.json"


@dataclass(frozen=True)
class RankerConfig:
    text_dim: int
    hidden: int
    max_position: int
    dropout: float
    dense_dim: int = len(DENSE_FEATURES)
    id_buckets: int = 0   # hash buckets of each ID_FEATURES embedding (0: none, as models saved before them)
    id_dim: int = 0
    numeric_features: tuple = ()      # f_* columns read as numbers: standardized, plus a missing flag each
    categorical_features: tuple = ()  # f_* columns read as strings: an embedding of their hash each
    extra_buckets: int = 0
    extra_dim: int = 0
    tower_layers: int = 0         # the encoder's top layers tuned inside the ranker (0: frozen embeddings)
    tower_config: dict | None = None  # their BertConfig fields (text_tower.LAYER_CONFIG_KEYS)
    tower_learning_rate: float = 0.0
    # Which text vectors the body reads: the query's, the title's, their elementwise product. Models
    # saved before this field read all three.
    text_inputs: tuple = ("query", "title", "product")


class Ranker(nn.Module):
    def __init__(self, config: RankerConfig):
        super().__init__()
        self.config = config
        width = (len(config.text_inputs) * config.text_dim + config.dense_dim + (len(ID_FEATURES) * config.id_dim if config.id_buckets else 0)
                 + 2 * len(config.numeric_features) + len(config.categorical_features) * config.extra_dim)
        # One table per id feature: each looks up one index per row (what GraNd's norm rule needs).
        self.id_embeddings = nn.ModuleList(
            nn.Embedding(config.id_buckets, config.id_dim) for _ in (ID_FEATURES if config.id_buckets else ()))
        self.extra_embeddings = nn.ModuleList(
            nn.Embedding(config.extra_buckets, config.extra_dim) for _ in config.categorical_features)
        for table in (*self.id_embeddings, *self.extra_embeddings):
            nn.init.normal_(table.weight, std=0.01)  # small: a rarely seen bucket stays near neutral
        if config.numeric_features:  # the training rows' mean and spread, saved with the weights
            self.register_buffer("numeric_mean", torch.zeros(len(config.numeric_features)))
            self.register_buffer("numeric_std", torch.ones(len(config.numeric_features)))
        self.body = nn.Sequential(
            nn.Linear(width, config.hidden), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.hidden), nn.ReLU(),
        )
        self.click_head = nn.Linear(config.hidden, 1)
        self.conversion_head = nn.Linear(config.hidden, 1)
        self.text_tower = TextTower(config.tower_config, config.tower_layers) if config.tower_layers else None
        self.position_bias = nn.Embedding(config.max_position + 1, 1)
        # Platt scaling (a, b) of the click logit, fitted after weighted training: weights move the
        # model's base rate, the calibration slice (unweighted) puts probabilities back on the log's scale.
        self.register_buffer("click_calibration", torch.tensor([1.0, 0.0]))
        nn.init.zeros_(self.position_bias.weight)

    def optimizer_groups(self, learning_rate: float) -> list[dict]:
        """AdamW parameter groups: the tuned encoder layers at their own (small) rate, the rest at the loop's."""
        if self.text_tower is None:
            return [{"params": list(self.parameters())}]
        tower = {id(p) for p in self.text_tower.parameters()}
        return [{"params": [p for p in self.parameters() if id(p) not in tower]},
                {"params": list(self.text_tower.parameters()), "lr": self.config.tower_learning_rate}]

    def forward(self, x: Features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(position-free click logit, position bias logit, purchase-given-click logit)."""
        if self.text_tower is not None:
            if x.states is None:
                raise ValueError("this ranker tunes the encoder's top layers: its rows need the bottom layers' "
                                 "states (text_tower.bottom_states with the encoder it was trained on)")
            query, title = self.text_tower.vectors(x.states, *x.text_indices)
        else:
            query, title = x.query, x.title
        vectors = {"query": query, "title": title, "product": query * title}
        parts = [vectors[name] for name in self.config.text_inputs] + [x.dense[:, :self.config.dense_dim]]
        if self.id_embeddings:
            buckets = _fold(x.ids, self.config.id_buckets)
            parts += [table(buckets[:, k]) for k, table in enumerate(self.id_embeddings)]
        if self.config.numeric_features:
            values = x.numeric_columns(self.config.numeric_features)
            missing = torch.isnan(values)
            z = ((values - self.numeric_mean) / self.numeric_std).clamp(-10, 10)  # one outlier cannot swamp the rest
            parts += [torch.where(missing, 0.0, z).to(x.dense.dtype), missing.to(x.dense.dtype)]
        if self.extra_embeddings:
            buckets = _fold(x.categorical_columns(self.config.categorical_features), self.config.extra_buckets)
            parts += [table(buckets[:, k]) for k, table in enumerate(self.extra_embeddings)]
        h = self.body(torch.cat(parts, dim=1))
        return (self.click_head(h).squeeze(1), self.position_bias(x.position).squeeze(1),
                self.conversion_head(h).squeeze(1))


def _fold(hashes: torch.Tensor, buckets: int) -> torch.Tensor:
    """Hashes (features.hash_values) to embedding rows 1..buckets-1; 0 stays the unknown row."""
    raw = hashes.long()
    return torch.where(raw > 0, raw % (buckets - 1) + 1, 0)


def loss_terms(model: Ranker, x: Features) -> tuple[torch.Tensor, torch.Tensor]:
    """Per impression: BCE(click), and BCE(click and purchase) with P = pCTR * pCVR (ESMM)."""
    free_logit, bias_logit, cvr_logit = model(x)
    click_logit = free_logit + bias_logit
    click_loss = F.binary_cross_entropy_with_logits(click_logit, x.click, reduction="none")
    log_p = F.logsigmoid(click_logit) + F.logsigmoid(cvr_logit)
    log_not_p = torch.log1p(-torch.exp(log_p).clamp(max=1 - 1e-6))
    purchase_loss = -(x.purchase * log_p + (1 - x.purchase) * log_not_p)
    return click_loss, purchase_loss


def per_sample_loss(model: Ranker, x: Features) -> torch.Tensor:
    click_loss, purchase_loss = loss_terms(model, x)
    return click_loss + purchase_loss


def new_model(text_dim: int, cfg: dict, seed: int, data: Features | None = None,
              tower: TextTower | None = None, weights: np.ndarray | None = None) -> Ranker:
    """A fresh ranker. With `data`: the position biases start from the logged click rate by position
    (weighted by the retrain's `weights`, so that rows weighted 0 do not shape the start), the
    f_* features that ranker.extra_features names are taken from it, with their mean and spread. With
    `tower` (the encoder's top layers, text_tower.TextTower.from_encoder), those layers are tuned too."""
    torch.manual_seed(seed)
    ids = cfg.get("ids") or {}
    if ids and int(ids.get("buckets", 0)) == 1:
        raise ValueError("ranker.ids.buckets must be 0 (no id embeddings) or at least 2, got 1")
    numeric, categorical = extra_features(cfg, data)
    extra = cfg.get("extra") or {}
    if categorical and int(extra.get("buckets", 0)) < 2:
        raise ValueError(f"ranker.extra.buckets must be at least 2 for the categorical features {categorical}")
    model = Ranker(RankerConfig(text_dim=text_dim, hidden=cfg["hidden"],
                                max_position=cfg["max_position"], dropout=cfg["dropout"],
                                id_buckets=int(ids.get("buckets", 0)), id_dim=int(ids.get("dim", 0)),
                                numeric_features=numeric, categorical_features=categorical,
                                extra_buckets=int(extra.get("buckets", 0)) if categorical else 0,
                                extra_dim=int(extra.get("dim", 0)) if categorical else 0,
                                tower_layers=0 if tower is None else len(tower.layers),
                                text_inputs=tuple(cfg.get("text_inputs", ("query", "title", "product"))),
                                tower_config=None if tower is None else tower.config,
                                tower_learning_rate=0.0 if tower is None else
                                float((cfg.get("encoder") or {})["learning_rate"])))
    if tower is not None:
        model.text_tower.load_state_dict(tower.state_dict())
    if data is not None and len(data):
        w = torch.ones(len(data)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        model.position_bias.weight.data[:, 0] = position_log_odds(data, cfg["max_position"], w)
        # Start at the log's click rate, not 0.5: early epochs then learn items, not the intercept.
        rate = ((data.click.float() * w).sum() / w.sum().clamp(min=1e-8)).clamp(1e-4, 1 - 1e-4)
        model.click_head.bias.data.fill_(float(torch.logit(rate)))
        if numeric:
            values = data.numeric_columns(numeric).double()
            mean = values.nanmean(0)
            std = ((values - mean).pow(2).nanmean(0)).sqrt()
            model.numeric_mean.copy_(torch.nan_to_num(mean, nan=0.0).float())
            model.numeric_std.copy_(torch.where(std > 0, std, 1.0).nan_to_num(nan=1.0).float())
    return model


def extra_features(cfg: dict, data: Features | None) -> tuple[tuple, tuple]:
    """(numeric, categorical) f_* names the new ranker uses: ranker.extra.features is `auto` (every f_*
    column of the training rows), a list of names, or empty (none)."""
    wanted = (cfg.get("extra") or {}).get("features", "auto")
    if data is None or not wanted:
        return (), ()
    numeric, categorical = data.numeric_names, data.categorical_names
    if wanted == "auto":
        return tuple(numeric), tuple(categorical)
    if not isinstance(wanted, list):
        raise ValueError(f"ranker.extra.features must be auto, a list of f_* column names or empty, got {wanted!r}")
    absent = [name for name in wanted if name not in numeric and name not in categorical]
    if absent:
        raise ValueError(f"ranker.extra.features names columns the log does not have: {absent} "
                         f"(it has {sorted(numeric + categorical) or 'no f_* columns'})")
    return (tuple(n for n in wanted if n in numeric), tuple(n for n in wanted if n in categorical))


def position_log_odds(x: Features, max_position: int, weights: torch.Tensor, prior_rows: float = 20.0) -> torch.Tensor:
    """Log-odds of the click rate at each position minus the overall one, shrunk toward 0 for
    positions with few rows. A few epochs cannot learn the bias from zero; this start can."""
    counts = torch.bincount(x.position, weights=weights, minlength=max_position + 1).float()
    clicks = torch.bincount(x.position, weights=x.click.float() * weights, minlength=max_position + 1).float()
    overall = clicks.sum() / counts.sum().clamp(min=1)
    rate = (clicks + prior_rows * overall) / (counts + prior_rows)
    return torch.logit(rate.clamp(1e-4, 1 - 1e-4)) - torch.logit(overall.clamp(1e-4, 1 - 1e-4))


def fit(model: Ranker, x: Features, weights: np.ndarray | None, cfg: dict, seed: int, device: str,
        epochs: int, progress=None) -> list[float]:
    """Weighted minibatch training (pipeline/model/training.py's loop, without validation or checkpoints);
    returns the mean weighted loss of each epoch. train.max_steps is the train stage's and does not
    apply here: the estimators that call this choose their own epochs."""
    from pipeline.model import training

    return training.fit(model, x, weights, {**cfg, "max_steps": None}, seed, device, epochs,
                        loss_fn=per_sample_loss, progress=progress).history


@torch.no_grad()
def predict(model: Ranker, x: Features, device: str, with_position: bool,
            batch_size: int = 8192) -> dict[str, np.ndarray]:
    """pCTR (at the logged position when with_position), pCTR x pCVR, and the position-free ranking score."""
    model.to(device).eval()
    parts = {k: np.empty(len(x), dtype=np.float32) for k in ("p_click", "p_purchase", "score")}
    for start in range(0, len(x), batch_size):
        rows = slice(start, min(start + batch_size, len(x)))
        batch = x.subset(torch.arange(rows.start, rows.stop)).to(device)
        free_logit, bias_logit, cvr_logit = model(batch)
        a, b = model.click_calibration
        p_click = torch.sigmoid(a * (free_logit + bias_logit if with_position else free_logit) + b)
        p_cvr = torch.sigmoid(cvr_logit)
        parts["p_click"][rows] = p_click.cpu().numpy()
        parts["p_purchase"][rows] = (p_click * p_cvr).cpu().numpy()
        # Rank by expected value without position: a click counts, a purchase counts again.
        parts["score"][rows] = (torch.sigmoid(free_logit) * (1 + p_cvr)).cpu().numpy()
    return parts


@torch.no_grad()
def click_losses(model: Ranker, x: Features, device: str, batch_size: int = 8192) -> np.ndarray:
    """Per-impression click BCE at the logged position: how surprising the logged click (or its absence) is."""
    model.to(device).eval()
    # Filled in place: keeping each batch's small result alive between the batch's large temporaries
    # pins the heap, and RSS grew by about 0.7 KB per scored row (1 GB on a 10M-row log's folds).
    out = np.empty(len(x), dtype=np.float32)
    for s in range(0, len(x), batch_size):
        rows = slice(s, min(s + batch_size, len(x)))
        out[rows] = loss_terms(model, x.subset(torch.arange(rows.start, rows.stop)).to(device))[0].cpu().numpy()
    return out


def save(model: Ranker, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2, sort_keys=True) + "\n")


def load(directory: str | Path) -> Ranker:
    """Rebuild from the JSON config and safetensors weights; nothing is unpickled."""
    directory = Path(directory)
    fields = json.loads((directory / CONFIG_FILE).read_text())
    for key in ("numeric_features", "categorical_features", "text_inputs"):  # JSON lists back to the config's tuples
        if key in fields:
            fields[key] = tuple(fields[key])
    config = RankerConfig(**fields)
    model = Ranker(config)
    state = load_file(str(directory / WEIGHTS_FILE))
    # Models saved before calibration existed are uncalibrated: the identity.
    state.setdefault("click_calibration", torch.tensor([1.0, 0.0]))
    check_state(state, model.state_dict(), directory / WEIGHTS_FILE)
    model.load_state_dict(state)
    return model.eval()


def check_state(found: dict, expected: dict, source) -> None:
    """Every tensor the config implies, with its shape, and nothing else; else a message naming them."""
    problems = [f"{name}: missing" for name in expected if name not in found]
    problems += [f"{name}: not part of this ranker" for name in found if name not in expected]
    problems += [f"{name}: shape {tuple(found[name].shape)}, the config implies {tuple(tensor.shape)}"
                 for name, tensor in expected.items() if name in found and found[name].shape != tensor.shape]
    if problems:
        raise ValueError(f"{source} does not match {CONFIG_FILE} beside it: " + "; ".join(problems))


def calibrate(model: Ranker, x: Features, device: str, steps: int = 50) -> tuple[float, float]:
    """Fit Platt scaling of the click logit (at the logged position) on `x`, unweighted; store it.

    Newton's method in float64 run to convergence: the fit is then a smooth function of the logits, so
    two runs whose weights differ by float rounding get calibrations that differ by as little (an
    iterative fit stopped after a fixed number of steps on this flat optimum moved by 1e-3)."""
    model.to(device).eval()
    if len(x) == 0:  # a day too small to hold back calibration rows: nothing to fit, the identity
        model.click_calibration.copy_(torch.tensor([1.0, 0.0]))
        return 1.0, 0.0
    with torch.no_grad():
        logits = torch.cat([sum(model(x.subset(torch.arange(s, min(s + 8192, len(x)))).to(device))[:2])
                            for s in range(0, len(x), 8192)]).double().cpu().numpy()
    a, b = platt_scaling(logits, x.click.double().numpy(), steps)
    model.click_calibration.copy_(torch.tensor([a, b]))
    return a, b


def platt_scaling(logits: np.ndarray, labels: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """(a, b) minimising the log loss of sigmoid(a * logit + b); the identity when the slice cannot
    tell (one class, no spread) or the fit would flip the ranking."""
    a, b = 1.0, 0.0
    if len(labels) == 0 or labels.min() == labels.max():
        return a, b
    design = np.column_stack([logits, np.ones_like(logits)])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(a * logits + b)))
        gradient = design.T @ (p - labels)
        hessian = (design * (p * (1 - p))[:, None]).T @ design + 1e-9 * np.eye(2)
        try:
            delta = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            return 1.0, 0.0
        a, b = a - float(delta[0]), b - float(delta[1])
        if not (np.isfinite(a) and np.isfinite(b)):
            return 1.0, 0.0
        if np.abs(delta).max() < 1e-12:
            break
    if not a > 0:
        return 1.0, 0.0  # a degenerate slice must not flip or break the ranking
    return a, b
