"""Identical bytes for the same seed on the same software: every builder that trains or samples (tiny models, the
LoRA, draft distillation) and the PyTorch reference start here."""

from __future__ import annotations

TORCH_THREADS = 2  # intra-op reductions sum in a thread-count-dependent order: fix the count, not the host's


def deterministic_torch(seed: int = 0) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(TORCH_THREADS)
