"""The list of registered attention modules with their metadata."""
from typing import Dict, List

from ..registry import MODELS
from .base import AttentionModule


def attention_classes() -> Dict[str, type]:
    """The registered attention modules, by registry name."""
    return {name: cls for name, cls in sorted(MODELS.module_dict.items())
            if isinstance(cls, type) and issubclass(cls, AttentionModule)}


def list_attention_modules(channels: int = 256) -> List[Dict]:
    """One dict per registered attention module, sorted by family and name.

    Keys: ``name``, ``family``, ``paper``, ``paper_position``, ``abbr`` and ``params``
    (parameter count of the default configuration at ``channels`` input channels).
    """
    rows = []
    for name, cls in attention_classes().items():
        module = cls(in_channels=channels)
        rows.append(dict(name=name, family=cls.family, paper=cls.paper,
                         paper_position=cls.paper_position, abbr=cls._abbr_,
                         params=sum(p.numel() for p in module.parameters())))
    return sorted(rows, key=lambda r: (r['family'], r['name']))
