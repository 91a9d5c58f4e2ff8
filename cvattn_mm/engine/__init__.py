"""Training-loop pieces registered in mmengine's root registries."""
from .cpu_bf16_optim_wrapper import CPUBF16OptimWrapper
from .progress_bar_hook import ProgressBarHook
from .sparsity_penalty_hook import SparsityPenaltyHook, add_sparsity_penalty, sparsity_parameters

__all__ = ['CPUBF16OptimWrapper', 'ProgressBarHook', 'SparsityPenaltyHook',
           'add_sparsity_penalty', 'sparsity_parameters']
