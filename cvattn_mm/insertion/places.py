"""Resolving ``at=`` of an insertion to module paths of a model."""
import difflib
import fnmatch
import logging
from typing import List, Sequence, Union

import torch.nn as nn
from mmengine.logging import print_log

from ..attention.base import PAPER_POSITIONS
from .presets import PAPER_PRESETS, find_preset, find_substitute
from .site import AROUND_SEP, INPUT_SUFFIX, host_of


def candidate_message(model: nn.Module, wanted: str, limit: int = 40) -> str:
    """A hint listing the module paths of ``model`` that come closest to ``wanted``."""
    paths = [p for p, _ in model.named_modules() if p]
    close = difflib.get_close_matches(wanted, paths, n=8, cutoff=0.3)
    shown = ', '.join(close or paths[:limit])
    more = '' if close or len(paths) <= limit else f', ... ({len(paths)} in all)'
    return f'closest module paths: {shown}{more}'


def resolve_places(model: nn.Module, at: Union[str, Sequence[str]],
                   attention_cls: type) -> List[str]:
    """Module paths of ``model`` after which ``attention_cls`` is inserted.

    Args:
        model: The host model.
        at: ``'paper'`` for the module's paper position in this backbone family, or one or
            several ``fnmatch`` patterns over module paths (``'layer*.*.bn3'``, ``'stages.2'``);
            a pattern ending in ``':input'`` places the attention on the modules' input;
            ``'<first>~<last>'`` (two exact module paths, ``'layer1.1~layer1.2'``) is an
            'around' place: the attention replaces the output of ``<last>`` and also reads
            the input of ``<first>`` (``forward(x, mask_input)``).
        attention_cls: The attention class (for its ``paper_position``).

    Returns:
        The matched paths, in the model's module order, without duplicates.
    """
    if at == 'paper':
        return paper_places(model, attention_cls)
    patterns = [at] if isinstance(at, str) else at
    if not isinstance(patterns, (list, tuple)) or not patterns or \
            not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"at= must be 'paper' or module-path patterns, got {at!r}; "
                         f'{candidate_message(model, str(at))}')
    paths = [p for p, _ in model.named_modules() if p]
    matched = []
    order = {p: i for i, p in enumerate(paths)}
    for pattern in patterns:
        if AROUND_SEP in pattern:
            matched.append(_around_place(model, pattern, order))
            continue
        suffix = INPUT_SUFFIX if pattern.endswith(INPUT_SUFFIX) else ''
        matched += [p + suffix for p in match_paths(model, pattern.removesuffix(INPUT_SUFFIX),
                                                    f"at='{pattern}'")]
    return sorted(set(matched), key=lambda p: (order[host_of(p)], p))


def match_paths(model: nn.Module, pattern: str, what: str) -> List[str]:
    """The module paths of ``model`` that the ``fnmatch`` ``pattern`` matches, in module
    order; a ValueError beginning with ``what`` (``"at='...'"``) when there is none."""
    hits = [p for p, _ in model.named_modules() if p and fnmatch.fnmatchcase(p, pattern)]
    if not hits:
        raise ValueError(f"{what} matches no module of {type(model).__name__}; use 'paper' or "
                         f'a pattern over module paths; {candidate_message(model, pattern)}')
    return hits


def _around_place(model: nn.Module, pattern: str, order: dict) -> str:
    """``pattern`` (``'<first>~<last>'``) if both are module paths and ``<first>`` does not
    come after ``<last>``."""
    ends = pattern.split(AROUND_SEP)
    if len(ends) != 2 or not all(ends) or any(e.endswith(INPUT_SUFFIX) for e in ends):
        raise ValueError(f"at='{pattern}': an around place is '<first>{AROUND_SEP}<last>' "
                         "with two module paths (e.g. 'layer1.1~layer1.2')")
    for end in ends:
        if end not in order:
            raise ValueError(f"at='{pattern}': {end!r} is not a module path of "
                             f'{type(model).__name__} (around places take exact paths); '
                             f'{candidate_message(model, end)}')
    if order[ends[0]] > order[ends[1]]:
        raise ValueError(f"at='{pattern}': {ends[0]!r} comes after {ends[1]!r}; an around "
                         "place runs from the first module's input to the last one's output")
    return pattern


def paper_places(model: nn.Module, attention_cls: type, key: str = 'at') -> List[str]:
    """The places of ``attention_cls``'s paper position in ``model`` (a ValueError where its
    family defines none; ``key`` names the insertion's key in the messages)."""
    position = attention_cls.paper_position
    if position == 'own_block':
        position = attention_cls.fallback_position
        print_log(f"{key}='paper': {attention_cls.__name__}'s paper uses it only inside its own "
                  f"architecture; inserted at its fallback position '{position}' "
                  f'({PAPER_POSITIONS[position]}), which is not the paper\'s position',
                  logger='current', level=logging.WARNING)
    preset = find_preset(model)
    if preset is None:
        raise ValueError(
            f"{key}='paper': no paper-position preset for {type(model).__name__} (presets exist "
            f'for {", ".join(sorted(PAPER_PRESETS))}); give module-path patterns instead, '
            f'e.g. {key}=\'stages.*\'; {candidate_message(model, "stage")}')
    places = preset(model, position)
    if not places:
        substitute = find_substitute(model, position)
        hint = (f"use {key}='{substitute[0]}' instead: {substitute[1]}" if substitute else
                f'give module-path patterns instead; {candidate_message(model, "conv2")}')
        raise ValueError(
            f"{key}='paper': {attention_cls.__name__}'s paper position '{position}' "
            f'({PAPER_POSITIONS[position]}) is not defined for {type(model).__name__} '
            f'(of this configuration); {hint}')
    return places
