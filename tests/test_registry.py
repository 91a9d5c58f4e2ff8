"""The registry contract (docs/architecture.md, "Registry")."""
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.registry import MODELS as ROOT

import cvattn_mm  # noqa: F401
from cvattn_mm.attention.catalog import attention_classes
from cvattn_mm.registry import MODELS, unknown_name_message

OURS = sorted(MODELS.module_dict)


def engine_names():
    """The names cvattn_mm registers in mmengine's root registries besides MODELS (hooks,
    optimiser wrappers)."""
    import mmengine.registry as root
    return sorted(name for attr in ('HOOKS', 'OPTIM_WRAPPERS')
                  for name, cls in getattr(root, attr).module_dict.items()
                  if cls.__module__.startswith('cvattn_mm.'))
ATTENTION = list(attention_classes())


def run_python(code):
    """Run ``code`` in a fresh interpreter (nothing of cvattn_mm imported yet)."""
    result = subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope='module')
def downstream_registries():
    from mmdet.registry import MODELS as MMDET
    from mmpretrain.registry import MODELS as MMPRETRAIN
    from mmseg.registry import MODELS as MMSEG
    return dict(mmdet=MMDET, mmseg=MMSEG, mmpretrain=MMPRETRAIN)


@pytest.mark.parametrize('name', ATTENTION)
def test_resolves_from_every_downstream_registry(name, downstream_registries):
    for registry in downstream_registries.values():
        module = registry.build(dict(type=name, in_channels=64))
        assert type(module) is MODELS.get(name)
    assert ROOT.get(name) is MODELS.get(name)


@pytest.mark.parametrize('name', ATTENTION)
def test_builds_through_mmcv_plugin_layer(name):
    from mmcv.cnn import build_plugin_layer
    from mmengine.registry import DefaultScope

    for scope in ('mmdet', 'mmseg'):
        with DefaultScope.overwrite_default_scope(scope):
            layer_name, layer = build_plugin_layer(dict(type=name), postfix='_1',
                                                   in_channels=64)
        assert layer_name == MODELS.get(name)._abbr_ + '_1'
        assert layer.in_channels in (64, None)


def test_custom_imports_in_a_config(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("custom_imports = dict(imports=['cvattn_mm'], allow_failed_imports=False)\n"
                   "model = dict(type='CBAM', in_channels=32)\n")
    out = run_python(f"""
        import sys
        from mmengine.config import Config
        from mmdet.registry import MODELS
        assert 'cvattn_mm' not in sys.modules
        cfg = Config.fromfile({str(cfg)!r})
        print(type(MODELS.build(cfg.model)).__module__)
    """)
    assert out.strip().startswith('cvattn_mm.attention')


def test_scoped_name_needs_no_import():
    out = run_python("""
        import sys
        from mmdet.registry import MODELS as MMDET
        from mmpretrain.registry import MODELS as MMPRETRAIN
        assert 'cvattn_mm' not in sys.modules
        se = MMDET.build(dict(type='cvattn_mm.SE', in_channels=64))
        cbam = MMPRETRAIN.build(dict(type='cvattn_mm.CBAM', in_channels=64))
        print(type(se).__name__, type(cbam).__name__, 'cvattn_mm' in sys.modules)
    """)
    assert out.split() == ['SE', 'CBAM', 'True']


def test_no_name_collides_with_the_ecosystem():
    """Every registry of mmengine, mmcv, mmdet, mmseg and mmpretrain, fully populated, against
    our models, hooks and optimiser wrappers."""
    assert {'SparsityPenaltyHook', 'ProgressBarHook', 'CPUBF16OptimWrapper'} <= set(
        engine_names())
    run_python(f"""
        import importlib
        from mmengine.registry import Registry
        for package in ('mmdet', 'mmseg', 'mmpretrain'):
            importlib.import_module(package + '.utils').register_all_modules(False)
        import mmcv.ops, mmcv.cnn, mmcv.transforms  # noqa
        registries = {{}}
        for module_name in ('mmengine.registry', 'mmdet.registry', 'mmseg.registry',
                            'mmpretrain.registry'):
            module = importlib.import_module(module_name)
            for attr, obj in vars(module).items():
                if isinstance(obj, Registry):
                    registries[module_name + '.' + attr] = obj
        assert len(registries) > 40, len(registries)
        ours = {OURS + engine_names()!r}
        clashes = []
        for where, registry in registries.items():
            for name in ours:
                if name in registry.module_dict:
                    clashes.append(f'{{name}} in {{where}}')
        assert not clashes, clashes
        print(len(registries), sum(len(r.module_dict) for r in registries.values()))
    """)


def test_unknown_name_lists_the_closest():
    from mmengine.registry import DefaultScope

    with pytest.raises(KeyError, match=r"'SEE' is not a registered.*closest: SE"):
        MODELS.build(dict(type='SEE', in_channels=8))
    # the current default scope moves the look-up to mmdet's registry
    with DefaultScope.overwrite_default_scope('mmdet'), \
            pytest.raises(KeyError, match=r"'SEE' is not a registered.*closest: SE"):
        MODELS.build(dict(type='SEE', in_channels=8))
    from mmdet.registry import MODELS as MMDET
    with pytest.raises(KeyError, match=r"'CBMA'.*closest: CBAM"):
        MMDET.build(dict(type='cvattn_mm.CBMA', in_channels=8))


def test_list_modules_cli():
    out = run_python("""
        from cvattn_mm.cli import main
        main(['list'])
    """)
    lines = out.strip().splitlines()
    assert len(lines) == 1 + len(ATTENTION)
    assert any(line.split()[0] == 'SE' and '8,464' in line for line in lines), out


@pytest.mark.parametrize('name,candidates', [
    ('EMA', ['EMAU', 'EfficientMultiScaleAttention', 'ExponentialMovingAverage']),
    ('PSA', ['PolarizedSelfAttention', 'PyramidSplitAttention', 'PSAHead']),
    ('ResidualAttention', ['ResidualAttentionMask', 'CSRAHead']),
])
def test_ambiguous_names_list_the_candidates(name, candidates):
    from cvattn_mm.insertion import insert_attention
    from cvattn_mm.registry import AMBIGUOUS_NAMES

    assert list(AMBIGUOUS_NAMES[name]) == candidates
    pattern = rf"'{name}' is ambiguous, name the module you mean: {candidates[0]} .*" + \
        '.*'.join(candidates[1:])
    with pytest.raises(KeyError, match=pattern):
        MODELS.build(dict(type=name, in_channels=8))
    with pytest.raises(KeyError, match=pattern):
        insert_attention(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1)),
                         [dict(attention=name, at='0')])
    for candidate, (package, _) in AMBIGUOUS_NAMES[name].items():
        if package == 'cvattn_mm' and candidate in MODELS.module_dict:
            assert f'{candidate} (cvattn_mm)' in unknown_name_message(name, MODELS)
    assert name not in MODELS.module_dict and name not in ROOT.module_dict
