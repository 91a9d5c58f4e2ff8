"""cvattn_mm: computer-vision attention modules for OpenMMLab 2.x."""
from . import attention, engine, heads, insertion, registry  # noqa: F401  (registers them)
from .checkpoint_safety import allow_mmengine_checkpoints
from .version import __version__

allow_mmengine_checkpoints()

__all__ = ['__version__']
