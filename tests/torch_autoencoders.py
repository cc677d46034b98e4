"""PyTorch references of the paper's MNIST ConvVAE / ConvAE, with the original code's
module names (``enc.disc``, ``dec.gen``, ``fc_mu``, ``fc_logvar``, ``bottleneck``).

Only the tests import this (and only when torch is installed).
"""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.disc = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 16, 4, 2), nn.BatchNorm2d(16), nn.LeakyReLU(0.2)),
            nn.Sequential(nn.Conv2d(16, 32, 4, 2), nn.BatchNorm2d(32), nn.LeakyReLU(0.2)),
            nn.Sequential(nn.Conv2d(32, 64, 4, 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.disc(x).flatten(1)


class Decoder(nn.Module):
    def __init__(self, latent: int):
        super().__init__()
        self.latent = latent
        self.gen = nn.Sequential(
            nn.Sequential(nn.ConvTranspose2d(latent, 256, 3, 2), nn.BatchNorm2d(256), nn.ReLU()),
            nn.Sequential(nn.ConvTranspose2d(256, 128, 4, 1), nn.BatchNorm2d(128), nn.ReLU()),
            nn.Sequential(nn.ConvTranspose2d(128, 64, 3, 2), nn.BatchNorm2d(64), nn.ReLU()),
            nn.Sequential(nn.ConvTranspose2d(64, 1, 4, 2), nn.Sigmoid()),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.gen(z.view(-1, self.latent, 1, 1))


class TorchConvVAE(nn.Module):
    def __init__(self, latent: int = 40):
        super().__init__()
        self.enc, self.dec = Encoder(), Decoder(latent)
        self.fc_mu, self.fc_logvar = nn.Linear(64, latent), nn.Linear(64, latent)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_mu(self.enc(x))


class TorchConvAE(nn.Module):
    def __init__(self, latent: int = 40):
        super().__init__()
        self.enc, self.dec = Encoder(), Decoder(latent)
        self.bottleneck = nn.Linear(64, latent)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.enc(x))


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and batch-norm statistics far from their defaults; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith("running_mean") or name.endswith(".bias"):
                tensor.copy_(0.1 * noise)
            elif tensor.ndim == 1:  # batch-norm weight
                tensor.copy_(1.0 + 0.2 * noise)
            else:
                tensor.add_(0.05 * noise)
    return model.eval()
