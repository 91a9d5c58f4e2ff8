"""The module contract, run on every registered attention module with its defaults."""
import functools

import pytest
import torch

from cvattn_mm.attention import ConvReplacement
from cvattn_mm.attention.catalog import attention_classes
from cvattn_mm.registry import MODELS

from . import contract

ATTENTION = list(attention_classes())
REPLACEMENTS = [n for n, cls in attention_classes().items() if issubclass(cls, ConvReplacement)]
CHANNELS = 64


def factory(name):
    return functools.partial(MODELS.build, dict(type=name, in_channels=CHANNELS))


def test_registry_has_modules():
    assert 'SE' in ATTENTION


@pytest.mark.parametrize('name', ATTENTION)
def test_metadata(name):
    contract.check_metadata(MODELS.get(name))


def test_abbreviations_are_unique():
    abbrs = [MODELS.get(name)._abbr_ for name in ATTENTION]
    assert len(set(abbrs)) == len(abbrs), abbrs


@pytest.mark.parametrize('name', ATTENTION)
@pytest.mark.parametrize('check', contract.ALL_CHECKS, ids=lambda c: c.__name__[6:])
def test_contract(name, check):
    torch.manual_seed(0)
    check(factory(name))


@pytest.mark.parametrize('name', ATTENTION)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=str)
def test_autocast(name, dtype):
    contract.check_autocast(factory(name), dtype)


@pytest.mark.parametrize('name', ATTENTION)
def test_torch_compile_fullgraph(name):
    contract.check_torch_compile(factory(name))


@pytest.mark.parametrize('name', ATTENTION)
def test_onnx_export(name, tmp_path):
    contract.check_onnx(factory(name), tmp_path)


@pytest.mark.parametrize('name', REPLACEMENTS)
def test_replaces_convs(name):
    contract.check_replaces_conv(MODELS.get(name))
