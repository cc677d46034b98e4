"""A PyTorch reference of PointFlow's auto-encoder, written from the original's definition.

Module and buffer names follow stevenygd/PointFlow (``models/networks.py``, ``flow.py``,
``cnf.py``, ``odefunc.py``, ``diffeq_layers.py``, ``normalization.py``), so its state dict has
the released checkpoint's keys: ``encoder.module.*`` and ``point_cnf.module.chain.{0,1,2}.*``
(each submodule wrapped in ``DataParallel``), with ``num_batches_tracked``, ``step`` and
``_num_evals`` buffers. Two changes for testing: the divergence is the exact trace (the
original's Hutchinson estimate is random) and the CNF is solved with classical fixed-step RK4
(the original uses torchdiffeq's dopri5). Run it in float64 for reference values.

Only the tests import this (and only when torch is installed).
"""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """The deterministic PointNet encoder (``use_deterministic_encoder``), widths as arguments."""

    def __init__(self, zdim: int, input_dim: int = 3, conv_dims=(128, 128, 256, 512), fc_dims=(256, 128)):
        super().__init__()
        widths = (input_dim, *conv_dims)
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True), start=1):
            setattr(self, f"conv{i}", nn.Conv1d(a, b, 1))
            setattr(self, f"bn{i}", nn.BatchNorm1d(b))
        widths = (conv_dims[-1], *fc_dims, zdim)
        for j, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True), start=1):
            setattr(self, f"fc{j}", nn.Linear(a, b))
        for j, b in enumerate(fc_dims, start=1):
            setattr(self, f"fc_bn{j}", nn.BatchNorm1d(b))
        self.convs, self.fcs = len(conv_dims), len(fc_dims) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)
        for i in range(1, self.convs + 1):
            x = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))
            if i < self.convs:
                x = torch.relu(x)
        x = torch.max(x, 2)[0]
        for j in range(1, self.fcs):
            x = torch.relu(getattr(self, f"fc_bn{j}")(getattr(self, f"fc{j}")(x)))
        return getattr(self, f"fc{self.fcs}")(x)


class ConcatSquashLinear(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, dim_c: int):
        super().__init__()
        self._layer = nn.Linear(dim_in, dim_out)
        self._hyper_bias = nn.Linear(1 + dim_c, dim_out, bias=False)
        self._hyper_gate = nn.Linear(1 + dim_c, dim_out)

    def forward(self, context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self._hyper_gate(context))
        bias = self._hyper_bias(context)
        if x.dim() == 3:
            gate, bias = gate.unsqueeze(1), bias.unsqueeze(1)
        return self._layer(x) * gate + bias


