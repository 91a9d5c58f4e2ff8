"""Argument checks shared by the attention modules.

Each raises ``ValueError`` naming the module, the argument, the value it got and what is
allowed, at construction time, instead of a shape error deep inside ``forward``.
"""
import math
from numbers import Integral, Real


def check_int(owner, name, value, minimum=1, maximum=None):
    """Return ``value`` if it is an integer in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f'{owner}: {name} must be an integer, got {value!r}')
    if value < minimum or (maximum is not None and value > maximum):
        upper = '' if maximum is None else f' and <= {maximum}'
        raise ValueError(f'{owner}: {name} must be >= {minimum}{upper}, got {value}')
    return int(value)


def check_odd(owner, name, value, minimum=1):
    """Return ``value`` if it is an odd integer >= ``minimum``."""
    value = check_int(owner, name, value, minimum)
    if value % 2 == 0:
        raise ValueError(f'{owner}: {name} must be odd (an odd kernel keeps the size with '
                         f'padding (k - 1) / 2), got {value}')
    return value


def check_choice(owner, name, value, choices):
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f'{owner}: {name} must be one of {tuple(choices)}, got {value!r}')
    return value


def check_divisible(owner, name, value, divisor, divisor_name):
    """Check that ``value`` (named ``name``) is a multiple of ``divisor``."""
    if value % divisor != 0:
        raise ValueError(f'{owner}: {name}={value} must be divisible by '
                         f'{divisor_name}={divisor}')


def check_positive_float(owner, name, value, allow_zero=False):
    """Return ``value`` as a float if it is finite and positive (or zero if allowed)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f'{owner}: {name} must be a number, got {value!r}')
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = '>= 0' if allow_zero else '> 0'
        raise ValueError(f'{owner}: {name} must be finite and {bound}, got {value}')
    return value


def reduced_channels(owner, in_channels, reduction, min_channels=1):
    """Width of a bottleneck: ``max(in_channels // reduction, min_channels)``.

    This is the one reduction convention of the library: ``reduction`` is an integer divisor
    of the channel count (SE's r), ``min_channels`` a floor for narrow inputs.
    ``reduction`` may exceed ``in_channels`` only when a floor ``min_channels > 1`` is set.
    """
    reduction = check_int(owner, 'reduction', reduction, 1)
    min_channels = check_int(owner, 'min_channels', min_channels, 1)
    if reduction > in_channels and min_channels == 1:
        raise ValueError(f'{owner}: reduction={reduction} is larger than '
                         f'in_channels={in_channels}; use reduction <= {in_channels} or a '
                         'min_channels floor')
    return max(in_channels // reduction, min_channels)
