"""Normalisation helpers shared by the attention modules."""
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


def norm_any_batch(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply ``norm`` to ``x``, also when a batch norm would see one value per channel.

    In training, a batch norm over one value per channel (batch 1 of a pooled vector, or of a
    1x1 map) has no variance and PyTorch raises. Such a call runs the norm in eval mode: it
    normalises with the running statistics and leaves them unchanged. The norm is called as a
    module in both cases (its hooks fire).
    """
    if (norm.training and isinstance(norm, _BatchNorm) and norm.running_mean is not None
            and x.numel() == x.shape[1]):
        norm.training = False
        try:
            return norm(x)
        finally:
            norm.training = True
    return norm(x)
