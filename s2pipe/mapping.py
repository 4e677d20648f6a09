"""Land-cover mapping from a Sentinel-2 image time series: a U-Net per date (the single-date map), and a
ConvLSTM over the date sequence (after "ConvLSTM for spatio-temporal feature extraction in time-series
images"); train, predict whole images or Dask cubes chunk by chunk, save.

```python
mapper = train_mapper(images, labels, seq_len=5)   # images (time, band, y, x); labels (y, x), -1 = unlabelled
proba = mapper.predict(images)                     # (class, y, x) probabilities of the last 5 dates
single = mapper.predict(images, temporal=False)    # the U-Net on the last date alone (the paper's baseline)
mapper.save("m.pt"); mapper = load_mapper("m.pt")  # tensors + JSON config, loaded with weights_only=True
```

**Training**: first the U-Net on single dates (random date, random ``patch``×``patch`` window around a
labelled pixel, random flips/90° rotations; ``joint_loss``: cross entropy + soft IoU, unlabelled pixels
ignored; Adam with a step-wise learning-rate decay, ``lr_steps``/``lr_factor``, the paper divides by 10
twice). An epoch is ``EPOCH_PATCHES`` random patches, so its cost does not grow with the image. Then the
two-layer ConvLSTM head on ``seq_len`` consecutive dates (random window in time), by ``architecture``:

* ``"inputs"`` (default): the head reads the standardised input sequence itself, with 1×1 kernels
  (``head_kernel``: a per-pixel LSTM over the dates), trained on ``HEAD_PIXELS`` labelled pixels per step
  (``HEAD_STEPS`` steps an epoch) with a class-weighted cross entropy (``class_weight="sqrt"``) and a one-cycle
  learning rate. On the real data of ``benchmarks/eval_mapping_real.py`` (12 dates, 3 spatial folds each of
  Slovenia LULC and Romania forest, 3 seeds) the paper's head, which sees the dates only through the U-Net's
  K-channel probability maps, stayed 0.05–0.20 macro F1 below a per-pixel random forest: one date hardly
  separates the classes, and the frozen U-Net's maps are over-confident on the very pixels the head is trained
  on (the U-Net was trained on them), so the head learns to trust them. A per-pixel head on the frozen maps
  plus the inputs scored below one on the inputs alone on every fold tried (by 0.01–0.16 macro F1).
* ``"inputs+probabilities"``: the same head on the inputs and the frozen U-Net's probability maps.
* ``"paper"``: the paper's head (``TemporalHead``) on the frozen U-Net's probability maps, ``joint_loss``,
  patches as the U-Net; ``residual_head`` as before. Files written before ``architecture`` existed load as this.

**Inputs** are standardised per band (mean/std over the training images, NaN ignored), and NaN becomes 0
(the band mean) afterwards, so clouds masked as NaN are allowed.

**Prediction** of a NumPy-backed cube is one whole-image pass (padded bottom/right to a multiple of
``2**depth`` and cropped back). A Dask-backed cube is predicted lazily, chunk by chunk
(``dask.array.map_overlap``) with a halo of the model's receptive radius, and chunk sizes that are
multiples of ``2**depth`` (max-pool alignment): the result equals the whole-image pass up to float rounding.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import time as _time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, get_args

import numpy as np
import torch
import xarray as xr

from s2pipe.errors import InputError
from s2pipe.forecast import resolve_device
from s2pipe.ml.inputs import (
    check_images,
    check_labels,
    class_names,
    positive_int,
    spatial_coords,
    training_bands,
)
from s2pipe.ml.nets.unet import (
    SequenceHead,
    TemporalHead,
    UNet,
    joint_loss,
    receptive_radius,
)
from s2pipe.ml.weights import read_payload, save_payload
from s2pipe.runtime.placement import (
    current_placement,
    inference_tasks,
    on_device,
    torch_threads,
)

__all__ = ["MapperConfig", "Mapper", "MapperKind", "MAPPER_KINDS", "Architecture", "ARCHITECTURES", "ClassWeight",
           "train_mapper", "load_mapper", "default_epochs", "default_patch", "EPOCH_PATCHES", "HEAD_PIXELS",
           "HEAD_STEPS"]

Architecture = Literal["inputs", "inputs+probabilities", "paper"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
ClassWeight = Literal["sqrt", "balanced", "none"]
_CLASS_WEIGHTS: tuple[str, ...] = get_args(ClassWeight)
HEAD_PIXELS = 512
"""Labelled pixels per optimizer step of a 1×1-kernel head (``architecture`` "inputs"/"inputs+probabilities")."""
HEAD_STEPS = 30
"""Optimizer steps in one epoch of a 1×1-kernel head (20 default epochs: 600 steps)."""

_FORMAT = "s2pipe.mapper/1"
EPOCH_PATCHES = 32
"""Random patches (training samples) in one epoch, for both stages."""
_MIN_EPOCHS, _MAX_EPOCHS, _PASSES = 40, 60, 2
"""Default U-Net epochs: enough for ``_PASSES`` passes over the image's pixels, between 40 and 60; the head
gets half as many (at least 20)."""
_MIN_PATCH = 64


def default_patch(ny: int, nx: int, patch: int = 512, *, multiple: int = 8) -> int:
    """Training patch side (px) for an ``ny``×``nx`` image: ``patch`` (the paper's 512) when the image is at
    least 3 patches wide, else a third of its shorter side (at least 64 px, or the whole side of smaller images),
    in multiples of ``multiple``. Small patches give more, more varied optimizer steps for the same cost: on the
    194×226 demo region 64 px patches learned the 1–2 px roads where patches as large as the image did not."""
    side = min(ny, nx)
    floor = lambda v: max(multiple, int(v) // multiple * multiple)  # noqa: E731
    return int(min(patch, max(min(_MIN_PATCH, floor(side)), floor(side / 3))))


def default_epochs(ny: int, nx: int, patch: int) -> tuple[int, int]:
    """(U-Net, ConvLSTM-head) epochs used when ``epochs`` is None, for an ``ny``×``nx`` image and ``patch``.

    At least 40 U-Net epochs (1280 patches: 640 optimizer steps of 2 patches; the 194×226 demo region with
    64 px patches trains in ~40 s on 2 CPU cores; a full Sentinel-2 tile with 512 px patches sees each pixel
    ~2.4 times), more for larger regions so that the U-Net sees every pixel about twice, at most 60. The head
    gets half as many epochs (at least 20).
    """
    fcn = int(min(_MAX_EPOCHS, max(_MIN_EPOCHS, math.ceil(_PASSES * ny * nx / (EPOCH_PATCHES * patch * patch)))))
    return fcn, max(20, fcn // 2)


# ------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class MapperConfig:
    """Everything needed to rebuild a trained mapper (stored as JSON beside the tensors).

    Fields:
        bands: band coordinate of the training images (JSON-able values), in input-channel order.
        classes: class ids (sorted, ≥ 0) of the output channels.
        seq_len: dates the ConvLSTM head reads (the last ``seq_len`` dates at prediction).
        base: U-Net channels at the first level (doubling per level).
        depth: U-Net levels (pooling steps); image sizes are handled in multiples of ``2**depth`` pixels.
        hidden: channels of each ConvLSTM layer.
        alpha: joint-loss weight of the cross entropy (1 − alpha on −log soft IoU).
        mean: per-band mean of the training images (data units), subtracted before the network.
        std: per-band standard deviation of the training images (data units), divided by.
        patch: training patch side (pixels, a multiple of ``2**depth``).
        batch_size: patches per optimizer step.
        fcn_epochs: U-Net epochs (of ``epoch_patches`` patches).
        temporal_epochs: ConvLSTM-head epochs (of ``epoch_patches`` patches).
        epoch_patches: patches per epoch.
        lr: initial Adam learning rate of the U-Net.
        temporal_lr: initial Adam learning rate of the ConvLSTM head.
        lr_steps: fractions of each stage's optimizer steps where the learning rate is multiplied by ``lr_factor``.
        lr_factor: learning-rate factor at each step of ``lr_steps``.
        augment: random flips and 90° rotations of the training patches.
        seed: seed of initialisation, patch sampling and augmentation.
        names: {class id (str): name} from the training labels' ``classes`` attribute (e.g. from
            ``rasterize_labels``); {} when unknown. Carried into the predictions' ``classes`` attribute.
        residual_head: the head corrects the sequence's mean FCN map (``TemporalHead(residual=True)``);
            False (files written before it existed): the paper's plain head. "paper" architecture only.
        architecture: what the ConvLSTM head reads: "inputs" (the standardised inputs), "inputs+probabilities"
            (those and the U-Net's per-date probabilities), "paper" (the U-Net's probabilities, ``TemporalHead``;
            files written before this field existed).
        head_kernel: ConvLSTM kernel side of a ``SequenceHead`` (1: per pixel); 3 for "paper".
        class_weight: class weights of the head's cross entropy: "sqrt" (√(n / (K·n_k))), "balanced"
            (n / (K·n_k)) or "none".
        class_weights: the resulting weights, in ``classes`` order ([] for "none").
        head_dropout: dropout on the head's last hidden state (``SequenceHead``).
    """

    bands: list
    classes: list
    seq_len: int
    base: int
    depth: int
    hidden: int
    alpha: float
    mean: list
    std: list
    patch: int
    batch_size: int
    fcn_epochs: int
    temporal_epochs: int
    epoch_patches: int
    lr: float
    temporal_lr: float
    lr_steps: list
    lr_factor: float
    augment: bool
    seed: int
    names: dict = dataclasses.field(default_factory=dict)
    residual_head: bool = False
    architecture: str = "paper"
    head_kernel: int = 3
    class_weight: str = "none"
    class_weights: list = dataclasses.field(default_factory=list)
    head_dropout: float = 0.0

    @property
    def multiple(self) -> int:
        """Spatial alignment of the U-Net (pixels): ``2**depth``."""
        return 2 ** self.depth

    @property
    def head_reads_unet(self) -> bool:
        """Whether the ConvLSTM head reads the U-Net's outputs (False: only the standardised inputs)."""
        return self.architecture != "inputs"

    def halo(self, *, temporal: bool = True) -> int:
        """Default prediction halo (pixels): the receptive radius rounded up to a multiple of ``2**depth``
        (0 for the "inputs" head with 1×1 kernels: each pixel's sequence is its own)."""
        if temporal:
            r = receptive_radius(depth=self.depth, seq_len=self.seq_len, kernel=self.head_kernel,
                                 unet=self.head_reads_unet)
        else:
            r = receptive_radius(depth=self.depth)
        return int(math.ceil(r / self.multiple) * self.multiple)


