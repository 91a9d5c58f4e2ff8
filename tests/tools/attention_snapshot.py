"""A hook for end-to-end tests: saves the attention weights that training starts from.

Imported by a test's config (``custom_imports``) in a ``tools/train.py`` subprocess. Runner.train
loads or resumes the checkpoint before ``before_train``, so after ``--resume`` the file holds
the weights restored from the checkpoint.
"""
import os.path as osp

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class SaveAttentionAtTrainStart(Hook):
    """Write ``{key: tensor}`` of the model's ``attention_sites`` weights to
    ``<work_dir>/attention_before_iter_<iter>.pth`` when training starts."""

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        weights = {key: value.detach().clone() for key, value in model.state_dict().items()
                   if 'attention_sites' in key}
        torch.save(weights, osp.join(runner.work_dir, f'attention_before_iter_{runner.iter}.pth'))
