"""Synthetic data sets in the upstream formats, for the quickstart.

See docs/architecture.md, "Embedded data and the quickstart".
"""
from .generate import TASKS, generate_dataset
from .quickstart import QUICKSTART_DATA, SCOPE_TASKS, ensure_quickstart_data

__all__ = ['generate_dataset', 'TASKS', 'QUICKSTART_DATA', 'SCOPE_TASKS',
           'ensure_quickstart_data']
