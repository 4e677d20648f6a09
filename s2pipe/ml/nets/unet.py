"""Torch modules for land-cover mapping from image time series (FCN + ConvLSTM, after the paper
"ConvLSTM for spatio-temporal feature extraction in time-series images"): a U-Net that maps one date to
class logits, the paper's two-layer ConvLSTM head that merges the per-date probability maps of a sequence
(``TemporalHead``), a ConvLSTM head over any per-date channels (``SequenceHead``: the standardised inputs, with
or without the U-Net's probabilities), and the paper's joint loss (cross entropy + soft IoU, optionally
class-weighted).

Torch only: no file I/O, no xarray, no Dask. Images are (N, C, H, W) float tensors; sequences are
(T, N, C, H, W) with T dates in time order. Classes are mutually exclusive: every output is a logit
vector over K classes per pixel, turned into probabilities by a softmax.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet", "ConvLSTMCell", "ConvLSTM", "TemporalHead", "SequenceHead", "joint_loss", "unet_radius",
           "temporal_radius", "receptive_radius"]


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """A small U-Net: the per-date fully convolutional network (FCN).

    Down path, per level ``i`` (``0 … depth-1``, ``base·2**i`` channels): two 3×3 convolutions (padding 1)
    each followed by ReLU, then a 2×2 max-pool. Bottleneck: two 3×3 convolutions at ``base·2**depth``
    channels. Up path, per level: a 2×2 transposed convolution (stride 2) halving the channels, concat with
    the skip of that level, one 3×3 convolution + ReLU. A final 1×1 convolution gives ``n_classes`` logits.

    ``forward(x)``: (N, C, H, W) → (N, K, H, W) logits. H and W must be multiples of ``2**depth``
    (``multiple``); callers pad bottom/right and crop back. The network is shift-equivariant only for
    shifts that are multiples of ``2**depth`` (max-pool alignment).
    """

    def __init__(self, in_channels: int, n_classes: int, *, base: int = 16, depth: int = 3):
        super().__init__()
        if depth < 1 or base < 1 or in_channels < 1 or n_classes < 1:
            raise ValueError(f"UNet needs positive in_channels, n_classes, base and depth, got "
                             f"{in_channels}, {n_classes}, {base}, {depth}")
        self.depth = int(depth)
        self.base = int(base)
        chans = [base * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList()
        c = in_channels
        for ch in chans:
            self.down.append(_double_conv(c, ch))
            c = ch
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(c, base * 2 ** depth)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for ch in reversed(chans):
            self.up.append(nn.ConvTranspose2d(2 * ch, ch, 2, stride=2))
            self.dec.append(nn.Sequential(nn.Conv2d(2 * ch, ch, 3, padding=1), nn.ReLU(inplace=True)))
        self.head = nn.Conv2d(base, n_classes, 1)

    @property
    def multiple(self) -> int:
        """H and W of the input must be multiples of this (``2**depth``) pixels."""
        return 2 ** self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"UNet input H, W = {tuple(x.shape[-2:])} must be multiples of {m}; pad them")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)

    def receptive_radius(self) -> int:
        """Theoretical receptive-field radius (pixels) of one output pixel; see ``unet_radius``."""
        return unet_radius(self.depth)


class ConvLSTMCell(nn.Module):
    """One ConvLSTM cell (Shi et al. 2015, without peepholes): the four gates come from a single 3×3
    convolution (padding 1) over ``concat(x_t, h_{t-1})``.

    ``forward(x, (h, c))``: x (N, C_in, H, W), h and c (N, hidden, H, W) → (h, c) of the step.
    The forget-gate bias starts at 1 (remember by default).
    """

    def __init__(self, in_channels: int, hidden: int, *, kernel: int = 3):
        super().__init__()
        self.hidden = int(hidden)
        self.conv = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel, padding=kernel // 2)
        with torch.no_grad():
            self.conv.bias.zero_()
            self.conv.bias[hidden:2 * hidden].fill_(1.0)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        h, c = state
        i, f, g, o = torch.split(self.conv(torch.cat([x, h], dim=1)), self.hidden, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTM(nn.Module):
    """A stack of ConvLSTM layers, each reading the hidden sequence of the previous one.

    ``forward(seq)``: (T, N, C, H, W) → (T, N, hidden, H, W), the last layer's hidden state at every step
    (zero initial state).
    """

    def __init__(self, in_channels: int, hidden: int, *, layers: int = 2, kernel: int = 3):
        super().__init__()
        self.hidden = int(hidden)
        self.cells = nn.ModuleList(
            ConvLSTMCell(in_channels if i == 0 else hidden, hidden, kernel=kernel) for i in range(layers))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        T, N, _, H, W = seq.shape
        xs = list(seq.unbind(0))
        for cell in self.cells:
            h = seq.new_zeros((N, self.hidden, H, W))
            c = torch.zeros_like(h)
            out = []
            for x in xs:
                h, c = cell(x, (h, c))
                out.append(h)
            xs = out
        return torch.stack(xs)


class TemporalHead(nn.Module):
    """The paper's temporal part: two ConvLSTM layers over the per-date FCN probability maps, then a
    per-pixel (1×1) convolution of the last hidden state to class logits.

    The paper gives both layers ``l_c`` (= ``n_classes``) channels; ``hidden`` (default ``max(8, n_classes)``)
    gives them a little more room: with 2–3 classes, 8 channels learned the synthetic tasks markedly faster
    than 3 while costing ~1/4 of a U-Net forward pass per date on CPU.

    ``residual=True`` adds ``log`` of the sequence's mean probability map to the logits and starts the 1×1
    convolution at zero: the untrained head is the temporal average of the per-date FCN maps, and training
    learns corrections to it (the ConvLSTM then cannot do worse than averaging for want of training, which the
    plain head, ``residual=False`` as in the paper, did on small or hard data).

    ``forward(seq)``: (T, N, K, H, W) probabilities (or any K-channel maps) → (N, K, H, W) logits.
    Any H, W (padding 1 everywhere).
    """

    def __init__(self, n_classes: int, *, hidden: int | None = None, layers: int = 2, residual: bool = False):
        super().__init__()
        self.hidden = int(max(8, n_classes) if hidden is None else hidden)
        self.residual = bool(residual)
        self.lstm = ConvLSTM(n_classes, self.hidden, layers=layers)
        self.out = nn.Conv2d(self.hidden, n_classes, 1)
        if self.residual:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        logits = self.out(self.lstm(seq)[-1])
        if self.residual:
            logits = logits + torch.log(seq.mean(dim=0).clamp_min(1e-6))
        return logits

    def receptive_radius(self, seq_len: int) -> int:
        """Receptive radius (pixels) of the head over a sequence of ``seq_len`` dates."""
        return temporal_radius(seq_len, layers=len(self.lstm.cells))


class SequenceHead(nn.Module):
    """A ConvLSTM classifier over per-date maps of any ``in_channels`` channels: ``layers`` ConvLSTM layers of
    ``hidden`` channels with ``kernel``×``kernel`` convolutions, dropout on the last hidden state, then a 1×1
    convolution to ``n_classes`` logits.

    With ``kernel=1`` every pixel is its own sequence (a per-pixel LSTM over the dates, receptive radius 0): it
    can be trained on a "column" (T, 1, C, P, 1) of P sampled pixels and applied to whole images unchanged.

    ``forward(seq)``: (T, N, C, H, W) → (N, K, H, W) logits (zero initial state; any H, W).
    """

    def __init__(self, in_channels: int, n_classes: int, *, hidden: int = 16, layers: int = 2, kernel: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        if in_channels < 1 or n_classes < 1 or hidden < 1 or layers < 1 or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"SequenceHead needs positive in_channels, n_classes, hidden, layers and an odd kernel, "
                             f"got {in_channels}, {n_classes}, {hidden}, {layers}, {kernel}")
        self.hidden = int(hidden)
        self.kernel = int(kernel)
        self.lstm = ConvLSTM(in_channels, self.hidden, layers=layers, kernel=self.kernel)
        self.drop = nn.Dropout(float(dropout)) if dropout else nn.Identity()
        self.out = nn.Conv2d(self.hidden, n_classes, 1)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.lstm(seq)[-1]))

    def receptive_radius(self, seq_len: int) -> int:
        """Receptive radius (pixels) of the head over a sequence of ``seq_len`` dates."""
        return temporal_radius(seq_len, layers=len(self.lstm.cells), kernel=self.kernel)


def unet_radius(depth: int) -> int:
    """Receptive-field radius (pixels, an upper bound) of ``UNet(depth=depth)``.

    Along the deepest path, at level ``i`` (pixel step ``2**i``): two encoder 3×3 convolutions (``2·2**i``),
    the 2×2 pool (``2**i``), the 2×2 stride-2 transposed convolution (``2**i``, counted conservatively) and
    the decoder 3×3 convolution (``2**i``); the bottleneck adds ``2·2**depth``:
    ``5·(2**depth − 1) + 2·2**depth`` (51 px for depth 3).
    """
    return 5 * (2 ** depth - 1) + 2 * 2 ** depth


def temporal_radius(seq_len: int, *, layers: int = 2, kernel: int = 3) -> int:
    """Receptive-field radius (pixels) of ``layers`` ConvLSTM layers with ``kernel``×``kernel`` convolutions
    over ``seq_len`` dates: each step re-convolves ``h`` once per layer, so ``layers · seq_len · (kernel // 2)``
    pixels (``layers · seq_len`` for the paper's 3×3, 0 for 1×1)."""
    return layers * seq_len * (kernel // 2)


def receptive_radius(*, depth: int, seq_len: int = 0, layers: int = 2, kernel: int = 3, unet: bool = True) -> int:
    """Radius (pixels) of the whole model: U-Net plus ConvLSTM head (``seq_len=0``: the U-Net alone).

    ``unet=False``: a head that reads the inputs only (no U-Net output), so only the head's radius counts.
    An output pixel depends on no input pixel farther than this (per axis), so a halo of this many pixels
    around a tile gives exactly the whole-image result in the tile.
    """
    r = unet_radius(depth) if unet else 0
    return r + (temporal_radius(seq_len, layers=layers, kernel=kernel) if seq_len else 0)


def joint_loss(logits: torch.Tensor, target: torch.Tensor, *, alpha: float = 0.5,
               ignore_index: int = -1, eps: float = 1e-6, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's joint loss ``L = α·H − (1−α)·log J`` (Iglovikov et al. 2017).

    Parameters
    ----------
    logits
        (N, K, H, W) class logits.
    target
        (N, H, W) int64 class indices in ``[0, K)``; ``ignore_index`` marks unlabelled pixels.
    alpha
        weight of the cross entropy H (1: pure cross entropy, 0: pure IoU term).
    ignore_index
        label of pixels left out of both terms.
    eps
        smoothing of the soft IoU ratio.
    weight
        optional (K,) class weights of the cross entropy (``F.cross_entropy(weight=...)``: the weighted
        mean over labelled pixels); None: unweighted, as the paper.

    Returns
    -------
        Scalar loss. H is the (weighted) mean cross entropy over labelled pixels; J the soft IoU
        ``Σ p·y / (Σ p + Σ y − Σ p·y)`` of the softmax probabilities ``p`` and one-hot labels ``y`` over the
        labelled pixels, averaged over the classes present in ``target``. No labelled pixel: 0 (with a graph).
    """
    k = logits.shape[1]
    valid = target != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    lg = logits.permute(0, 2, 3, 1)[valid]  # (P, K)
    y = target[valid]
    ce = F.cross_entropy(lg, y, weight=weight)
    if alpha >= 1:
        return ce
    p = torch.softmax(lg, dim=1)
    onehot = F.one_hot(y, k).to(p.dtype)
    inter = (p * onehot).sum(0)
    union = p.sum(0) + onehot.sum(0) - inter
    present = onehot.sum(0) > 0
    jac = ((inter + eps) / (union + eps))[present].mean()
    return alpha * ce - (1 - alpha) * torch.log(jac)