# ------------------------------------------------------------------------------------------ mapper
class Mapper:
    """A trained land-cover mapper: U-Net, ConvLSTM head and per-band standardisation.

    Attributes
    ----------
    config
        the ``MapperConfig``.
    fcn
        the ``UNet`` on ``device``.
    head
        the ``TemporalHead`` on ``device``.
    device
        torch device it runs on.
    classes
        class ids of the output channels (``config.classes`` as an array).
    losses
        ``{"fcn": [...], "temporal": [...]}`` mean training loss per epoch; empty after loading.
    train_seconds
        wall time of training (s), 0 after loading.
    """

    def __init__(self, config: MapperConfig, fcn: UNet, head: TemporalHead, *, device: torch.device,
                 losses: dict | None = None, train_seconds: float = 0.0):
        self.config = config
        self.device = device
        self.fcn = fcn.to(device).eval()
        self.head = head.to(device).eval()
        self.classes = np.asarray(config.classes, dtype=np.int64)
        self.losses = {"fcn": [], "temporal": []} if losses is None else {k: list(v) for k, v in losses.items()}
        self.train_seconds = float(train_seconds)
        self._mean = np.asarray(config.mean, dtype=np.float32)
        self._std = np.asarray(config.std, dtype=np.float32)

    # -------------------------------------------------------------- core
    def _standardize(self, v: np.ndarray) -> np.ndarray:
        """(T, B, y, x) data units → standardised float32, NaN → 0."""
        z = (np.asarray(v, dtype=np.float32) - self._mean[None, :, None, None]) / self._std[None, :, None, None]
        return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)

    def _probabilities(self, z: torch.Tensor, *, temporal: bool, batch_size: int) -> torch.Tensor:
        """Standardised (T, B, H, W) on the device, H and W multiples of ``2**depth`` → (K, H, W) probabilities.

        ``temporal``: the ConvLSTM head on the sequence of what it reads (``config.architecture``: the inputs,
        and/or the U-Net's softmax maps of every date, ``batch_size`` dates per U-Net pass), softmax; otherwise
        the U-Net on the last date.
        """
        with torch.inference_mode():
            if not temporal:
                return torch.softmax(self.fcn(z[-1:]), dim=1)[0]
            return torch.softmax(self.head(_head_sequence(self, z, batch_size=batch_size)), dim=1)[0]

    def _predict_array(self, v: np.ndarray, *, temporal: bool, batch_size: int) -> np.ndarray:
        """(T, B, y, x) in data units → (K, y, x) float32 probabilities (padding and cropping included)."""
        _, _, ny, nx = v.shape
        m = self.config.multiple
        z = self._standardize(v)
        py, px = (-ny) % m, (-nx) % m
        if py or px:
            z = np.pad(z, ((0, 0), (0, 0), (0, py), (0, px)))
        zt = torch.from_numpy(np.ascontiguousarray(z)).to(self.device)
        p = self._probabilities(zt, temporal=temporal, batch_size=batch_size)
        return p[:, :ny, :nx].float().cpu().numpy()

    # -------------------------------------------------------------- predict
    def predict(self, images: xr.DataArray, *, temporal: bool = True, batch_size: int = 8, device=None,
                halo: int | None = None, threads: int | None = None) -> xr.DataArray:
        """Class probabilities of the most recent dates of ``images``.

        Parameters
        ----------
        images
            (time, band, y, x) on any grid, with the training bands (selected by the band coordinate
            when it has one) and at least ``seq_len`` dates (1 for ``temporal=False``); NumPy- or
            Dask-backed; NaN allowed (treated as the band mean).
        temporal
            True: the last ``seq_len`` dates through the U-Net, then the ConvLSTM head;
            False: the U-Net on the last date alone (the paper's single-image baseline).
        batch_size
            dates per U-Net pass.
        device
            torch device; None keeps the mapper's, except for Dask input inside a GPU
            ``s2pipe.runtime.placement.inference_placement`` block: there each chunk task picks its worker's device
            (CUDA when available there, else CPU).
        halo
            Dask input only: overlap (pixels, a multiple of ``2**depth``) read around each chunk;
            None: ``config.halo(temporal=...)``, the receptive radius, which makes chunked and whole-image
            predictions equal. Smaller halos are faster but approximate near chunk borders.
        threads
            Dask input only: torch CPU threads per chunk task. None: on a distributed worker, its share
            of the host's cores (``placement.task_threads``: the cores divided by the Dask threads of all
            the workers on that host); otherwise torch's setting.

        Returns
        -------
            "probability" (class, y, x) float32, summing to 1 over ``class`` (coordinate: the class ids), with the
            x/y (and spatial_ref) coordinates and attrs (crs, transform, …) of ``images``; lazy (Dask) when
            ``images`` is Dask-backed, with its y/x chunks (aligned to multiples of ``2**depth``). Its chunk tasks
            (keys ``mapper-predict-…``) ask for a ``GPU`` worker resource inside a GPU ``inference_placement``
            block (``s2pipe.runtime.placement``).
        """
        cfg = self.config
        n = cfg.seq_len if temporal else 1
        images = check_images(images, min_dates=n)
        batch_size = positive_int("batch_size", batch_size)
        images = training_bands(images, cfg.bands)
        placement = current_placement()
        per_worker = device is None and placement is not None and placement.gpu
        if device is not None:
            dev = resolve_device(device)
            if dev != self.device:
                self.fcn.to(dev)
                self.head.to(dev)
                self.device = dev
        recent = images.isel(time=slice(-n, None))
        K = len(cfg.classes)
        m = cfg.multiple
        if recent.chunks is None:
            data = self._predict_array(np.asarray(recent.values), temporal=temporal, batch_size=batch_size)
        else:
            h = cfg.halo(temporal=temporal) if halo is None else positive_int("halo", halo, lo=0)
            if h % m:
                raise InputError(f"halo={halo!r} must be a multiple of 2**depth = {m} pixels (max-pool alignment); "
                                 f"pass e.g. halo={int(math.ceil(h / m) * m)}")
            if threads is not None:
                threads = positive_int("threads", threads)
            data = self._predict_dask(recent.data, temporal=temporal, batch_size=batch_size, halo=h, n_classes=K,
                                      threads=threads, per_worker_device=per_worker)
        coords = {"class": self.classes, **spatial_coords(recent)}
        attrs = {**images.attrs, "mapping_mode": "temporal" if temporal else "single-date",
                 "mapping_dates": int(n), "mapping_last_date": str(np.asarray(recent["time"].values)[-1])[:10]
                 if "time" in recent.coords else None}
        attrs = {k: v for k, v in attrs.items() if v is not None}
        if cfg.names:
            attrs["classes"] = dict(cfg.names)
        return xr.DataArray(data, dims=("class", "y", "x"), coords=coords, name="probability", attrs=attrs)

    def _predict_dask(self, arr, *, temporal: bool, batch_size: int, halo: int, n_classes: int,
                      threads: int | None, per_worker_device: bool = False):
        """Lazy (1, K, y, x) probabilities: the halo exchange (``overlap``) and one inference task per chunk
        (``map_blocks``, keys ``mapper-predict-…``), the latter built in ``inference_tasks()`` (GPU placement).
        ``per_worker_device``: each task runs on its worker's ``resolve_device(None)`` (a per-process copy)."""
        import dask.array as dsa
        from dask.array.overlap import overlap

        arr = arr.rechunk({0: -1, 1: -1})
        m = self.config.multiple
        arr = arr.rechunk({2: _halo_chunks(arr.chunks[2], m, halo), 3: _halo_chunks(arr.chunks[3], m, halo)})

        def block(b, block_info=None):
            info = block_info[0]
            (iy, ix), (ny_blocks, nx_blocks) = info["chunk-location"][2:], info["num-chunks"][2:]
            top, left = (halo if iy > 0 else 0), (halo if ix > 0 else 0)
            bottom, right = (halo if iy < ny_blocks - 1 else 0), (halo if ix < nx_blocks - 1 else 0)
            mapper = on_device(self, resolve_device(None), _mapper_on) if per_worker_device else self
            with torch_threads(threads):
                p = mapper._predict_array(np.asarray(b), temporal=temporal, batch_size=batch_size)
            p = p[:, top:p.shape[1] - bottom, left:p.shape[2] - right]
            return p[None]

        depth = {0: 0, 1: 0, 2: halo if len(arr.chunks[2]) > 1 else 0, 3: halo if len(arr.chunks[3]) > 1 else 0}
        # = dask.array.map_overlap(..., trim=False), split so that only the inference tasks get annotated
        out_chunks = ((1,), (n_classes,), arr.chunks[2], arr.chunks[3])
        if any(depth.values()):
            arr = overlap(arr, depth=depth, boundary="none", allow_rechunk=False)
        with inference_tasks():
            out = dsa.map_blocks(block, arr, dtype=np.float32, chunks=out_chunks, token="mapper-predict",
                                 meta=np.empty((0, 0, 0, 0), dtype=np.float32))
        return out[0]

    # -------------------------------------------------------------- persistence
    def save(self, path) -> Path:
        """Write one ``.pt`` file: a dict of tensors and the JSON config (no pickled code)."""
        path = Path(path)
        payload = {
            "format": _FORMAT,
            "config": json.dumps(dataclasses.asdict(self.config)),
            "fcn": {k: v.detach().cpu() for k, v in self.fcn.state_dict().items()},
            "head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
        }
        return save_payload(payload, path)  # atomic: a temporary file beside it, then renamed

    def __repr__(self) -> str:
        c = self.config
        return (f"Mapper(classes={c.classes}, bands={len(c.bands)}, seq_len={c.seq_len}, architecture="
                f"{c.architecture!r}, base={c.base}, depth={c.depth}, hidden={c.hidden}, "
                f"epochs={c.fcn_epochs}+{c.temporal_epochs})")


