"""Attention maps of the attention modules: extraction, capture in a model, drawing."""
from .capture import CapturedMaps, capture_attention_maps
from .draw import draw_attention_maps
from .maps import EXTRACTORS, KINDS, WITHOUT_MAP, AttentionMap, extract_maps, register_extractor
from .visualize import visualize_config_model

__all__ = [
    'AttentionMap', 'CapturedMaps', 'EXTRACTORS', 'KINDS', 'WITHOUT_MAP', 'capture_attention_maps',
    'draw_attention_maps', 'extract_maps', 'register_extractor', 'visualize_config_model'
]
