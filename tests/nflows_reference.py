"""nflows 0.14 reference flows, built exactly as the original FPN code built them.

Imports torch and nflows: import it only after ``pytest.importorskip`` of both.
"""

from __future__ import annotations

import torch
from nflows.distributions.normal import StandardNormal
from nflows.flows.base import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
from nflows.transforms.base import CompositeTransform
from nflows.transforms.coupling import AffineCouplingTransform
from nflows.transforms.normalization import BatchNorm
from nflows.transforms.permutations import ReversePermutation
from torch.nn import functional as F


def maf(D, C, H, *, num_layers=5, num_blocks=2, bn_within=False, bn_between=False, embedding=None):
    layers = []
    for _ in range(num_layers):
        layers.append(ReversePermutation(features=D))
        layers.append(
            MaskedAffineAutoregressiveTransform(
                features=D, hidden_features=H, context_features=C, num_blocks=num_blocks,
                use_residual_blocks=True, random_mask=False, activation=F.relu,
                dropout_probability=0.0, use_batch_norm=bn_within,
            )
        )
        if bn_between:
            layers.append(BatchNorm(features=D))
    return Flow(CompositeTransform(layers), StandardNormal([D]), embedding_net=embedding)


def rnvp(D, C, H, *, num_layers=5, num_blocks=2, bn_within=False, bn_between=False, embedding=None):
    layers = []
    mask = torch.ones(D)
    mask[::2] = -1
    for _ in range(num_layers):
        layers.append(
            AffineCouplingTransform(
                mask=mask,
                transform_net_create_fn=lambda i, o: ResidualNet(
                    i, o, hidden_features=H, context_features=C, num_blocks=num_blocks,
                    activation=F.relu, dropout_probability=0.0, use_batch_norm=bn_within,
                ),
            )
        )
        mask *= -1
        if bn_between:
            layers.append(BatchNorm(features=D))
    return Flow(CompositeTransform(layers), StandardNormal([D]), embedding_net=embedding)


BUILDERS = {"maf": maf, "rnvp": rnvp}


@torch.no_grad()
def perturb(flow: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> torch.nn.Module:
    """Adds noise to every float parameter and buffer: nflows starts its MADE/residual output
    layers near zero and its batch norms at identity/zero statistics, where bugs hide.

    Weights get ``N(0, (scale / sqrt(fan_in))²)``, other tensors ``N(0, (scale / 5)²)``;
    running variances become ``exp(N(0, scale²))`` (> 0; nflows' ``BatchNorm`` starts them at 0).
    """
    g = torch.Generator().manual_seed(seed)
    for name, t in flow.state_dict().items():
        if not t.is_floating_point():
            continue
        noise = torch.randn(t.shape, generator=g, dtype=t.dtype)
        if name.endswith("running_var"):
            t.copy_(torch.exp(scale * noise))
        elif name.endswith("weight") and t.dim() == 2:
            t.add_(scale / t.shape[1] ** 0.5 * noise)
        elif not name.endswith((".mask", ".degrees")):
            t.add_(scale / 5 * noise)
    return flow.eval()
