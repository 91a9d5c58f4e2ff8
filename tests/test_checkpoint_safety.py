"""Resume and load_from of mmengine checkpoints on torch >= 2.6, with unsafe pickles refused."""
import os
import pickle
import pickletools
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from mmengine.runner.checkpoint import _load_checkpoint, save_checkpoint
from torch.utils.data import Dataset

import cvattn_mm  # noqa: F401  (allow-lists mmengine's checkpoint classes)
from cvattn_mm.checkpoint_safety import HISTORY_BUFFER_STATISTICS
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
    # the checkpoint holds getattr(HistoryBuffer, 'mean') & co., loaded without allowing getattr
    assert ('GLOBAL', '__builtin__ getattr') in pickle_globals(checkpoint)
    assert getattr not in torch.serialization.get_safe_globals()
    loss = state['message_hub']['log_scalars']['train/loss']
    assert loss.statistics('mean') == loss.mean() and len(loss.data[0]) == 2
    assert resumed.message_hub.get_scalar('train/loss').current() > 0
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


def pickle_opcodes(path):
    """``(opcode name, argument)`` of the pickle inside a torch.save zip file, in order."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith('/data.pkl'))
        data = archive.read(name)
    return [(op.name, arg) for op, arg, _ in pickletools.genops(data)]


def pickle_globals(path):
    return {(name, arg) for name, arg in pickle_opcodes(path) if name == 'GLOBAL'}


class BuiltinsModule:
    """Pickles as ``getattr(getattr, '__self__')``, which unpickles to the builtins module."""

    def __reduce__(self):
        return getattr, (getattr, '__self__')


class Builtin:
    """Pickles as ``getattr(getattr(getattr, '__self__'), name)``: e.g. ``eval``."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return getattr, (BuiltinsModule(), self.name)


class Call:
    """Pickles as ``function(*args)``."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def write_getattr_chain(path):
    torch.save({'eval': Builtin('eval'), '__import__': Builtin('__import__')}, path)
    opcodes = pickle_opcodes(path)
    # really the chain of the issue: getattr(getattr, '__self__'), then its 'eval'
    assert ('GLOBAL', '__builtin__ getattr') in opcodes
    assert ('BINUNICODE', '__self__') in opcodes and ('BINUNICODE', 'eval') in opcodes
    return path


def test_getattr_chain_is_refused(tmp_path):
    path = write_getattr_chain(tmp_path / 'chain.pth')
    with pytest.raises(pickle.UnpicklingError) as error:
        torch.load(path, weights_only=True)
    message = str(error.value)
    assert message.startswith('Weights only load failed.')
    assert "cvattn_mm refuses getattr(getattr, '__self__') in a weights-only load" in message
    with pytest.raises(pickle.UnpicklingError, match='cvattn_mm refuses getattr'):
        load_checkpoint(ToyClassifier(), str(path), map_location='cpu')
    for builtin in (getattr, bytes):  # the built-ins themselves are not allow-listed
        assert builtin not in torch.serialization.get_safe_globals()
    assert torch.load(path, weights_only=False)['eval'] is eval  # the payload is real


LOAD_CHAIN = """
import pickle, sys, torch
{setup}
try:
    loaded = torch.load(sys.argv[1], weights_only=True)
except pickle.UnpicklingError as error:
    print('refused:', error)
else:
    print('loaded:', sorted(loaded), loaded['eval'] is eval, loaded['__import__'] is __import__)
