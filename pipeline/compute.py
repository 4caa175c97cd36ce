"""Where tensors run and how to keep CPU results reproducible."""
from __future__ import annotations

import torch


def setup(params: dict, seed: int) -> str:
    """Fix threads and seeds from params; return the device ('cuda' when present and allowed)."""
    cfg = params.get("compute", {})
    torch.set_num_threads(int(cfg.get("threads", 1)))
    torch.manual_seed(seed)
    wanted = cfg.get("device", "auto")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("compute.device is 'cuda' but no CUDA device is available")
    return wanted