def _mapper_on(mapper: Mapper, device: torch.device) -> Mapper:
    """A copy of ``mapper`` on ``device`` (the original is left where it is)."""
    fcn, head = _build(mapper.config)
    fcn.load_state_dict(mapper.fcn.state_dict())
    head.load_state_dict(mapper.head.state_dict())
    return Mapper(mapper.config, fcn, head, device=device)


def _halo_chunks(chunks: tuple[int, ...], m: int, halo: int) -> tuple[int, ...]:
    """Chunk sizes along y or x that are multiples of ``m`` (but the last) and at least ``halo`` (all)."""
    size = int(sum(chunks))
    ok = all(c % m == 0 for c in chunks[:-1]) and (len(chunks) == 1 or min(chunks) >= halo)
    if ok:
        return tuple(chunks)
    c = max(m, (int(chunks[0]) // m) * m, int(math.ceil(halo / m)) * m)
    if c >= size:
        return (size,)
    out = [c] * (size // c)
    rest = size - c * len(out)
    if rest:
        if rest < halo:
            out[-1] += rest  # the last chunk may be any size
        else:
            out.append(rest)
    return tuple(out)


def load_mapper(path, *, device=None):
    """Load a mapper written by ``Mapper.save`` or ``TreeMapper.save``.

    The file is read with ``torch.load(weights_only=True)``: no code runs.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.pt`` file.
    device : str or torch.device, optional
        Device a ``Mapper`` runs on; None: CUDA when available, else CPU. Not used for a ``TreeMapper``.

    Returns
    -------
    Mapper or s2pipe.ml.trees.TreeMapper
        A ``Mapper`` (U-Net + ConvLSTM) or an ``s2pipe.ml.trees.TreeMapper`` (random forest, LightGBM).

    Raises
    ------
    InputError
        ``path`` does not exist or is not a saved s2pipe mapper, ``device`` is not a torch device, or a saved tree
        mapper names a model this s2pipe does not know.
    """
    from s2pipe.ml import trees

    payload = read_payload(path, fmt=(_FORMAT, trees.FORMAT), what="mapper", owner="mapper")
    if payload["format"] == trees.FORMAT:
        return trees.tree_mapper_from_payload(payload)
    cfg = MapperConfig(**json.loads(payload["config"]))
    fcn, head = _build(cfg)
    fcn.load_state_dict(payload["fcn"])
    head.load_state_dict(payload["head"])
    return Mapper(cfg, fcn, head, device=resolve_device(device))


def _build(cfg: MapperConfig) -> tuple[UNet, TemporalHead | SequenceHead]:
    K, B = len(cfg.classes), len(cfg.bands)
    fcn = UNet(B, K, base=cfg.base, depth=cfg.depth)
    if cfg.architecture == "paper":
        return fcn, TemporalHead(K, hidden=cfg.hidden, residual=cfg.residual_head)
    c_in = B + (K if cfg.architecture == "inputs+probabilities" else 0)
    return fcn, SequenceHead(c_in, K, hidden=cfg.hidden, kernel=cfg.head_kernel, dropout=cfg.head_dropout)


def _head_sequence(mapper: "Mapper", z: torch.Tensor, *, batch_size: int = 8) -> torch.Tensor:
    """(T, 1, C, H, W) input of the head for standardised (T, B, H, W) images: the U-Net's softmax maps
    ("paper"), the inputs ("inputs"), or both ("inputs+probabilities")."""
    arch = mapper.config.architecture
    parts = []
    if arch != "paper":
        parts.append(z)
    if arch != "inputs":
        parts.append(torch.cat([torch.softmax(mapper.fcn(z[i:i + batch_size]), dim=1)
                                for i in range(0, z.shape[0], batch_size)]))
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))[:, None]


# ------------------------------------------------------------------------------------------ training
def _augment(x: torch.Tensor, y: torch.Tensor, k: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rotation by k·90° and optional horizontal flip on the last two dims of x and y."""
    if k:
        x, y = torch.rot90(x, k, dims=(-2, -1)), torch.rot90(y, k, dims=(-2, -1))
    if flip:
        x, y = torch.flip(x, dims=(-1,)), torch.flip(y, dims=(-1,))
    return x, y


class _Sampler:
    """Random training windows: a patch around a random labelled pixel (so sparse labels still train)."""

    def __init__(self, target: np.ndarray, patch: int, rng: np.random.Generator):
        self.ny, self.nx = target.shape
        self.patch = patch
        self.rng = rng
        self.labelled = np.flatnonzero(target.ravel() >= 0)

    def window(self) -> tuple[int, int]:
        P = self.patch
        i = int(self.labelled[self.rng.integers(len(self.labelled))])
        cy, cx = divmod(i, self.nx)
        y0 = int(self.rng.integers(max(0, cy - P + 1), min(cy, self.ny - P) + 1))
        x0 = int(self.rng.integers(max(0, cx - P + 1), min(cx, self.nx - P) + 1))
        return y0, x0


def _run_stage(module, loss_of: Callable, *, epochs: int, steps_per_epoch: int, lr: float, lr_steps, lr_factor: float,
               tick: Callable[[], None], one_cycle: bool = False) -> list[float]:
    """Adam with multi-step decay (``one_cycle``: a one-cycle schedule peaking at ``lr`` after 10 % of the
    steps instead); ``loss_of()`` returns one batch's loss. Returns the mean loss per epoch."""
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    total = epochs * steps_per_epoch
    if one_cycle:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.1)
    else:
        milestones = sorted({max(1, int(round(f * total))) for f in lr_steps if 0 < f < 1})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=lr_factor)
    module.train()
    losses = []
    for _ in range(epochs):
        tot = 0.0
        for _ in range(steps_per_epoch):
            loss = loss_of()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
        losses.append(tot / steps_per_epoch)
        tick()
    module.eval()
    return losses


