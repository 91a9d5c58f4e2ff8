"""Silence upstream output that is not the user's concern, for the commands and tools.

* setuptools' "pkg_resources is deprecated" ``UserWarning``: mmengine imports
  ``pkg_resources`` (``mmengine.utils.is_installed``) whenever a config inherits an upstream
  one (``_base_ = ['mmdet::...']``), so every command printed it, twice;
* libkineto's log lines, printed by every torch profiler session (the benchmark's CPU memory
  peak): ``USDT ... profiler_start``, ``profiler_stop`` and, without a GPU, ``ERROR ...
  gpuGetDeviceCount failed``.
"""
import os
import warnings

#: libkineto prints no message at this level or above (its levels end at 5).
KINETO_SILENT_LEVEL = '6'


def silence_upstream_noise() -> None:
    """Hide the messages above. A ``KINETO_LOG_LEVEL`` set by the user is kept; libkineto
    reads it at the first profiler session, so call this before that (and before the first
    config is loaded), in a command's entry point."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated',
                            category=UserWarning)
    os.environ.setdefault('KINETO_LOG_LEVEL', KINETO_SILENT_LEVEL)
