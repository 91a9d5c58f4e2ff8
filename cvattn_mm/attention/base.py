"""The base class of every attention module: metadata, input validation, attention maps."""
from typing import ClassVar, Dict, List, Optional

import torch
from mmengine.model import BaseModule

from .checks import check_int
from .maps import AttentionMap

#: The families of attention, after Guo et al., "Attention mechanisms in computer vision:
#: a survey" (arXiv:2111.07624).
FAMILIES = {
    'channel': 'reweights channels from a global descriptor',
    'spatial': 'reweights or aggregates positions (incl. self-attention over positions)',
    'channel_spatial': 'reweights both channels and positions',
    'branch': 'selects among parallel branches',
}

#: Where a paper puts its module; the insertion presets translate these per backbone.
PAPER_POSITIONS = {
    'residual_end': 'on the residual branch, after its last norm, before the addition',
    'residual_end_c3_c5': 'as residual_end, in the stages c3-c5 only (all but the first)',
    'before_mid_norm': "after the residual branch's (last) 3x3 conv, before its norm",
    'after_mid_conv': "after the residual branch's 3x3 conv, its norm and activation",
    'after_mid_norm': ("after the residual branch's 3x3 conv and its norm, before its "
                       'activation (the plug-in form of a replacement, e.g. SK)'),
    'replaces_mid_conv': ("in place of the residual branch's 3x3 conv (a replace= "
                          'insertion; modules that absorb it also take its norm)'),
    'replaces_block_convs': ("in place of every conv of the residual branch (conv1-conv3 of "
                             'a Bottleneck, conv1-conv2 of a BasicBlock; a replace= insertion)'),
    'between_stages': 'at the end of every stage but the last',
    'late_stages': 'in the last stages (on the coarsest feature maps)',
    'after_every_stage': 'at the output of every stage, the last one included',
    'around_stage': ("around stages 1 to 3: reads the output of the stage's first block and "
                     "replaces the output of its last block (an 'around' site, see "
                     'insertion/site.py)'),
    'own_block': ("only inside the paper's own architecture; inserted at the module's "
                  'fallback_position (the insertion logs that it is not the paper\'s)'),
    'backbone_input': "on the backbone's image input, before its stem (classification only)",
    'stage_last_residual_end': "as residual_end, in the last block of each stage only",
    'before_every_conv': ('at the input of every conv of the backbone: the stem conv(s), '
                          "each block's convs and the downsample shortcut's conv"),
}


def loads_checkpoint(init_cfg) -> bool:
    """Whether ``init_cfg`` loads a checkpoint ('Pretrained')."""
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(isinstance(cfg, dict) and cfg.get('type') == 'Pretrained' for cfg in cfgs)


class AttentionModule(BaseModule):
    """Base of the attention modules of cvattn_mm.

    A subclass maps an ``(N, C, H, W)`` tensor to a tensor of the same shape, computes its
    attention maps with :meth:`attention_maps`, and declares:

    * ``family``: a key of :data:`FAMILIES`;
    * ``paper``: authors, title, venue and arXiv id;
    * ``paper_position``: a key of :data:`PAPER_POSITIONS`;
    * ``_abbr_``: the short, unique name used in state-dict keys and plug-in names.

    The whole contract, and how to add a module: docs/architecture.md and
    docs/adding_a_module.md.

    Args:
        in_channels (int | None): Channel count C of the input. ``None`` only for modules
            that are independent of C (they then accept any C).
        init_cfg (dict | list[dict], optional): mmengine initialisation config.
    """

    family: ClassVar[str]
    paper: ClassVar[str]
    paper_position: ClassVar[str]
    _abbr_: ClassVar[str]
    #: Where ``at='paper'`` inserts a module whose ``paper_position`` is ``'own_block'``.
    fallback_position: ClassVar[Optional[str]] = None
    #: True for modules that move features spatially (a spatial transformer's warp): boxes
    #: and masks would need the same warp, so detectors and segmentors refuse them.
    warps_geometry: ClassVar[bool] = False

    def __init__(self, in_channels: Optional[int], init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if in_channels is not None:
            in_channels = check_int(type(self).__name__, 'in_channels', in_channels, 1)
        self.in_channels = in_channels

    def init_weights(self) -> None:
        """mmengine's initialisation (``init_cfg``, then the children), then, on the first
        call and unless ``init_cfg`` loads a checkpoint, :meth:`init_special`.

        mmengine applies a parent's ``init_cfg`` to the whole subtree, which would overwrite
        initialisations made only in the constructor.
        """
        first = not self._is_init
        super().init_weights()
        if first and not loads_checkpoint(self.init_cfg):
            self.init_special()

    def init_special(self) -> None:
        """The paper's own initialisation (e.g. a zero-initialised last layer).

        Subclasses that have one override this and also call it at the end of ``__init__``.
        """

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is an ``(N, in_channels, H, W)`` tensor.

        Skipped while tracing (the traced graph is specialised to the traced input anyway).
        """
        if torch.jit.is_tracing():
            return
        if x.dim() != 4:
            raise ValueError(f'{type(self).__name__} expects an (N, C, H, W) tensor, got '
                             f'shape {tuple(x.shape)}')
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} was built for in_channels='
                             f'{self.in_channels} but got {x.shape[1]} channels '
                             f'(input shape {tuple(x.shape)})')

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """The module's attention maps for its input ``x`` (N, C, H, W), by name.

        Computed with the same methods as the forward (the gates it multiplies by, the
        weights it averages with), so that a map shows what the forward applies; the tests
        rebuild each forward from them. Called in eval mode without gradients by
        :func:`cvattn_mm.visualization.extract_maps`. Every module implements it.
        """
        raise NotImplementedError(f'{type(self).__name__} does not implement attention_maps')

    def sparsity_parameters(self) -> List[torch.nn.Parameter]:
        """The weights that the paper trains with an L1 sparsity penalty (NAM's BN weights),
        applied by ``cvattn_mm.engine.SparsityPenaltyHook`` when a config adds it; none by
        default."""
        return []

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}'