_TREE_SHARED = frozenset({"model", "seq_len", "seed", "bands", "progress"})
"""``train_mapper`` parameters that the tree mappers take too (the others are the U-Net + ConvLSTM's)."""


def _same(value, default) -> bool:
    """Whether an argument equals its default (so a tree mapper may leave it out)."""
    if value is default:
        return True
    try:
        return bool(value == default)
    except (TypeError, ValueError):  # arrays and the like: not the default
        return False


MapperKind = Literal["unet-convlstm", "random-forest", "lightgbm"]
MAPPER_KINDS: tuple[str, ...] = get_args(MapperKind)


def train_mapper(
    images: xr.DataArray,
    labels: xr.DataArray,
    *,
    model: MapperKind = "unet-convlstm",
    seq_len: int | None = None,
    epochs: int | None = None,
    seed: int = 0,
    device=None,
    bands=None,
    patch: int = 512,
    batch_size: int = 2,
    lr: float = 3e-3,
    temporal_lr: float | None = None,
    lr_steps: tuple[float, ...] = (1 / 3, 2 / 3),
    lr_factor: float = 0.1,
    alpha: float = 0.5,
    base: int = 16,
    depth: int = 3,
    hidden: int | None = None,
    fcn_epochs: int | None = None,
    temporal_epochs: int | None = None,
    augment: bool = True,
    architecture: Architecture = "inputs",
    head_kernel: int | None = None,
    class_weight: ClassWeight | None = None,
    head_dropout: float = 0.0,
    residual_head: bool = True,
    progress: Callable[[int, int], None] | None = None,
    **tree_options,
):
    """Train a land-cover mapper on one labelled image time series: by default the U-Net, then the ConvLSTM
    head; ``model="random-forest"`` or ``"lightgbm"``: a per-pixel tree classifier on all the window's dates
    (``s2pipe.ml.trees.train_tree_mapper``, which documents its own options).

    Parameters
    ----------
    images
        (time, band, y, x) reflectance, at least ``seq_len`` dates in time order; NumPy- or Dask-backed
        (loaded into memory); NaN allowed (cloud masks): 0 after per-band standardisation.
    labels
        (y, x) integer class ids on the grid of ``images``; negative (-1) = unlabelled, ignored.
        The classes are the distinct ids ≥ 0 (at least 2).
    model
        "unet-convlstm" (the paper's model, options below), "random-forest" or "lightgbm" (per-pixel
        trees; ``seed``, ``bands``, ``progress`` and ``tree_options`` are passed on; any other option of this
        function set to a non-default value raises ``InputError``).
    seq_len
        dates the model reads, the last ``seq_len`` at prediction. None: 5 (the paper) for the
        U-Net + ConvLSTM, all the dates of ``images`` for the tree models.
    epochs
        total epochs, split 2:1 between the U-Net and the head (each at least 1); None:
        ``default_epochs`` (40 + 20 up to a full Sentinel-2 tile, at most 60 + 30 for larger regions). A
        U-Net epoch (and a head epoch of the "paper" architecture or of a head with ``head_kernel`` > 1) is
        ``EPOCH_PATCHES`` random patches; an epoch of a 1×1-kernel head is ``HEAD_STEPS`` steps of
        ``HEAD_PIXELS`` random labelled pixels.
    seed
        seed of initialisation, patch sampling and augmentation: same seed, same mapper on CPU.
    device
        None → "cuda" when available, else "cpu".
    bands
        band coordinate values to train on (None: all bands of ``images``).
    patch
        training patch side (pixels, multiple of ``2**depth``); the paper's 512 for images at least
        1536 px wide, smaller ones use ``default_patch`` (a third of the shorter side, at least 64 px).
    batch_size
        patches per optimizer step; 2: twice the optimizer steps of 4 for the same patches, which
        learned the synthetic tasks markedly better at equal cost.
    lr
        initial Adam learning rate of the U-Net. 3e-3: on the synthetic tasks 1e-3 needed about twice the
        epochs for the same accuracy (no batch normalisation in this U-Net, inputs are standardised).
    temporal_lr
        initial Adam learning rate of the ConvLSTM head; None: ``lr``. (10 · lr learned the
        synthetic tasks faster but made the plain head collapse to the majority class on the demo's roads.)
    lr_steps
        fractions of a stage's optimizer steps after which the learning rate is multiplied by
        ``lr_factor`` (the paper: two drops by 10, at 1/3 and 2/3).
    lr_factor
        see ``lr_steps``.
    alpha
        joint-loss weight of the cross entropy (1: cross entropy only).
    base
        U-Net channels at the first level.
    depth
        U-Net levels (2×2 poolings).
    hidden
        ConvLSTM channels per layer; None: ``max(8, n_classes)`` for "paper", else ``max(16, n_classes)``.
    fcn_epochs
        U-Net epochs (overrides the split of ``epochs``).
    temporal_epochs
        head epochs (overrides the split of ``epochs``).
    augment
        random horizontal/vertical flips and 90° rotations, identical for images and labels.
    architecture
        what the ConvLSTM head reads (see the module docstring): "inputs" (default: the
        standardised input sequence), "inputs+probabilities" (and the frozen U-Net's probability maps) or
        "paper" (the paper's model: the U-Net's probability maps only; with ``residual_head=False`` exactly
        the paper's head).
    head_kernel
        ConvLSTM kernel side (odd) of the "inputs"/"inputs+probabilities" head; None: 1 (per-pixel,
        trained on sampled pixels; receptive radius 0). "paper" always uses 3.
    class_weight
        class weights of the head's cross entropy: "sqrt" (√(n / (K·n_k)), n_k the labelled
        pixels of class k), "balanced" (n / (K·n_k)) or "none"; None: "sqrt", and "none" for "paper". On
        Slovenia (3 spatial folds) "sqrt" raised the held-out macro F1 of the per-pixel head by 0.09–0.25 at
        −0.009…+0.013 OA; "balanced" cost 0.08–0.14 OA.
    head_dropout
        dropout on the last hidden state of the "inputs"/"inputs+probabilities" head.
    residual_head
        "paper" only: the ConvLSTM head learns a correction of the sequence's mean U-Net map
        (starting as that average); False: the paper's plain head, which learns the whole map from scratch.
    progress
        optional ``progress(done, total)`` callback, called after every epoch of either stage.
    tree_options
        options of ``s2pipe.ml.trees.train_tree_mapper`` (tree models only).

    Returns
    -------
        The trained ``Mapper`` (``losses`` per epoch and stage, ``train_seconds``), or a ``TreeMapper``.
    """
    if model not in MAPPER_KINDS:
        raise InputError(f"model={model!r} is not a mapper kind; pass one of {list(MAPPER_KINDS)}")
    if model != "unet-convlstm":
        from s2pipe.ml.trees import train_tree_mapper

        given = locals()
        unet_only = [name for name, par in inspect.signature(train_mapper).parameters.items()
                     if name not in _TREE_SHARED and par.kind is par.KEYWORD_ONLY
                     and not _same(given[name], par.default)]
        if unet_only:
            raise InputError(f"{unet_only} are options of model='unet-convlstm', not of model={model!r} (tree options "
                             f"are {sorted(_TREE_SHARED - {'model'})} and those of s2pipe.ml.trees.train_tree_mapper); "
                             "leave them out")
        return train_tree_mapper(images, labels, model=model, seq_len=seq_len, seed=seed, bands=bands,
                                 progress=progress, **tree_options)
    if tree_options:
        raise InputError(f"{sorted(tree_options)} are options of the tree mappers, not of model='unet-convlstm'")
    cfg, v, target_ids, classes = _unet_config(
        images, labels, seq_len=seq_len, epochs=epochs, seed=seed, bands=bands, patch=patch,
        batch_size=batch_size, lr=lr, temporal_lr=temporal_lr, lr_steps=lr_steps, lr_factor=lr_factor,
        alpha=alpha, base=base, depth=depth, hidden=hidden, fcn_epochs=fcn_epochs,
        temporal_epochs=temporal_epochs, augment=augment, architecture=architecture, head_kernel=head_kernel,
        class_weight=class_weight, head_dropout=head_dropout, residual_head=residual_head,
    )
    return _fit_unet_convlstm(cfg, v, target_ids, classes, dev=resolve_device(device), progress=progress)


