"""Normalisation helpers shared by the attention modules."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm


def norm_any_batch(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply ``norm`` to ``x``, also when a batch norm would see one value per channel.

    In training, a batch norm over one value per channel (batch 1 of a pooled vector, or of a
    1x1 map) has no variance and PyTorch raises. Such a call normalises with the running
    statistics instead (as in eval mode) and leaves them unchanged. Any other call is
    ``norm(x)``.
    """
    if (norm.training and isinstance(norm, _BatchNorm) and norm.running_mean is not None
            and x.numel() == x.shape[1]):
        return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            False, 0.0, norm.eps)
    return norm(x)
