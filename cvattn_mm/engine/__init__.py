"""Training-loop pieces registered in mmengine's root registries."""
from .cpu_bf16_optim_wrapper import CPUBF16OptimWrapper
from .odconv_temperature_hook import ODConvTemperatureHook, odconv_temperature
from .progress_bar_hook import ProgressBarHook
from .sparsity_penalty_hook import SparsityPenaltyHook, add_sparsity_penalty, sparsity_parameters

__all__ = ['CPUBF16OptimWrapper', 'ODConvTemperatureHook', 'ProgressBarHook',
           'SparsityPenaltyHook', 'add_sparsity_penalty', 'odconv_temperature',
           'sparsity_parameters']
