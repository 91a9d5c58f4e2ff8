"""Spatial attention: reweighting or aggregating positions, incl. self-attention."""
from .acmix import ACmix
from .agent_attention import AgentAttention
from .bi_level_routing_attention import BiLevelRoutingAttention
from .cot import CoT
from .deformable_attention import DeformableAttention2D
from .double_attention import DoubleAttention
from .emau import EMAU
from .external_attention import ExternalAttention
from .lka import LKA
from .lsk_block import LSKBlock
from .lska import LSKA
from .multi_head_external_attention import MultiHeadExternalAttention
from .non_local import NonLocalBlock
from .pooled_self_attention import PooledSelfAttention
from .rcca import RCCA
from .san import SAN
from .sasa import SASA
from .scconv import SCConv
from .sge import SGE
from .spatial_transformer import SpatialTransformer

__all__ = ['ACmix', 'AgentAttention', 'BiLevelRoutingAttention',
           'CoT', 'DeformableAttention2D', 'DoubleAttention', 'EMAU', 'ExternalAttention', 'LKA',
           'LSKA', 'LSKBlock',
           'MultiHeadExternalAttention', 'NonLocalBlock', 'PooledSelfAttention',
           'RCCA', 'SAN', 'SASA', 'SCConv',
           'SGE', 'SpatialTransformer']