def _unet_config(images, labels, *, seq_len, epochs, seed, bands, patch, batch_size, lr, temporal_lr, lr_steps,
                 lr_factor, alpha, base, depth, hidden, fcn_epochs, temporal_epochs, augment, architecture,
                 head_kernel, class_weight, head_dropout, residual_head):
    """The U-Net + ConvLSTM options of ``train_mapper``, checked against the images and labels, and the
    ``MapperConfig`` they give, with the per-band standardisation of the images.

    Returns
    -------
    cfg : MapperConfig
    values : np.ndarray
        The (selected bands of the) images, (T, B, Y, X) float32.
    target_ids : np.ndarray
        (Y, X) int64 class ids, negative = unlabelled.
    classes : np.ndarray
        The labelled class ids, sorted: the output channels.
    """
    seq_len = 5 if seq_len is None else positive_int("seq_len", seq_len)
    images = check_images(images, min_dates=seq_len)
    if bands is not None:
        bands = list(bands) if isinstance(bands, (list, tuple, np.ndarray)) else [bands]
        have = images["band"].values.tolist() if "band" in images.coords else list(range(images.sizes["band"]))
        missing = [b for b in bands if b not in have]
        if missing:
            raise InputError(f"bands={bands!r}: {missing} not in images' bands {have}; pass a subset of them")
        images = images.sel(band=bands) if "band" in images.coords else images.isel(band=bands)
    target_ids = check_labels(labels, images)
    classes = np.unique(target_ids[target_ids >= 0])
    if len(classes) < 2:
        raise InputError(f"labels holds {len(classes)} class(es) {classes.tolist()} but at least 2 are needed; "
                         "label pixels of several classes (-1 = unlabelled)")
    depth = positive_int("depth", depth)
    base = positive_int("base", base)
    batch_size = positive_int("batch_size", batch_size)
    m = 2 ** depth
    patch = positive_int("patch", patch, lo=m)
    if patch % m:
        raise InputError(f"patch={patch} must be a multiple of 2**depth = {m}; pass e.g. patch={patch // m * m}")
    K = len(classes)
    if architecture not in ARCHITECTURES:
        raise InputError(f"architecture={architecture!r} is not known; pass one of {list(ARCHITECTURES)}")
    paper = architecture == "paper"
    if paper:
        if head_kernel not in (None, 3):
            raise InputError(f"head_kernel={head_kernel!r}: the paper's head has 3×3 kernels; pass head_kernel=None "
                             "or another architecture")
        head_kernel = 3
    else:
        head_kernel = 1 if head_kernel is None else positive_int("head_kernel", head_kernel)
        if head_kernel % 2 == 0:
            raise InputError(f"head_kernel={head_kernel} must be odd (same-size convolutions); pass e.g. 1 or 3")
    class_weight = ("none" if paper else "sqrt") if class_weight is None else class_weight
    if class_weight not in _CLASS_WEIGHTS:
        raise InputError(f"class_weight={class_weight!r} is not known; pass one of {list(_CLASS_WEIGHTS)}")
    if not (isinstance(head_dropout, (int, float)) and 0 <= head_dropout < 1):
        raise InputError(f"head_dropout={head_dropout!r} must be a number in [0, 1)")
    hidden = int(max(8 if paper else 16, K)) if hidden is None else positive_int("hidden", hidden)
    if epochs is not None:
        epochs = positive_int("epochs", epochs, lo=2)
        n_fcn = min(epochs - 1, max(1, int(round(2 * epochs / 3))))
        split = (n_fcn, epochs - n_fcn)
    else:
        split = default_epochs(images.sizes["y"], images.sizes["x"],
                               default_patch(images.sizes["y"], images.sizes["x"], patch, multiple=m))
    fcn_epochs = split[0] if fcn_epochs is None else positive_int("fcn_epochs", fcn_epochs)
    temporal_epochs = split[1] if temporal_epochs is None else positive_int("temporal_epochs", temporal_epochs)
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise InputError(f"lr={lr!r} must be a positive number; pass e.g. lr=1e-3")
    temporal_lr = float(lr) if temporal_lr is None else temporal_lr
    if not (isinstance(temporal_lr, (int, float)) and temporal_lr > 0):
        raise InputError(f"temporal_lr={temporal_lr!r} must be a positive number (or None: lr)")
    if not (isinstance(lr_factor, (int, float)) and lr_factor > 0):
        raise InputError(f"lr_factor={lr_factor!r} must be a positive number; pass e.g. lr_factor=0.1")
    lr_steps = [float(f) for f in lr_steps]
    if any(not 0 < f < 1 for f in lr_steps):
        raise InputError(f"lr_steps={lr_steps!r} must be fractions in (0, 1) of the optimizer steps")
    if not 0 <= float(alpha) <= 1:
        raise InputError(f"alpha={alpha!r} must lie in [0, 1] (weight of the cross entropy)")
    # standardisation and training arrays (in memory)
    v = np.asarray(images.values, dtype=np.float32)  # (T, B, Y, X)
    T, B, Y, X = v.shape
    with warnings.catch_warnings():  # all-NaN bands: mean 0, std 1 below
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(v, axis=(0, 2, 3), dtype=np.float64)
        std = np.nanstd(v, axis=(0, 2, 3), dtype=np.float64)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    band_values = images["band"].values.tolist() if "band" in images.coords else list(range(B))
    cfg = MapperConfig(
        bands=band_values, classes=[int(c) for c in classes], seq_len=seq_len, base=base, depth=depth, hidden=hidden,
        alpha=float(alpha), mean=[float(x) for x in mean], std=[float(x) for x in std],
        patch=0, batch_size=batch_size, fcn_epochs=fcn_epochs, temporal_epochs=temporal_epochs,
        epoch_patches=EPOCH_PATCHES, lr=float(lr), temporal_lr=float(temporal_lr), lr_steps=lr_steps,
        lr_factor=float(lr_factor), augment=bool(augment), seed=int(seed), names=class_names(labels, classes),
        residual_head=bool(residual_head), architecture=str(architecture), head_kernel=int(head_kernel),
        class_weight=str(class_weight), class_weights=_class_weights(target_ids, classes, class_weight),
        head_dropout=float(head_dropout))
    P = default_patch(Y, X, patch, multiple=m)
    cfg = dataclasses.replace(cfg, patch=int(P))
    return cfg, v, target_ids, classes


