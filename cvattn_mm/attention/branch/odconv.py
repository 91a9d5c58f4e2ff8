"""Omni-dimensional dynamic convolution (ODConv)."""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import register_model
from ..checks import check_int, check_positive_float, reduced_channels
from ..conv_replacement import ConvReplacement
from ..map_norm import build_map_norm
from ..maps import AttentionMap, channel_map, weights_map
from ..norm import norm_any_batch
from ..pointwise import PointwiseConv2d

#: The four gates of :meth:`ODConv.gates`: input channels (N, C_in, 1, 1), output channels
#: (N, C_out, 1, 1), kernel positions (N, 1, 1, k, k) and kernels (N, n); ``None`` where
#: the gate is skipped (output channels of a depthwise conv, positions of a 1x1 kernel, the
#: kernels when n = 1).
Gates = Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor],
              Optional[torch.Tensor]]


@register_model()
class ODConv(ConvReplacement):
    """Omni-dimensional dynamic convolution (Li et al., ICLR 2022, arXiv:2209.07947).

    A conv whose kernel is made per sample from four attentions computed on the pooled input:
    ``h = ReLU(BN(W_r GAP(x)))`` (``W_r``: a 1x1 conv ``C_in -> a`` without bias,
    ``a = max(C_in // reduction, min_channels)``), and four 1x1 heads with biases on h,
    their logits divided by a temperature t:
    ``alpha_in = sigmoid(.)`` (C_in), ``alpha_out = sigmoid(.)`` (C_out; skipped for a
    depthwise conv, C_in = C_out = groups), ``alpha_s = sigmoid(.)`` (k x k, one mask shared by
    every filter; skipped for k = 1) and ``alpha_w = softmax(.)`` over the n kernels (skipped
    for n = 1). Per sample,
    ``W~ = sum_i alpha_w,i (alpha_s * W_i)`` and
    ``y = alpha_out * conv(x * alpha_in, W~)`` with the replaced conv's stride, padding,
    dilation and groups, no bias. The per-sample convs are one grouped conv over the batch
    (groups ``groups * N``), as in the official code; with k = 1 and n = 1 the kernel is the
    same for every sample and a plain conv runs.
    Parameters: ``n C_out C_in k^2 / g + C_in a + 2a`` (``W_r``, BN) ``+ (a C_in + C_in) +
    (a C_out + C_out) + (a k^2 + k^2) + (a n + n)`` (the heads present): 2,372,349 for a
    3x3 256 -> 256 conv with n = 4, 602,809 with n = 1.
    Paper position: in place of every conv of the residual branch (conv1, conv2, conv3 of a
    Bottleneck; conv1, conv2 of a BasicBlock), not the stem or the projection shortcut.

    ``kernel_num`` defaults to 4, the paper's "ODConv (4x)"; the official ``od_resnet.py``
    builds its convs with ``kernel_num=1`` unless told otherwise ("ODConv (1x)",
    ``kernel_num=1`` here).

    Temperature: the official training anneals t linearly from 30 to 1 over the first 10
    epochs, per iteration, then keeps 1. The module holds t as an attribute (``temperature``,
    a float, not saved in the state dict, as officially) that starts at its value after the
    annealing, 1, so that a trained model evaluates as the official one (``jit.trace`` and
    ONNX export take its current value as a constant; ``torch.compile`` recompiles once
    when it first changes, then treats it as a dynamic float). To train as the paper, add
    :class:`cvattn_mm.engine.ODConvTemperatureHook` to ``custom_hooks``; it sets t with
    :meth:`update_temperature` before every iteration.

    Initialisation: the official one (Kaiming normal, fan-out, on every conv and on each of
    the n kernels; zero head biases; BN weight 1, bias 0). :meth:`init_from_conv` makes the
    module compute exactly a given conv: zero heads (every sigmoid gate is 0.5, the kernel
    softmax uniform) and every ``W_i = 2^m W``, m the number of sigmoid gates present (8 W
    for a 3x3 conv, 4 W for a 1x1 or a depthwise 3x3 one, 2 W for a depthwise 1x1 one).

    State dict: the official ``ODConv2d`` keys (``attention.fc``, ``attention.bn``,
    ``attention.channel_fc``, ``attention.filter_fc``, ``attention.spatial_fc``,
    ``attention.kernel_fc``), except the kernel bank: ``weight_bank`` (n C_out, C_in / g, k,
    k), the official ``weight`` (n, C_out, C_in / g, k, k) flattened, since a 5-D parameter
    breaks ``model.to(memory_format=torch.channels_last)``. An official checkpoint loads as
    it is (its 5-D ``weight`` is moved to ``weight_bank`` when loaded). The bank is not
    called ``weight``, so that a plain model's conv ``weight`` is never loaded into it by
    name: with n = 1 it has the same shape, and unscaled it would give 1/8 of the conv's
    output; a ``replace=`` insertion with ``init_from_conv=True`` maps it instead.

    Deviations:

    * the width is ``max(C_in // reduction, min_channels)`` with an integer divisor
      (``reduction=16``); the official ``max(int(C_in * 0.0625), 16)`` is the same number
      for every C_in.
    * training on a batch of one sample: batch statistics of the pooled vector are
      undefined (``nn.BatchNorm2d`` raises, as in the official code); its BN then uses its
      running statistics (without updating them). Other norms are used unchanged.
    * the kernel mixture is one matrix product ``alpha_w (N, n) @ W (n, C_out C_in k^2 / g)``
      followed by the position gate, where the official code multiplies the (N, n, C_out,
      C_in / g, k, k) product and sums it: the same value up to rounding (measured
      difference to the official code in float64: 2e-14 at C = 256).
    * the temperature is set by a hook (above) instead of the training script, and starts
      at 1 (the official module starts at 1 too; the official script sets 30 before
      training).

    Args:
        in_channels (int): Input channels C_in of the replaced conv.
        out_channels (int | None): Output channels C_out (``None``: ``in_channels``).
        kernel_size (int): Kernel size k (any; 1 skips the position gate).
        stride (int): Stride of the replaced conv.
        padding (int | None): Zero padding of the replaced conv (``None``: size-keeping,
            ``dilation * (k - 1) // 2``).
        dilation (int): Dilation of the replaced conv.
        groups (int): Groups g of the replaced conv (``C_in = C_out = g``: depthwise, no
            output-channel gate, as in the official code).
        bias (bool): Must be False (the paper's conv has no bias).
        kernel_num (int): Number n of kernels (4: the paper's 4x; 1: the official module's
            default).
        reduction (int): Divisor of the attention width (16, the official 0.0625).
        min_channels (int): Floor of the attention width (16).
        temperature (float): Initial temperature t (1: after the annealing).
        norm_cfg (dict): Norm of the reduced vector (official: BN).
        init_cfg (dict, optional): mmengine initialisation config.

    Shape:
        x: (N, C_in, H, W) -> (N, C_out, H_out, W_out), the replaced conv's output size.
    """

    family = 'branch'
    paper = ('Li et al., Omni-Dimensional Dynamic Convolution, ICLR 2022, '
             'arXiv:2209.07947')
    paper_position = 'replaces_block_convs'
    _abbr_ = 'odconv'
    kernel_sizes = None
    takes_groups = True
    takes_dilation = True
    any_padding = True
    conv_init = ('zeroes the four attention heads (every sigmoid gate 0.5, uniform kernel '
                 'weights) and sets every kernel to the conv\'s weight times 2 per sigmoid '
                 'gate present (8 for a 3x3 conv, 4 for a 1x1 or depthwise one)')

    def __init__(self,
                 in_channels: int,
                 out_channels: Optional[int] = None,
                 kernel_size: int = 3,
                 stride: int = 1,
                 padding: Optional[int] = None,
                 dilation: int = 1,
                 groups: int = 1,
                 bias: bool = False,
                 kernel_num: int = 4,
                 reduction: int = 16,
                 min_channels: int = 16,
                 temperature: float = 1.0,
                 norm_cfg: dict = dict(type='BN'),
                 init_cfg=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, init_cfg=init_cfg)
        name = type(self).__name__
        self.kernel_num = check_int(name, 'kernel_num', kernel_num, 1)
        self.hidden = reduced_channels(name, in_channels, reduction, min_channels)
        self.reduction = reduction
        self.depthwise = in_channels == self.groups == self.out_channels
        k = self.kernel_size
        attention = nn.Module()
        attention.fc = PointwiseConv2d(in_channels, self.hidden, bias=False)
        attention.bn = build_map_norm(norm_cfg, self.hidden)
        attention.relu = nn.ReLU(inplace=True)
        attention.channel_fc = PointwiseConv2d(self.hidden, in_channels)
        if not self.depthwise:
            attention.filter_fc = PointwiseConv2d(self.hidden, self.out_channels)
        if k > 1:
            attention.spatial_fc = PointwiseConv2d(self.hidden, k * k)
        if self.kernel_num > 1:
            attention.kernel_fc = PointwiseConv2d(self.hidden, self.kernel_num)
        self.attention = attention
        self.weight_bank = nn.Parameter(
            torch.empty(self.kernel_num * self.out_channels, in_channels // self.groups, k, k))
        self.temperature = 1.0
        self.update_temperature(temperature)
        self.init_special()

    def init_special(self) -> None:
        """The official initialisation: Kaiming normal (fan-out, ReLU) on the attention convs
        and on each kernel, zero head biases (the BN keeps weight 1, bias 0)."""
        for layer in self.attention.children():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode='fan_out', nonlinearity='relu')
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        bank = torch.empty(self.kernel_num, self.out_channels, *self.weight_bank.shape[1:],
                           dtype=self.weight_bank.dtype, device=self.weight_bank.device)
        for kernel in bank:
            nn.init.kaiming_normal_(kernel, mode='fan_out', nonlinearity='relu')
        with torch.no_grad():
            self.weight_bank.copy_(bank.flatten(0, 1))

    def update_temperature(self, temperature: float) -> None:
        """Set the temperature t that divides the attention logits (the official
        ``update_temperature``)."""
        self.temperature = check_positive_float(type(self).__name__, 'temperature',
                                                temperature)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        official = state_dict.get(prefix + 'weight')
        if official is not None and official.dim() == 5:  # the official (n, C_out, ...) bank
            state_dict[prefix + 'weight_bank'] = state_dict.pop(prefix + 'weight').flatten(0, 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.dynamic_conv(x, self.gates(x))

    def gates(self, x: torch.Tensor) -> Gates:
        """The four attentions of ``x`` (see :data:`Gates`), in ``x``'s dtype (computed in
        ``promote_types(dtype, float32)``)."""
        att = self.attention
        h = att.relu(norm_any_batch(att.bn, att.fc(x.mean((2, 3), keepdim=True))))
        n, k = x.shape[0], self.kernel_size
        dtype = torch.promote_types(x.dtype, torch.float32)

        def logits(head):
            return head(h).flatten(1).to(dtype) / self.temperature

        def sigmoid(head):
            return torch.sigmoid(logits(head)).to(x.dtype)[:, :, None, None]

        alpha_in = sigmoid(att.channel_fc)
        alpha_out = None if self.depthwise else sigmoid(att.filter_fc)
        alpha_s = None if k == 1 else sigmoid(att.spatial_fc).view(n, 1, 1, k, k)
        alpha_w = None
        if self.kernel_num > 1:
            alpha_w = logits(att.kernel_fc).softmax(1).to(x.dtype)
        return alpha_in, alpha_out, alpha_s, alpha_w

    def sample_kernels(self, gates: Gates) -> torch.Tensor:
        """The per-sample kernels ``W~`` (N, C_out, C_in / g, k, k) of the ``gates``
        (:meth:`gates`; the kernel is the same for every sample when both the position gate
        and the kernel mixture are skipped)."""
        alpha_in, _, alpha_s, alpha_w = gates
        n = alpha_in.shape[0]
        shape = (self.out_channels, *self.weight_bank.shape[1:])
        bank = self.weight_bank.reshape(self.kernel_num, -1)  # a copy for a channels_last bank
        if alpha_w is None:
            kernels = bank.expand(n, -1)
        else:
            kernels = torch.matmul(alpha_w.to(bank.dtype), bank)
        kernels = kernels.view(n, *shape)
        if alpha_s is not None:
            kernels = kernels * alpha_s
        return kernels

    def dynamic_conv(self, x: torch.Tensor, gates: Gates) -> torch.Tensor:
        """``y = alpha_out * conv(x * alpha_in, W~)`` for the ``gates`` of :meth:`gates`."""
        alpha_in, alpha_out, alpha_s, alpha_w = gates
        x = x * alpha_in
        options = (self.stride, self.padding, self.dilation)
        if alpha_s is None and alpha_w is None:  # 1x1 and n = 1: one kernel for all samples
            y = F.conv2d(x, self.weight_bank, None, *options, self.groups)
        else:
            n, c, h, w = x.shape
            kernels = self.sample_kernels(gates).flatten(0, 1)
            y = F.conv2d(x.reshape(1, n * c, h, w), kernels, None, *options, self.groups * n)
            y = y.view(n, self.out_channels, *y.shape[2:])
        return y if alpha_out is None else y * alpha_out

    def init_from_conv(self, conv: nn.Conv2d, norm: Optional[nn.Module] = None) -> bool:
        """Compute exactly ``conv`` (the module does not absorb ``norm``): zero the four
        heads and set every kernel to ``2^m`` times the conv's weight, m the number of
        sigmoid gates present (3 for a dense k > 1 conv). Returns True."""
        name = type(self).__name__
        mine = (self.in_channels, self.out_channels, (self.kernel_size, ) * 2,
                (self.stride, ) * 2, (self.padding, ) * 2, (self.dilation, ) * 2, self.groups)
        theirs = (conv.in_channels, conv.out_channels, tuple(conv.kernel_size),
                  tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), conv.groups)
        if mine != theirs or conv.bias is not None:
            raise ValueError(f'{name}.init_from_conv needs a bias-free conv with the module\'s '
                             f'geometry (in, out, kernel, stride, padding, dilation, groups) '
                             f'= {mine}, got {theirs}' +
                             (' with a bias' if conv.bias is not None else ''))
        gates = 1 + (not self.depthwise) + (self.kernel_size > 1)
        with torch.no_grad():
            for head in ('channel_fc', 'filter_fc', 'spatial_fc', 'kernel_fc'):
                layer = getattr(self.attention, head, None)
                if layer is not None:
                    layer.weight.zero_()
                    layer.bias.zero_()
            scaled = conv.weight.to(self.weight_bank) * 2 ** gates
            self.weight_bank.copy_(scaled.repeat(self.kernel_num, 1, 1, 1))
        return True

    def attention_maps(self, x: torch.Tensor) -> Dict[str, AttentionMap]:
        """``input_channel``: the gate (N, C_in) on the input channels; ``output_channel``
        (unless depthwise): the gate (N, C_out) on the output channels; ``kernel_weights``
        (n > 1): the softmax (N, 1, n) over the kernels. The k x k position gate has no map
        kind (it is not on the feature grid): read it from :meth:`gates`."""
        alpha_in, alpha_out, _, alpha_w = self.gates(x)
        maps = {'input_channel': channel_map(alpha_in, 'input-channel gate')}
        if alpha_out is not None:
            maps['output_channel'] = channel_map(alpha_out, 'output-channel gate')
        if alpha_w is not None:
            maps['kernel_weights'] = weights_map(alpha_w, (1, self.kernel_num),
                                                 'weights of the kernels')
        return maps

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, kernel_num={self.kernel_num}, hidden={self.hidden}, '
                f'temperature={self.temperature:g}')
