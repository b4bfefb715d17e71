"""One helper for math written once for numpy arrays and torch tensors alike."""

from __future__ import annotations

import numpy as np
import torch


def array_module(x):
    """``torch`` for a tensor, ``numpy`` otherwise: the module whose functions apply to ``x``."""
    return torch if isinstance(x, torch.Tensor) else np
