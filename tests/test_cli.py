"""The ``cvattn-mm`` console command's benchmark and visualize sub-commands, in process."""
import pytest

from cvattn_mm.cli import main
from cvattn_mm.datasets import generate_dataset

from .visualization.test_visualize_tool import CONFIG

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def test_benchmark_writes_the_tables(tmp_path, capsys):
    main(['benchmark', '--modules', 'SE', 'ECA', '--shapes', '2x16x5x7', '--repeats', '2',
          '--warmup', '1', '--no-peers', '--no-models', '--out-dir', str(tmp_path)])
    text = (tmp_path / 'benchmark.md').read_text()
    assert '| SE | 2x16x5x7 |' in text and '| ECA | 2x16x5x7 |' in text
    assert text in capsys.readouterr().out
    assert (tmp_path / 'benchmark.json').is_file() and (tmp_path / 'benchmark.png').is_file()


def test_benchmark_lists_the_modules_when_one_is_unknown(capsys):
    with pytest.raises(SystemExit):
        main(['benchmark', '--modules', 'SEE'])
    from cvattn_mm.attention.catalog import attention_classes
    registered = ', '.join(sorted(attention_classes()))
    assert f"unknown modules ['SEE']; registered: {registered}" in capsys.readouterr().err


def test_visualize_draws_one_png_per_image(tmp_path):
    config = tmp_path / 'tiny.py'
    config.write_text(CONFIG.format(insertion=dict(attention=dict(type='CBAM', reduction=4),
                                                   at='paper')))
    data = generate_dataset('classification', str(tmp_path / 'data'), num_train=4, num_val=4,
                            image_size=64, seed=0)
    out = tmp_path / 'maps'
    main(['visualize', str(config), '--image-dir', f'{data["data_root"]}/val', '--num-images',
          '2', '--out-dir', str(out)])
    pictures = sorted(out.glob('*.png'))
    assert len(pictures) == 2
    assert all(p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' for p in pictures)


def test_insertions_lists_the_plugins(tmp_path, capsys):
    config = tmp_path / 'gc_plugins.py'
    config.write_text("default_scope = 'mmdet'\n"
                      "custom_imports = dict(imports=['cvattn_mm'])\n"
                      "model = dict(type='ResNet', depth=50, base_channels=8, stem_channels=8, "
                      "plugins=[dict(cfg=dict(type='GC'), stages=(False, False, False, True), "
                      "position='after_conv3')])\n")
    main(['insertions', str(config)])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines[1:4]] == [
        ['(model)', f'layer4.{i}.gc', '256'] for i in range(3)]
    assert lines[-1].startswith('3 attention modules (0 inserted, 3 plug-ins), 26,256 ')
