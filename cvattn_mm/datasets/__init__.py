"""Synthetic data sets in the upstream formats, for the quickstart (design.md section 6)."""
from .generate import TASKS, generate_dataset

__all__ = ['generate_dataset', 'TASKS']