class ODEnet(nn.Module):
    def __init__(self, hidden_dims, input_dim: int, context_dim: int):
        super().__init__()
        widths = (input_dim, *hidden_dims, input_dim)
        self.layers = nn.ModuleList(ConcatSquashLinear(a, b, context_dim) for a, b in zip(widths[:-1], widths[1:],
                                                                                          strict=True))

    def forward(self, context: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dx = y
        for i, layer in enumerate(self.layers):
            dx = layer(context, dx)
            if i < len(self.layers) - 1:
                dx = torch.tanh(dx)
        return dx


class ODEfunc(nn.Module):
    """(dy, −div, 0) of the conditional CNF; the divergence is the exact trace."""

    def __init__(self, diffeq: ODEnet):
        super().__init__()
        self.diffeq = diffeq
        self.register_buffer("_num_evals", torch.tensor(0.0))

    def forward(self, t, y: torch.Tensor, c: torch.Tensor):
        self._num_evals += 1
        tc = torch.cat([torch.ones(y.size(0), 1).to(y) * t, c.view(y.size(0), -1)], dim=1)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            dy = self.diffeq(tc, y)
            divergence = sum(
                torch.autograd.grad(dy[..., i].sum(), y, retain_graph=True)[0][..., i] for i in range(y.size(-1))
            )
        return dy.detach(), -divergence.detach().unsqueeze(-1)


class CNF(nn.Module):
    """PointFlow's CNF with ``train_T``; solved here with ``steps`` classical RK4 steps over [0, T]."""

    def __init__(self, odefunc: ODEfunc, T: float = 0.5, steps: int = 8):  # noqa: N803
        super().__init__()
        self.odefunc = odefunc
        self.register_parameter("sqrt_end_time", nn.Parameter(torch.sqrt(torch.tensor(T))))
        self.steps = steps

    def forward(self, x, context, logpx=None, integration_times=None, reverse=False):
        end = self.sqrt_end_time * self.sqrt_end_time
        t0, t1 = (end, 0.0 * end) if reverse else (0.0 * end, end)
        logp = torch.zeros(*x.shape[:-1], 1).to(x) if logpx is None else logpx
        x, logp = rk4(self.odefunc, (x, logp), context, t0, t1, self.steps)
        return x if logpx is None else (x, logp)


def rk4(func, state, context, t0, t1, steps: int):
    """Classical RK4 on the state tuple (x, logp) with ``steps`` equal steps from t0 to t1."""
    h = (t1 - t0) / steps

    def f(t, s):
        return func(t, s[0], context)

    def add(s, k, a):
        return tuple(si + a * ki for si, ki in zip(s, k, strict=True))

    with torch.no_grad():
        for n in range(steps):
            t = t0 + n * h
            k1 = f(t, state)
            k2 = f(t + h / 2, add(state, k1, h / 2))
            k3 = f(t + h / 2, add(state, k2, h / 2))
            k4 = f(t + h, add(state, k3, h))
            state = tuple(s + h / 6 * (a + 2 * b + 2 * c + d) for s, a, b, c, d in zip(state, k1, k2, k3, k4,
                                                                                       strict=True))
    return state


class MovingBatchNorm1d(nn.Module):
    """PointFlow's ``MovingBatchNorm1d`` with bn_lag = 0, sync False, affine."""

    def __init__(self, num_features: int, eps: float = 1e-4, decay: float = 0.1):
        super().__init__()
        self.eps, self.decay = eps, decay
        self.register_buffer("step", torch.zeros(1))
        self.weight = nn.Parameter(torch.zeros(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x, context=None, logpx=None, integration_times=None, reverse=False):
        return self._reverse(x, logpx) if reverse else self._forward(x, logpx)

    def _forward(self, x, logpx=None):
        num_channels = x.size(-1)
        used_mean = self.running_mean.clone().detach()
        used_var = self.running_var.clone().detach()
        if self.training:
            x_t = x.transpose(0, 1).reshape(num_channels, -1)
            batch_mean = torch.mean(x_t, dim=1)
            batch_var = torch.var(x_t, dim=1)
            self.running_mean -= self.decay * (self.running_mean - batch_mean.data)
            self.running_var -= self.decay * (self.running_var - batch_var.data)
            self.step += 1
        used_mean = used_mean.view(1, -1).expand_as(x)
        used_var = used_var.view(1, -1).expand_as(x)
        y = (x - used_mean) * torch.exp(-0.5 * torch.log(used_var + self.eps))
        y = y * torch.exp(self.weight.view(1, -1).expand_as(x)) + self.bias.view(1, -1).expand_as(x)
        if logpx is None:
            return y
        return y, logpx - self._logdetgrad(x, used_var).sum(-1, keepdim=True)

    def _reverse(self, y, logpy=None):
        y = (y - self.bias.view(1, -1).expand_as(y)) * torch.exp(-self.weight.view(1, -1).expand_as(y))
        used_mean = self.running_mean.view(1, -1).expand_as(y)
        used_var = self.running_var.view(1, -1).expand_as(y)
        x = y * torch.exp(0.5 * torch.log(used_var + self.eps)) + used_mean
        if logpy is None:
            return x
        return x, logpy + self._logdetgrad(x, used_var).sum(-1, keepdim=True)

    def _logdetgrad(self, x, used_var):
        return -0.5 * torch.log(used_var + self.eps) + self.weight.view(1, -1).expand(*x.size())


class SequentialFlow(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.chain = nn.ModuleList(layers)

    def forward(self, x, context, logpx=None, reverse=False):
        inds = range(len(self.chain) - 1, -1, -1) if reverse else range(len(self.chain))
        if logpx is None:
            for i in inds:
                x = self.chain[i](x, context, None, None, reverse)
            return x
        for i in inds:
            x, logpx = self.chain[i](x, context, logpx, None, reverse)
        return x, logpx


class PointFlowAE(nn.Module):
    """``PointFlow`` with ``use_deterministic_encoder`` and no latent flow, DataParallel-wrapped as in train.py."""

    def __init__(self, zdim=128, input_dim=3, conv_dims=(128, 128, 256, 512), fc_dims=(256, 128),
                 hidden_dims=(512, 512, 512), time_length=0.5, steps=8):
        super().__init__()
        self.encoder = nn.DataParallel(Encoder(zdim, input_dim, conv_dims, fc_dims))
        cnf = CNF(ODEfunc(ODEnet(hidden_dims, input_dim, zdim)), T=time_length, steps=steps)
        self.point_cnf = nn.DataParallel(SequentialFlow([MovingBatchNorm1d(input_dim), cnf,
                                                         MovingBatchNorm1d(input_dim)]))
        self.latent_cnf = nn.Sequential()

    def encode(self, x):
        return self.encoder(x)

    def log_px(self, x, z):
        """Per-point log p(x_p | z) with the correct Gaussian constant (B, P)."""
        y, delta = self.point_cnf(x, z, torch.zeros(*x.shape[:-1], 1).to(x))
        log_py = -0.5 * (y**2).sum(-1) - 0.5 * y.size(-1) * torch.log(torch.tensor(2 * torch.pi).to(y))
        return log_py - delta[..., 0]


def perturbed(model: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Random weights, non-trivial batch-norm and moving-batch-norm statistics and weights, T ≠ 0.5."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name.endswith(("step", "_num_evals")):
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype))
            elif name.endswith("running_mean"):
                tensor.copy_(0.2 * noise)
            elif name.endswith("sqrt_end_time"):
                tensor.fill_(0.8)  # T = 0.64
            elif "point_cnf" in name and tensor.ndim == 1 and "layers" not in name:  # MBN log-scale w, bias b
                tensor.copy_(0.2 * noise)
            elif "encoder" in name and (".bn" in name or ".fc_bn" in name):
                tensor.copy_((1.0 + 0.2 * noise) if name.endswith("weight") else 0.1 * noise)
            else:
                tensor.add_(scale * noise * tensor.abs().mean().clamp(min=0.05))
                if "_layer.weight" in name:  # a livelier ODE field: divergences of order 0.1-1
                    tensor.mul_(2.5)
    return model.eval()


def save_like_pointflow(model: PointFlowAE, path, *, wrapper: bool = True, legacy: bool = False) -> None:
    """``torch.save`` as train.py does (``{'epoch', 'model', 'optimizer'}``) or the bare state dict."""
    state = {k: v.float() for k, v in model.state_dict().items()}
    if wrapper:
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        state = {"epoch": 3999, "model": state, "optimizer": optimizer.state_dict()}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
