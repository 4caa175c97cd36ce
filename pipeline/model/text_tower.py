"""The encoder's top layers, tuned inside the ranker (ranker.encoder.tune_top_layers).

The bottom layers stay frozen, so their output is worked out once per unique text and cached
(`TextStates`); each training step runs only the tuned top layers, and only on the batch's distinct
texts. At the start the tower is a copy of the refreshed encoder's top layers, so its vectors equal
the frozen embeddings (mean-pooled, L2-normalised) until training moves them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# The BertConfig fields a tuned layer needs; saved in the ranker's JSON config to rebuild it.
LAYER_CONFIG_KEYS = ("hidden_size", "num_attention_heads", "intermediate_size", "hidden_act",
                     "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps")


@dataclass
class TextStates:
    """The frozen bottom layers' output for each unique text, padded to one length; the last row (all
    masked) stands for no text, as the zero row of the frozen embedding table does."""
    hidden: torch.Tensor  # (texts + 1, length, hidden)
    mask: torch.Tensor    # (texts + 1, length), 1 for a real token

    def to(self, device: str, non_blocking: bool = False) -> "TextStates":
        return TextStates(self.hidden.to(device, non_blocking=non_blocking),
                          self.mask.to(device, non_blocking=non_blocking))


def layer_config(encoder) -> dict:
    return {key: getattr(encoder.config, key) for key in LAYER_CONFIG_KEYS}


def check_layers(encoder, tuned: int) -> int:
    """The number of frozen bottom layers, after checking the encoder has more than `tuned` layers."""
    total = len(encoder.encoder.layer)
    if not 0 < tuned < total:
        raise ValueError(f"ranker.encoder.tune_top_layers must be between 1 and {total - 1} for this "
                         f"{total}-layer encoder, got {tuned}")
    return total - tuned


@torch.no_grad()
def bottom_states(encoder, tokenizer, texts: list[str], tuned: int, max_length: int, batch_size: int,
                  device: str) -> TextStates:
    """The output of the encoder's frozen bottom layers for each text, each text encoded once."""
    frozen = check_layers(encoder, tuned)
    encoder.to(device).eval()
    hidden = torch.zeros((len(texts) + 1, max_length, encoder.config.hidden_size))
    mask = torch.zeros((len(texts) + 1, max_length), dtype=torch.long)
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding="max_length", truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        out = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        rows = slice(start, start + len(batch["input_ids"]))
        hidden[rows] = out.hidden_states[frozen].float().cpu()  # hidden_states[0] is the embedding layer
        mask[rows] = batch["attention_mask"].cpu()
    return TextStates(hidden, mask)


class TextTower(nn.Module):
    """`layers` BERT layers and mean pooling: cached bottom states -> L2-normalised text vectors."""

    def __init__(self, config: dict, layers: int):
        # transformers loads here, not with the module: every stage that loads a ranker imports this
        # module, and only rankers that tune encoder layers need it.
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertLayer

        super().__init__()
        self.config = dict(config)
        bert = BertConfig(**config)
        bert._attn_implementation = "eager"  # the additive mask below; the same maths on CPU and GPU
        self.layers = nn.ModuleList(BertLayer(bert) for _ in range(layers))

    @classmethod
    def from_encoder(cls, encoder, layers: int) -> "TextTower":
        check_layers(encoder, layers)
        tower = cls(layer_config(encoder), layers)
        for mine, theirs in zip(tower.layers, encoder.encoder.layer[-layers:]):
            mine.load_state_dict(theirs.state_dict())
        return tower

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(hidden.dtype)
        additive = (1.0 - weights)[:, None, None, :] * torch.finfo(hidden.dtype).min
        for layer in self.layers:
            out = layer(hidden, attention_mask=additive)
            hidden = out[0] if isinstance(out, tuple) else out
        pooled = (hidden * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp(min=1.0)
        # A row with no tokens (no query) pools to zeros, as the frozen table's last row is.
        return nn.functional.normalize(pooled, dim=-1) * (weights.sum(1, keepdim=True) > 0)

    def vectors(self, states: TextStates, query: torch.Tensor, title: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(query vectors, title vectors) of a batch, from its rows' text indices; each distinct text
        of the batch goes through the layers once."""
        both = torch.cat([query, title]).long()
        distinct, inverse = torch.unique(both, return_inverse=True)
        encoded = self(states.hidden[distinct], states.mask[distinct])[inverse]
        return encoded[:len(query)], encoded[len(query):]


def tuned_layers(params: dict) -> int:
    """ranker.encoder.tune_top_layers (0 when the section is absent)."""
    value = (params["ranker"].get("encoder") or {}).get("tune_top_layers", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"ranker.encoder.tune_top_layers must be a whole number >= 0, got {value!r}")
    return value


def states_for(encoder_dir, texts: list[str], layers: int, params: dict, device: str):
    """(encoder, TextStates of `texts`) with the encoder in `encoder_dir` (a pretrain output)."""
    from pipeline.model import encoder as enc

    tokenizer, encoder = enc.load_encoder(encoder_dir)
    return encoder, cached_states(encoder, tokenizer, texts, layers, params, device)


def cached_states(encoder, tokenizer, texts: list[str], layers: int, params: dict, device: str) -> TextStates:
    """bottom_states with ranker.encoder's max_length and batch_size."""
    cfg = params["ranker"]["encoder"]
    return bottom_states(encoder, tokenizer, texts, layers, int(cfg["max_length"]), int(cfg["batch_size"]), device)