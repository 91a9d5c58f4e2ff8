"""Resume and load_from of mmengine checkpoints on torch >= 2.6, with unsafe pickles refused."""
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch.utils.data import Dataset

import cvattn_mm  # noqa: F401  (allow-lists mmengine's checkpoint classes)
from cvattn_mm.registry import MODELS


class ToyClassifier(BaseModel):

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.attention = MODELS.build(dict(type='SE', in_channels=16, reduction=4))
        self.fc = nn.Linear(16, 2)

    def forward(self, inputs, labels=None, mode='tensor'):
        logits = self.fc(self.attention(self.conv(inputs)).mean((2, 3)))
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(logits, labels))
        return logits


class ToyData(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(inputs=torch.randn(3, 8, 8), labels=torch.tensor(i % 2))


def make_runner(work_dir, max_epochs, **kwargs):
    return Runner(
        model=ToyClassifier(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=ToyData(), batch_size=4,
                              collate_fn=dict(type='default_collate'),
                              sampler=dict(type='DefaultSampler', shuffle=True)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        experiment_name=f'exp{max_epochs}{len(kwargs)}', **kwargs)


def test_resume_and_load_from(tmp_path):
    make_runner(tmp_path / 'a', max_epochs=1).train()
    checkpoint = tmp_path / 'a' / 'epoch_1.pth'
    assert checkpoint.exists()
    resumed = make_runner(tmp_path / 'a', max_epochs=2, resume=True)
    resumed.train()
    assert resumed.iter == 4 and resumed.epoch == 2
    assert (tmp_path / 'a' / 'epoch_2.pth').exists()
    loaded = make_runner(tmp_path / 'b', max_epochs=1, load_from=str(checkpoint))
    loaded.train()
    assert loaded.iter == 2  # load_from restores the weights, not the schedule
    state = torch.load(checkpoint, map_location='cpu')  # weights_only=True by default
    assert 'attention.fc1.weight' in state['state_dict']
    # without cvattn_mm's allow-list the same load fails (what this fix is for)
    result = subprocess.run(
        [sys.executable, '-c', f'import torch; torch.load({str(checkpoint)!r})'],
        capture_output=True, text=True)
    assert result.returncode != 0 and 'HistoryBuffer' in result.stderr


class Payload:
    """An arbitrary object that would run a command when unpickled."""

    def __reduce__(self):
        return os.system, ('echo unsafe',)


def test_arbitrary_pickles_are_still_refused(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save(dict(state_dict=ToyClassifier().state_dict(), meta=Payload()), path)
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        load_checkpoint(ToyClassifier(), str(path), map_location='cpu')
    path2 = tmp_path / 'object.pth'
    torch.save(dict(state_dict={}, meta=dict(hook=ToyData())), path2)
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        torch.load(path2)
