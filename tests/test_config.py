"""cvattn_mm.config: a config's model, built with the registry of the config's default scope."""
from mmengine.config import Config
from mmengine.registry import DefaultScope

from cvattn_mm.config import build_model, load_config

CONFIG = """\
default_scope = {scope!r}
model = dict(type='ResNet', depth=18, out_indices=(3, ))
"""


def write_config(tmp_path, scope):
    path = tmp_path / f'{scope}.py'
    path.write_text(CONFIG.format(scope=scope))
    return path


def test_the_default_scope_picks_the_registry(tmp_path):
    for scope in ('mmpretrain', 'mmdet'):
        model = build_model(write_config(tmp_path, scope))
        assert type(model).__module__.startswith(f'{scope}.models')


def current_scope():
    """(instance name, scope name) of the current default scope; mmengine restores the scope
    table from a deep copy, so the instance objects themselves change."""
    scope = DefaultScope.get_current_instance()
    return None if scope is None else (scope.instance_name, scope.scope_name)


def test_the_scope_is_the_default_only_while_building(tmp_path):
    def check():
        current = current_scope()
        build_model(write_config(tmp_path, 'mmdet'))
        assert current_scope() == current

    check()
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        check()


def test_options_and_model_cfg(tmp_path):
    cfg = Config.fromfile(write_config(tmp_path, 'mmpretrain'))
    model = build_model(cfg, {'model.out_indices': (2, 3)})
    assert model.out_indices == (2, 3)
    assert cfg.model.out_indices == (3, )  # the given config is not modified
    assert load_config(cfg) is cfg
    assert build_model(cfg, model_cfg=dict(type='SE', in_channels=32)).in_channels == 32
