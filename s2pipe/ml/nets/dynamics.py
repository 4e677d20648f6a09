"""Torch modules for learning spectral dynamics (Estopinan, Tochon & Drumetz): residual networks with a
hard-wired integration scheme (Euler, RK4) and an LSTM baseline.

Torch only: no file I/O, no xarray, no Dask. The state is a (N, D) float tensor of N independent samples
(pixels) with D features; for the paper's state ``X_t = [s_t, s'_t]`` D = 2L (or 2k in a reduced basis).
One step has integration step h = 1 (one sampling interval of the series).

Optional **seasonal forcing** makes the dynamics non-autonomous, ``dX/dt = δ(X, φ(t))``: δ also reads
``[sin φ, cos φ]`` of a clock phase φ (radians, e.g. the day of the year) that advances by ``step_phase``
per step; RK4's midpoint evaluations see the phase at half a step. The phase is an input, not a state.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["Scheme", "SCHEMES", "Delta", "ResNetDynamics", "LSTMDynamics", "build_dynamics", "lstm_hidden_for"]

Scheme = Literal["rk4", "euler", "lstm"]
SCHEMES: tuple[str, ...] = ("rk4", "euler", "lstm")
Activation = Literal["tanh", "gelu", "silu"]
_ACT = {"tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}


class Delta(nn.Module):
    """The operator δ: two fully connected layers ``D → hidden → D`` with an activation between them.

    ``forward(x)``: (N, D) → (N, D), the increment per unit step (state units per step).
    """

    def __init__(self, dim: int, hidden: int, *, activation: Activation = "tanh", forcing: int = 0):
        super().__init__()
        self.forcing = int(forcing)
        self.fc1 = nn.Linear(dim + 2 * self.forcing, hidden)
        self.act = _ACT[activation]()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, phase: torch.Tensor | None = None) -> torch.Tensor:
        if self.forcing:
            h = torch.arange(1, self.forcing + 1, device=x.device, dtype=x.dtype)
            ang = phase.to(x.dtype)[:, None] * h  # (N, harmonics)
            x = torch.cat([x, torch.sin(ang), torch.cos(ang)], dim=-1)
        return self.fc2(self.act(self.fc1(x)))


class ResNetDynamics(nn.Module):
    """A residual network whose one step is an explicit integration step of ``dX/dt = δ(X)`` (h = 1).

    * ``scheme="euler"``: ``X + δ(X)``;
    * ``scheme="rk4"``: ``k1 = δ(X)``, ``k2 = δ(X + k1/2)``, ``k3 = δ(X + k2/2)``, ``k4 = δ(X + k3)``,
      ``X + (k1 + 2 k2 + 2 k3 + k4) / 6`` — the four δ blocks in series share their weights.

    ``forward(x, phase=None)``: (N, D) → (N, D), the state one step later (``phase`` (N,) radians at the
    start of the step when the model has seasonal ``forcing`` harmonics). ``rollout(x, steps, phase=None)``:
    (N, D) → (steps, N, D), feeding every predicted state (all of it, derivatives included) back as the next
    input while the phase advances by ``step_phase`` per step.
    """

    def __init__(self, dim: int, hidden: int, *, scheme: Literal["rk4", "euler"] = "rk4",
                 activation: Activation = "tanh", forcing: int = 0, step_phase: float = 0.0):
        super().__init__()
        if scheme not in ("rk4", "euler"):
            raise ValueError(f"ResNetDynamics scheme must be 'rk4' or 'euler', got {scheme!r}")
        self.scheme = scheme
        self.step_phase = float(step_phase)
        self.delta = Delta(dim, hidden, activation=activation, forcing=forcing)

    def _phase(self, x: torch.Tensor, phase) -> torch.Tensor | None:
        if not self.delta.forcing:
            return None
        if phase is None:
            raise ValueError("this model has seasonal forcing: pass phase= (radians, shape (N,))")
        return torch.as_tensor(phase, dtype=x.dtype, device=x.device).expand(x.shape[0])

    def forward(self, x: torch.Tensor, phase: torch.Tensor | None = None) -> torch.Tensor:
        d = self.delta
        p = self._phase(x, phase)
        if self.scheme == "euler":
            return x + d(x, p)
        mid = None if p is None else p + 0.5 * self.step_phase
        end = None if p is None else p + self.step_phase
        k1 = d(x, p)
        k2 = d(x + 0.5 * k1, mid)
        k3 = d(x + 0.5 * k2, mid)
        k4 = d(x + k3, end)
        return x + (k1 + 2.0 * k2 + 2.0 * k3 + k4) / 6.0

    def rollout(self, x: torch.Tensor, steps: int, phase: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        p = self._phase(x, phase)
        for _ in range(steps):
            x = self(x, p)
            out.append(x)
            if p is not None:
                p = p + self.step_phase
        return torch.stack(out) if out else x.new_zeros((0,) + tuple(x.shape))

    def flops_per_step(self) -> int:
        """Multiply-adds × 2 of one step for one sample (forward only): the δ matmuls times evaluations."""
        n = 2 * (self.delta.fc1.in_features * self.delta.fc1.out_features
                 + self.delta.fc2.in_features * self.delta.fc2.out_features)
        return n * (4 if self.scheme == "rk4" else 1)


class LSTMDynamics(nn.Module):
    """LSTM baseline: one ``nn.LSTM`` layer reads the state sequence; the next state is ``X_t + W h_t``.

    ``forward(seq)``: teacher-forced, (T, N, D) → (T, N, D), the prediction of X_{t+1} after reading X_0..X_t.
    ``rollout(seq, steps)``: reads the history ``seq`` (T, N, D), then feeds its own predictions back:
    (steps, N, D), the states after the last history state.
    """

    scheme = "lstm"

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden)
        self.head = nn.Linear(hidden, dim)

    def forward(self, seq: torch.Tensor, hc=None, *, return_state: bool = False):
        h, hc = self.lstm(seq, hc)
        y = seq + self.head(h)
        return (y, hc) if return_state else y

    def rollout(self, seq: torch.Tensor, steps: int) -> torch.Tensor:
        y, hc = self(seq, return_state=True)
        x = y[-1:]
        out = []
        for k in range(steps):
            out.append(x[0])
            if k + 1 < steps:
                x, hc = self(x, hc, return_state=True)
        return torch.stack(out) if out else seq.new_zeros((0,) + tuple(seq.shape[1:]))

    def flops_per_step(self) -> int:
        d, h = self.lstm.input_size, self.lstm.hidden_size
        return 2 * (4 * h * (d + h) + h * d)


def lstm_hidden_for(dim: int, hidden: int) -> int:
    """LSTM width whose parameter count is closest to the ResNet's δ (``2·dim·hidden + dim + hidden``)."""
    target = 2 * dim * hidden + dim + hidden
    best, err = 1, None
    for h in range(1, 4 * hidden + 1):
        n = 4 * h * (dim + h + 2) + h * dim + dim
        e = abs(n - target)
        if err is None or e < err:
            best, err = h, e
    return best


def build_dynamics(*, scheme: Scheme, dim: int, hidden: int, activation: Activation = "tanh", forcing: int = 0,
                   step_phase: float = 0.0) -> nn.Module:
    """The module for ``scheme``; for ``"lstm"`` ``hidden`` is the ResNet width to match in size.

    ``forcing``: harmonics of the seasonal clock fed to δ (ResNets only), ``step_phase`` its advance per step
    (radians)."""
    if scheme == "lstm":
        if forcing:
            raise ValueError("seasonal forcing is implemented for the ResNets (rk4, euler), not the LSTM")
        return LSTMDynamics(dim, lstm_hidden_for(dim, hidden))
    return ResNetDynamics(dim, hidden, scheme=scheme, activation=activation, forcing=forcing, step_phase=step_phase)
