"""The registry contract (docs/architecture.md, "Registry")."""
import json
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


#: Names of ours that another toolbox registers too: name -> the registries that hold its
#: class of that name. Under that toolbox's default scope a build by name picks its class, so
#: insertions build ours by class and plugins= warns (tests/insertion/test_name_clashes.py).
KNOWN_CLASHES = {'CBAM': ['mmyolo.registry.MODELS']}
ECOSYSTEM = ('mmdet', 'mmseg', 'mmpretrain', 'mmyolo', 'mmaction')
#: mmaction2 1.2.0's wheel lacks the folder mmaction/models/localizers/drn (its
#: localizers/__init__.py imports DRN from it), so ``import mmaction.models`` fails. In v1.2.0
#: that folder registers exactly one name, ``DRN`` in mmaction's MODELS (drn/drn.py; its
#: drn_utils register nothing). The stand-in provides that module and that name, so every
#: other module of mmaction registers its names as installed.
MMACTION_DRN_STAND_IN = """
import sys
import types
from mmaction.registry import MODELS as MMACTION_MODELS
package = types.ModuleType('mmaction.models.localizers.drn')
package.__path__ = []
drn = types.ModuleType('mmaction.models.localizers.drn.drn')
drn.DRN = MMACTION_MODELS.register_module(name='DRN', module=type('DRN', (), {}))
sys.modules[package.__name__] = package
sys.modules[drn.__name__] = drn
"""


def test_no_name_collides_with_the_ecosystem():
    """Every registry of mmengine, mmcv, mmdet, mmseg, mmpretrain, mmyolo and mmaction2, fully
    populated, against our models, hooks and optimiser wrappers: the clashes are exactly
    KNOWN_CLASHES."""
    assert {'SparsityPenaltyHook', 'ProgressBarHook', 'CPUBF16OptimWrapper'} <= set(
        engine_names())
    out = run_python(MMACTION_DRN_STAND_IN + f"""
import importlib
import json
from mmengine.registry import Registry
for package in {ECOSYSTEM!r}:
    importlib.import_module(package + '.utils').register_all_modules(False)
import mmcv.ops, mmcv.cnn, mmcv.transforms  # noqa
registries = {{}}
for package in ('mmengine', ) + {ECOSYSTEM!r}:
    module = importlib.import_module(package + '.registry')
    for attr, obj in vars(module).items():
        if isinstance(obj, Registry):
            registries[package + '.registry.' + attr] = obj
clashes = {{}}
for where, registry in registries.items():
    for name in {OURS + engine_names()!r}:
        if name in registry.module_dict:
            clashes.setdefault(name, []).append(where)
print(json.dumps(dict(clashes=clashes, names={{
    where: sorted(registry.module_dict) for where, registry in registries.items()}})))
""")
    found = json.loads(out.splitlines()[-1])
    names = found['names']
    assert {where.split('.')[0] for where in names} == {'mmengine', *ECOSYSTEM}
    # every package's modules were really registered (the lists are populated)
    for where, name in [('mmyolo.registry.MODELS', 'YOLOv5CSPDarknet'),
                        ('mmaction.registry.MODELS', 'Recognizer3D'),
                        ('mmaction.registry.MODELS', 'DRN'),
                        ('mmaction.registry.MODELS', 'BMN'),
                        ('mmdet.registry.MODELS', 'RetinaNet'),
                        ('mmseg.registry.MODELS', 'PSPHead'),
                        ('mmpretrain.registry.MODELS', 'ImageClassifier'),
                        ('mmengine.registry.MODELS', 'ContextBlock')]:
        assert name in names[where], (where, name)
    clashes = {name: sorted(where) for name, where in found['clashes'].items()}
    new = {n: w for n, w in clashes.items() if KNOWN_CLASHES.get(n) != w}
    gone = sorted(set(KNOWN_CLASHES) - set(clashes))
    assert not new and not gone, (
        f'names of cvattn_mm that other toolboxes register: {clashes}; not in KNOWN_CLASHES: '
        f'{new}; no longer clashing: {gone}. Rename the module, or add it to KNOWN_CLASHES '
        '(tests/insertion/test_name_clashes.py then checks that insertions build ours and '
        'plugins= warns) and to the README')


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
