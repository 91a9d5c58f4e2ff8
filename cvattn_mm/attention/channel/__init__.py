"""Channel attention: gates computed from a global descriptor of each channel."""
from .eca import ECA
from .fca import FCA
from .gather_excite import GatherExcite
from .gc import GC
from .gct import GCT
from .gsop import GSoP
from .nam import NAM
from .se import SE
from .simplified_non_local import SimplifiedNonLocal
from .srm import SRM

__all__ = ['ECA', 'FCA', 'GatherExcite', 'GC', 'GCT', 'GSoP', 'NAM', 'SE', 'SimplifiedNonLocal',
           'SRM']
