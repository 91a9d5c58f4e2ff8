"""tools/quickstart.py (the README's main command) and tools/analysis/compare.py, on tiny
settings: 8 generated training images, one epoch, two seeds, in this process."""
import json
import re

import pytest
from mmengine.config import Config

from cvattn_mm.datasets import QUICKSTART_DATA, generate_dataset

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


def test_quickstart_trains_every_model_per_seed_reports_the_statistics_and_draws_maps(
        tmp_path, capsys):
    quickstart = load_tool('quickstart')
    assert quickstart.main(['--task', 'classification', '--data-root', str(tmp_path / 'data'),
                            '--work-dir', str(tmp_path / 'work'), '--num-train', '8',
                            '--num-val', '4', '--num-maps', '2', '--seeds', '0', '5',
                            *TINY]) == 0
    output = capsys.readouterr().out
    size = QUICKSTART_DATA['classification']['image_size']
    assert '== classification: data' in output
    assert f'(8 train, 4 val images of {size}x{size}' in output
    names = [name for name, _ in quickstart.TASKS['classification'].models]
    assert len(names) >= 3  # the baseline and at least two attention modules
    rows = table_rows(output)
    assert list(rows) == names
    for name in names:
        for seed in (0, 5):
            assert f'{name}, seed {seed}: top-1 (%) ' in output
    task_dir = tmp_path / 'work' / 'classification'
    results = json.loads((task_dir / 'results.json').read_text())
    assert results['seeds'] == [0, 5] and [m['name'] for m in results['models']] == names
    baseline, attention = results['models'][0], results['models'][1]
    assert baseline['attention_params'] == 0 and attention['attention_params'] > 0
    for model in results['models']:
        assert [r['seed'] for r in model['runs']] == [0, 5]
        assert model['metrics'] == [r['metric'] for r in model['runs']]
        assert all(0 <= m <= 100 for m in model['metrics'])
    assert attention['diffs'] == [a - b for a, b in zip(attention['metrics'],
                                                         baseline['metrics'])]
    mean_std, per_seed, diff, diffs, verdict = rows[names[1]][:5]
    assert per_seed == ' / '.join(f'{m:.2f}' for m in attention['metrics'])
    assert verdict in ('better', 'worse', 'no clear difference')
    assert (task_dir / 'results.md').read_text().count('| ResNet-18') == len(names)
    # each run trained with its own seed, on the same data
    config = quickstart.TASKS['classification'].models[1][1]
    stem = config[:-3]
    for seed in (0, 5):
        saved = Config.fromfile(task_dir / stem / f'seed_{seed}' / config)
        assert saved.randomness.seed == seed
        assert saved.train_dataloader.dataset.data_root == str(tmp_path / 'data' /
                                                               'classification')
    pictures = re.findall(r'\S+\.png', output.split('attention maps of')[1])
    assert len(pictures) == 2
    for picture in [*pictures, task_dir / 'results.png']:
        with open(picture, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    # the data set is kept: a second run finds it
    data = generate_dataset('classification', str(tmp_path / 'data' / 'classification'),
                            num_train=8, num_val=4, image_size=size, seed=0)
    assert not data['written']


def test_compare_trains_a_baseline_and_each_module_per_seed(tmp_path, capsys):
    compare = load_tool('analysis/compare')
    generate_dataset('classification', str(tmp_path / 'data'), num_train=8, num_val=4,
                     image_size=32, seed=0)
    tiny = [option for option in TINY if option != 'train_cfg.max_epochs=1']
    assert compare.main(['--modules', 'SE', 'ECA', '--data-root', str(tmp_path / 'data'),
                         '--work-dir', str(tmp_path / 'work'), '--seeds', '3', '4',
                         '--train-length', '2', *tiny]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert list(rows) == ['cls_resnet18', 'cls_resnet18 + SE', 'cls_resnet18 + ECA']
    results = json.loads((tmp_path / 'work' / 'compare.json').read_text())
    models = results['models']
    assert results['seeds'] == [3, 4] and [len(m['runs']) for m in models] == [2, 2, 2]
    assert [m['attention_params'] for m in models][0] == 0
    assert all(m['attention_params'] > 0 for m in models[1:])
    assert models[1]['params'] - models[1]['attention_params'] == models[0]['params']
    with open(tmp_path / 'work' / 'compare.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    for seed in (3, 4):
        saved = Config.fromfile(tmp_path / 'work' / 'SE' / f'seed_{seed}' / 'cls_resnet18.py')
        assert saved.randomness.seed == seed
        # --train-length moved the loop and the cosine together
        assert saved.train_cfg.max_epochs == 2 and saved.param_scheduler[1]['end'] == 2


@pytest.mark.parametrize('tool, argv', [('analysis/compare', ['--modules', 'SEE']),
                                        ('analysis/compare', ['--seeds', '1', '1']),
                                        ('quickstart', ['--seeds', '0', '0'])])
def test_arguments_are_checked(tool, argv):
    with pytest.raises(SystemExit):
        load_tool(tool).parse_args(argv)


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
