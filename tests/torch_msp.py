"""A PyTorch reference of MSP's VAE, copied from the original's definition (lissomx/MSP @5b4e7cc).

``Encoder``, ``Decoder`` and ``CnnVae`` (``encode``, ``reparameterize``, ``loss``,
``predict``) are ``M_ModelAE_Cnn.py``'s, unchanged apart from layout: module names and the
order of ``nn.Sequential`` layers are the original's, so the state dict has the keys of
``MSP_CelebA.tch``. Like the original, ``CnnVae`` does not pass ``nc`` on to its encoder
and decoder (always 3 channels). ``perturbed`` gives random weights and non-trivial batch-norm
statistics; ``activations`` records every block's output. Run it in float64 for reference
values.

Only the tests import this (and only when torch is installed).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the original's name)


class Encoder(nn.Module):
    # only for square pics with width or height is n^(2x)
    def __init__(self, image_size, nf, hidden_size=None, nc=3):
        super().__init__()
        self.image_size = image_size
        self.hidden_size = hidden_size
        sequens = [
            nn.Conv2d(nc, nf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        while True:
            image_size = image_size / 2
            if image_size > 4:
                sequens.append(nn.Conv2d(nf, nf * 2, 4, 2, 1, bias=False))
                sequens.append(nn.BatchNorm2d(nf * 2))
                sequens.append(nn.LeakyReLU(0.2, inplace=True))
                nf = nf * 2
            else:
                if hidden_size is None:
                    self.hidden_size = int(nf)
                sequens.append(nn.Conv2d(nf, self.hidden_size, int(image_size), 1, 0, bias=False))
                break
        self.main = nn.Sequential(*sequens)

    def forward(self, input):
        return self.main(input).squeeze(3).squeeze(2)


class Decoder(nn.Module):
    # only for square pics with width or height is n^(2x)
    def __init__(self, image_size, nf, hidden_size=None, nc=3):
        super().__init__()
        self.image_size = image_size
        self.hidden_size = hidden_size
        sequens = [
            nn.Tanh(),
            nn.ConvTranspose2d(nf, nc, 4, 2, 1, bias=False),
        ]
        while True:
            image_size = image_size / 2
            sequens.append(nn.ReLU(True))
            sequens.append(nn.BatchNorm2d(nf))
            if image_size > 4:
                sequens.append(nn.ConvTranspose2d(nf * 2, nf, 4, 2, 1, bias=False))
            else:
                if hidden_size is None:
                    self.hidden_size = int(nf)
                sequens.append(nn.ConvTranspose2d(self.hidden_size, nf, int(image_size), 1, 0, bias=False))
                break
            nf = nf * 2
        sequens.reverse()
        self.main = nn.Sequential(*sequens)

    def forward(self, z):
        z = z.unsqueeze(2).unsqueeze(2)
        output = self.main(z)
        return output

    def loss(self, predict, orig):
        batch_size = predict.shape[0]
        a = predict.view(batch_size, -1)
        b = orig.view(batch_size, -1)
        L = F.mse_loss(a, b, reduction="sum")  # noqa: N806
        return L


class CnnVae(nn.Module):
    def __init__(self, image_size, label_size, nf, hidden_size=None, nc=3):
        super().__init__()
        self.encoder = Encoder(image_size, nf, hidden_size)
        self.decoder = Decoder(image_size, nf, hidden_size)
        self.image_size = image_size
        self.nc = nc
        self.label_size = label_size
        self.hidden_size = self.encoder.hidden_size

        self.fc1 = nn.Linear(self.hidden_size, self.hidden_size)
        self.fc2 = nn.Linear(self.hidden_size, self.hidden_size)

        self.M = nn.Parameter(torch.empty(label_size, self.hidden_size))
        nn.init.xavier_normal_(self.M)

    def encode(self, x):
        h = self.encoder(x)
        mu = self.fc1(h)
        logvar = self.fc2(h)
        return mu, logvar

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        prod = self.decoder(z)
        return prod, z, mu, logvar

    def _loss_vae(self, mu, logvar):
        KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())  # noqa: N806
        return KLD

    def _loss_msp(self, label, z):
        L1 = F.mse_loss((z @ self.M.t()).view(-1), label.view(-1), reduction="none").sum()  # noqa: N806
        L2 = F.mse_loss((label @ self.M).view(-1), z.view(-1), reduction="none").sum()  # noqa: N806
        return L1 + L2

    def loss(self, prod, orgi, label, z, mu, logvar):
        L_rec = self.decoder.loss(prod, orgi)  # noqa: N806
        L_vae = self._loss_vae(mu, logvar)  # noqa: N806
        L_msp = self._loss_msp(label, z)  # noqa: N806
        _msp_weight = orgi.numel() / (label.numel() + z.numel())
        Loss = L_rec + L_vae + L_msp * _msp_weight  # noqa: N806
        return Loss, L_rec.item(), L_vae.item(), L_msp.item()

    def predict(self, x, new_ls=None, weight=1.0):
        z, _ = self.encode(x)
        if new_ls is not None:
            zl = z @ self.M.t()
            d = torch.zeros_like(zl)
            for i, v in new_ls:
                d[:, i] = v * weight - zl[:, i]
            z += d @ self.M
        prod = self.decoder(z)
        return prod


# -- test helpers ------------------------------------------------------------------------------
def perturbed(model: CnnVae, seed: int) -> CnnVae:
    """Random weights U(±√(3/fan_in)) (variance 1/fan_in: √3 times torch's default bound, so that
    activations stay of order one through the layers), batch norms with random affine maps and
    running statistics (means ±0.3, variances in [0.5, 2]), counters ≠ 0; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.3 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.3 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
                module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=generator)))
            elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                bound = (3 / module.weight[0].numel()) ** 0.5  # fan_in as torch's (ConvTranspose2d: out·k²)
                module.weight.copy_(bound * (2 * torch.rand(module.weight.shape, generator=generator) - 1))
                if module.bias is not None:
                    module.bias.copy_(bound * (2 * torch.rand(module.bias.shape, generator=generator) - 1))
        model.M.copy_(torch.randn(model.M.shape, generator=generator) * (2 / sum(model.M.shape)) ** 0.5)
    return model.eval()


def activations(sequential: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of every activation module (LeakyReLU, ReLU, Tanh) and of a last conv without one."""
    out = []
    h = x
    for i, module in enumerate(sequential):
        h = module(h)
        is_activation = isinstance(module, (nn.LeakyReLU, nn.ReLU, nn.Tanh))
        if is_activation or i == len(sequential) - 1:
            out.append(h.clone())
    return out
