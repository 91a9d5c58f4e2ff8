"""Channel and spatial attention: gates over both channels and positions."""
from .bam import BAM
from .caa import CAA
from .cbam import CBAM
from .coord_attention import CoordAttention
from .cpca import CPCA
from .dual_attention import DualAttention
from .efficient_multi_scale_attention import EfficientMultiScaleAttention
from .ela import ELA
from .gam import GAM
from .mlca import MLCA
from .polarized_self_attention import PolarizedSelfAttention
from .residual_attention_mask import ResidualAttentionMask
from .rga import RGA
from .scsa import SCSA
from .scse import SCSE
from .shuffle_attention import ShuffleAttention
from .simam import SimAM
from .triplet_attention import TripletAttention

__all__ = ['BAM', 'CAA', 'CBAM', 'CoordAttention', 'CPCA', 'DualAttention',
           'EfficientMultiScaleAttention', 'ELA', 'GAM', 'MLCA',
           'PolarizedSelfAttention', 'ResidualAttentionMask', 'RGA', 'SCSA', 'SCSE',
           'ShuffleAttention', 'SimAM', 'TripletAttention']