"""


def load_chain_in_fresh_process(path, setup):
    result = subprocess.run([sys.executable, '-c', LOAD_CHAIN.format(setup=setup), str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_getattr_chain_is_refused_in_a_fresh_process(tmp_path):
    path = write_getattr_chain(tmp_path / 'chain.pth')
    out = load_chain_in_fresh_process(path, 'import cvattn_mm')
    assert out.startswith('refused: Weights only load failed.')
    assert "cvattn_mm refuses getattr(getattr, '__self__') in a weights-only load" in out
    # without cvattn_mm torch refuses it too; allow-listing getattr (this library's former
    # fix) let it through and handed out eval and __import__
    out = load_chain_in_fresh_process(path, '')
    assert out.startswith('refused:') and 'GLOBAL getattr was not an allowed global' in out
    out = load_chain_in_fresh_process(path, 'torch.serialization.add_safe_globals([getattr])')
    assert out == "loaded: ['__import__', 'eval'] True True\n"


@pytest.mark.parametrize('payload, refused', [
    (Call(getattr, HistoryBuffer, '__init__'), "getattr(<class 'mmengine.logging.history_buff"),
    (Call(getattr, HistoryBuffer, 'register_statistics'), "'register_statistics')"),
    (Call(getattr, HistoryBuffer, '_statistics_methods'), "'_statistics_methods')"),
    (Call(getattr, torch.Tensor, 'mean'), "getattr(<class 'torch.Tensor'>, 'mean')"),
    (Call(getattr, Call(HistoryBuffer), 'mean'), "getattr(<mmengine.logging.history_buffer"),
    (Call(bytes, 1 << 40), 'cvattn_mm refuses bytes(1099511627776)'),
    (Call(bytes, 'abc', 'ascii'), "cvattn_mm refuses bytes('abc', 'ascii')"),
])
def test_restricted_getattr_and_bytes(tmp_path, payload, refused):
    path = tmp_path / 'payload.pth'
    torch.save(dict(payload=payload), path)
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed') as error:
        torch.load(path, weights_only=True)
    assert refused in str(error.value)


def test_exactly_the_statistics_methods_load(tmp_path):
    path = tmp_path / 'methods.pth'
    torch.save({name: Call(getattr, HistoryBuffer, name) for name in HISTORY_BUFFER_STATISTICS}
               | dict(empty=Call(bytes)), path)
    loaded = torch.load(path, weights_only=True)
    assert loaded.pop('empty') == b''
    assert loaded == {name: getattr(HistoryBuffer, name) for name in HISTORY_BUFFER_STATISTICS}
    assert set(HISTORY_BUFFER_STATISTICS) == set(HistoryBuffer()._statistics_methods)


def make_message_hub(name):
    hub = MessageHub(name)
    for loss in (0.5, 0.25):
        hub.update_scalar('train/loss', loss)
    hub.update_info('iter', 2)
    hub.update_info('best_score', np.float64(0.75))
    return hub


def test_message_hub_with_an_empty_history_buffer(tmp_path):
    hub = MessageHub('cvattn-empty-buffer', log_scalars=dict(empty=HistoryBuffer()),
                     resumed_keys=dict(empty=True))
    path = tmp_path / 'empty.pth'
    save_checkpoint(dict(message_hub=hub.state_dict()), str(path))
    assert ('GLOBAL', '__builtin__ bytes') in pickle_globals(path)  # bytes() of the empty array
    restored = MessageHub('cvattn-empty-buffer-restored')
    restored.load_state_dict(_load_checkpoint(str(path), map_location='cpu')['message_hub'])
    log, count = restored.get_scalar('empty').data
    assert log.shape == count.shape == (0,)
    restored.update_scalar('empty', 1.0)
    assert restored.get_scalar('empty').mean() == 1.0


@pytest.mark.parametrize('numpy_module', ['numpy._core.multiarray', 'numpy.core.multiarray'])
def test_checkpoints_as_mmengine_writes_them_keep_loading(tmp_path, numpy_module):
    checkpoint = dict(meta=dict(epoch=1, iter=2, seed=0, mmengine_version='0.10.7'),
                      state_dict=ToyClassifier().state_dict(),
                      message_hub=make_message_hub(f'cvattn-old-{numpy_module}').state_dict())
    path = tmp_path / 'old.pth'
    save_checkpoint(checkpoint, str(path))  # mmengine 0.10.7: torch.save, pickle protocol 2
    assert {('GLOBAL', '__builtin__ getattr'), ('GLOBAL', 'numpy._core.multiarray scalar')} \
        <= pickle_globals(path)
    if numpy_module != 'numpy._core.multiarray':
        # a checkpoint written with numpy 1.x names numpy.core; the legacy (non-zip) format
        # keeps the pickle as a plain stream, so the module name can be swapped in place
        with open(path, 'wb') as f:
            torch.save(checkpoint, f, _use_new_zipfile_serialization=False)
        data = path.read_bytes()
        assert b'cnumpy._core.multiarray\n' in data
        path.write_bytes(data.replace(b'cnumpy._core.multiarray\n',
                                      f'c{numpy_module}\n'.encode()))
    model = ToyClassifier()
    loaded = load_checkpoint(model, str(path), map_location='cpu')
    assert loaded['meta']['iter'] == 2
    hub = MessageHub(f'cvattn-old-{numpy_module}-loaded')
    hub.load_state_dict(loaded['message_hub'])
    assert hub.get_scalar('train/loss').mean() == 0.375
    assert hub.get_info('best_score') == 0.75 and type(hub.get_info('best_score')) is np.float64
    for key, value in checkpoint['state_dict'].items():
        assert torch.equal(model.state_dict()[key], value)
