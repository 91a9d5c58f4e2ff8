"""tools/quickstart.py (the README's main command) and tools/analysis/compare.py, on tiny
settings: 8 generated training images, one epoch, in this process."""
import json
import re

import pytest
from mmengine.config import Config

from cvattn_mm.datasets import generate_dataset

from .processes import load_tool

TINY = ['--cfg-options', 'train_cfg.max_epochs=1', 'train_dataloader.batch_size=4',
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'test_dataloader.batch_size=4', 'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False']


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def table_rows(output: str) -> dict:
    """The rows of the Markdown table in ``output``, by model name."""
    rows = [line.strip('|').split('|') for line in output.splitlines()
            if line.startswith('| ') and not line.startswith('| model')]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_quickstart_trains_both_models_prints_the_table_and_draws_maps(tmp_path, capsys):
    quickstart = load_tool('quickstart')
    assert quickstart.main(['--task', 'classification', '--data-root', str(tmp_path / 'data'),
                            '--work-dir', str(tmp_path / 'work'), '--num-train', '8',
                            '--num-val', '4', '--num-maps', '2', *TINY]) == 0
    output = capsys.readouterr().out
    assert '== classification: data' in output and '(8 train, 4 val images of 64x64' in output
    rows = table_rows(output)
    assert list(rows) == ['ResNet-18', 'ResNet-18 + CBAM']
    top1, delta, params, attention, train_s, latency = rows['ResNet-18 + CBAM']
    assert 0 <= float(top1) <= 100 and float(latency) > 0
    assert rows['ResNet-18'][3] == '0' and int(attention.replace(',', '')) > 0
    pictures = re.findall(r'\S+\.png', output)
    assert len(pictures) == 2
    for picture in pictures:
        with open(picture, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert (tmp_path / 'work' / 'classification' / 'results.md').read_text().count('| ResNet') == 2
    # the data set is kept: a second run finds it
    data = generate_dataset('classification', str(tmp_path / 'data' / 'classification'),
                            num_train=8, num_val=4, image_size=64, seed=0)
    assert not data['written']


def test_compare_trains_a_baseline_and_each_module_with_one_seed(tmp_path, capsys):
    compare = load_tool('analysis/compare')
    generate_dataset('classification', str(tmp_path / 'data'), num_train=8, num_val=4,
                     image_size=32, seed=0)
    tiny = [option for option in TINY if option != 'train_cfg.max_epochs=1']
    assert compare.main(['--modules', 'SE', 'ECA', '--data-root', str(tmp_path / 'data'),
                         '--work-dir', str(tmp_path / 'work'), '--seed', '3',
                         '--train-length', '2', *tiny]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert list(rows) == ['cls_resnet18', 'cls_resnet18 + SE', 'cls_resnet18 + ECA']
    results = json.loads((tmp_path / 'work' / 'compare.json').read_text())
    assert [r['attention_params'] for r in results][0] == 0
    assert all(r['attention_params'] > 0 for r in results[1:])
    assert results[1]['params'] - results[1]['attention_params'] == results[0]['params']
    with open(tmp_path / 'work' / 'compare.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    saved = Config.fromfile(tmp_path / 'work' / 'SE' / 'cls_resnet18.py')
    assert saved.randomness.seed == 3
    # --train-length moved the loop and the cosine together
    assert saved.train_cfg.max_epochs == 2 and saved.param_scheduler[1]['end'] == 2


def test_compare_rejects_unknown_modules():
    with pytest.raises(SystemExit):
        load_tool('analysis/compare').parse_args(['--modules', 'SEE'])


def test_runs_time_the_training_loop_and_release_loader_workers():
    import time
    from types import SimpleNamespace

    import torch

    from cvattn_mm.analysis.runs import TrainTimer, release_workers
    loader = torch.utils.data.DataLoader(list(range(4)), batch_size=2, num_workers=1,
                                         persistent_workers=True)
    list(loader)
    workers = list(loader._iterator._workers)
    assert workers and all(w.is_alive() for w in workers)
    runner = SimpleNamespace(_train_loop=SimpleNamespace(dataloader=loader), _val_loop=None,
                             _test_loop=dict(type='TestLoop'))
    release_workers(runner)
    assert loader._iterator is None and not any(w.is_alive() for w in workers)
    timer = TrainTimer()
    timer.before_train(runner)
    time.sleep(0.01)
    timer.after_train(runner)
    assert timer.seconds >= 0.01
