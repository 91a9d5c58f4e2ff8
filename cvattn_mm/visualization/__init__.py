"""Attention maps of the attention modules: extraction, capture in a model, drawing."""
from .capture import CapturedMaps, capture_attention_maps
from .draw import draw_attention_maps
from .maps import KINDS, AttentionMap, extract_maps
from .visualize import visualize_config_model

__all__ = [
    'AttentionMap', 'CapturedMaps', 'KINDS', 'capture_attention_maps', 'draw_attention_maps',
    'extract_maps', 'visualize_config_model'
]