def _fit_unet_convlstm(cfg: MapperConfig, v: np.ndarray, target_ids: np.ndarray, classes: np.ndarray, *,
                       dev: torch.device, progress: Callable[[int, int], None] | None) -> Mapper:
    """Train the mapper of ``cfg`` on ``v`` (T, B, Y, X) float32 and ``target_ids`` (Y, X): the U-Net on random
    single-date patches (``fcn_epochs``), then, with the U-Net frozen, the temporal head on ``seq_len``-date
    sequences (``temporal_epochs``). Seeded by ``cfg.seed``; returns the trained ``Mapper`` with its losses and
    ``train_seconds``."""
    seed, P, batch_size, seq_len = cfg.seed, cfg.patch, cfg.batch_size, cfg.seq_len
    alpha, lr, temporal_lr, lr_steps, lr_factor = cfg.alpha, cfg.lr, cfg.temporal_lr, cfg.lr_steps, cfg.lr_factor
    fcn_epochs, temporal_epochs, augment = cfg.fcn_epochs, cfg.temporal_epochs, cfg.augment
    architecture, head_kernel = cfg.architecture, cfg.head_kernel
    paper = architecture == "paper"
    T, _, Y, X = v.shape
    index = np.full(target_ids.shape, -1, dtype=np.int64)
    for i, c in enumerate(classes):
        index[target_ids == c] = i

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fcn, head = _build(cfg)
    mapper = Mapper(cfg, fcn, head, device=dev)
    z = mapper._standardize(v)
    del v
    py, px = max(0, P - Y), max(0, P - X)  # images smaller than one patch: pad (unlabelled)
    if py or px:
        z = np.pad(z, ((0, 0), (0, 0), (0, py), (0, px)))
        index = np.pad(index, ((0, py), (0, px)), constant_values=-1)
    zt = torch.from_numpy(z).to(dev)  # (T, B, Y', X')
    yt = torch.from_numpy(index).to(dev)
    rng = np.random.default_rng(seed)
    sampler = _Sampler(index, P, rng)
    steps = max(1, EPOCH_PATCHES // batch_size)
    done, total = [0], fcn_epochs + temporal_epochs

    def tick():
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    def orient():
        return (int(rng.integers(4)), bool(rng.integers(2))) if augment else (0, False)

    def fcn_batch():
        xs, ys = [], []
        for _ in range(batch_size):
            t = int(rng.integers(T))
            y0, x0 = sampler.window()
            xb, yb = _augment(zt[t, :, y0:y0 + P, x0:x0 + P], yt[y0:y0 + P, x0:x0 + P], *orient())
            xs.append(xb)
            ys.append(yb)
        return joint_loss(mapper.fcn(torch.stack(xs)), torch.stack(ys), alpha=alpha)

    t0 = _time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fcn_losses = _run_stage(mapper.fcn, fcn_batch, epochs=fcn_epochs, steps_per_epoch=steps, lr=lr,
                                lr_steps=lr_steps, lr_factor=lr_factor, tick=tick)
        # frozen U-Net → probability maps of every date (the sequences of the head's training)
        for p in mapper.fcn.parameters():
            p.requires_grad_(False)
        if paper:
            seq_in = _probability_maps(mapper, zt)  # (T, K, Y', X')
        elif architecture == "inputs":
            seq_in = zt  # (T, B, Y', X')
        else:
            seq_in = torch.cat([zt, _probability_maps(mapper, zt)], dim=1)  # (T, B + K, Y', X')
        del zt
        weight = (torch.tensor(cfg.class_weights, dtype=torch.float32, device=dev) if cfg.class_weights else None)
        head_alpha = alpha if paper or head_kernel > 1 else 1.0  # the per-pixel head: (weighted) cross entropy

        def head_batch():
            xs, ys = [], []
            for _ in range(batch_size):
                s = int(rng.integers(T - seq_len + 1))
                y0, x0 = sampler.window()
                xb, yb = _augment(seq_in[s:s + seq_len, :, y0:y0 + P, x0:x0 + P], yt[y0:y0 + P, x0:x0 + P],
                                  *orient())
                xs.append(xb)
                ys.append(yb)
            return joint_loss(mapper.head(torch.stack(xs, dim=1)), torch.stack(ys), alpha=head_alpha, weight=weight)

        labelled = torch.from_numpy(sampler.labelled).to(dev)
        width = seq_in.shape[-1]

        def pixel_batch():
            # a 1×1-kernel head is per pixel: a (L, 1, C, P, 1) "column" of P random labelled pixels trains it
            s = int(rng.integers(T - seq_len + 1))
            pick = labelled[torch.from_numpy(rng.integers(len(sampler.labelled), size=HEAD_PIXELS)).to(dev)]
            yy, xx = pick // width, pick % width
            xb = seq_in[s:s + seq_len][:, :, yy, xx][:, None, :, :, None]
            yb = yt[yy, xx][None, :, None]
            return joint_loss(mapper.head(xb), yb, alpha=head_alpha, weight=weight)

        per_pixel = not paper and head_kernel == 1
        head_losses = _run_stage(mapper.head, pixel_batch if per_pixel else head_batch, epochs=temporal_epochs,
                                 steps_per_epoch=HEAD_STEPS if per_pixel else steps, lr=temporal_lr,
                                 lr_steps=lr_steps, lr_factor=lr_factor, tick=tick, one_cycle=not paper)
        for p in mapper.fcn.parameters():
            p.requires_grad_(True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    mapper.train_seconds = _time.perf_counter() - t0
    mapper.losses = {"fcn": fcn_losses, "temporal": head_losses}
    return mapper


def _class_weights(target: np.ndarray, classes: np.ndarray, mode: str) -> list[float]:
    """Cross-entropy class weights in ``classes`` order: "sqrt" √(n / (K·n_k)), "balanced" n / (K·n_k), "none" []
    (n labelled pixels, n_k of class k, K classes)."""
    if mode == "none":
        return []
    n = np.array([(target == c).sum() for c in classes], dtype=np.float64)
    w = n.sum() / (len(classes) * n)
    return [float(v) for v in (np.sqrt(w) if mode == "sqrt" else w)]


_WHOLE_PIXELS = 2048 * 2048
"""Above this many pixels, the U-Net probability maps for the head's training are computed in tiles."""


def _probability_maps(mapper: Mapper, z: torch.Tensor, *, tile: int = 1024) -> torch.Tensor:
    """Softmax U-Net outputs (T, K, Y, X) of standardised (T, B, Y, X) images, tiled with an exact halo."""
    m = mapper.config.multiple
    T, _, Y, X = z.shape
    K = len(mapper.config.classes)

    def run(block: torch.Tensor) -> torch.Tensor:
        h, w = block.shape[-2:]
        padded = torch.nn.functional.pad(block, (0, (-w) % m, 0, (-h) % m))
        with torch.no_grad():  # not inference_mode: the maps feed the head's autograd graph
            out = torch.cat([torch.softmax(mapper.fcn(padded[i:i + 1]), dim=1) for i in range(T)])
        return out[..., :h, :w].contiguous()

    if Y * X <= _WHOLE_PIXELS:
        return run(z)
    halo = mapper.config.halo(temporal=False)
    out = torch.empty((T, K, Y, X), dtype=torch.float32, device=z.device)
    for y0 in range(0, Y, tile):
        for x0 in range(0, X, tile):
            a, b = max(0, y0 - halo), max(0, x0 - halo)
            block = run(z[..., a:min(Y, y0 + tile + halo), b:min(X, x0 + tile + halo)])
            out[..., y0:y0 + tile, x0:x0 + tile] = block[..., y0 - a:y0 - a + tile, x0 - b:x0 - b + tile]
    return out
