"""Files as users of the original FPN code hold them, built here with torch and nflows.

The original ``run.py`` saves every model whole (``torch.save(model, ".../checkpoints/model.pkt")``)
with ``config.yaml`` one folder up, and old PyTorch Lightning keyed callback states by class.
A pickle records classes by module path and name only, so a model whose classes are swapped
for same-named subclasses registered under the original's module paths (fake modules in
``sys.modules``, undone by ``monkeypatch``) pickles exactly as the original's does, without
the original repository. Imports torch (and nflows when building flows): import it only after
``importorskip``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.nn import functional as F

MAF_CLASS = "models.flows.autoregressive.MaskedAutoregressiveFlow"
RNVP_CLASS = "models.flows.realnvp.SimpleRealNVP"


def register_class(monkeypatch, base: type, qualified: str) -> type:
    """A subclass of ``base`` importable as ``qualified`` (``package.module.Name``) for this test."""
    module_name, _, name = qualified.rpartition(".")
    parts = module_name.split(".")
    for i in range(1, len(parts) + 1):
        package = ".".join(parts[:i])
        if package not in sys.modules:
            monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    module = sys.modules[module_name]
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        cls = type(name, (base,), {"__module__": module_name, "__qualname__": name})
        monkeypatch.setattr(module, name, cls, raising=False)
    return cls


def rehome(monkeypatch, model: torch.nn.Module, names: dict[type, str]) -> torch.nn.Module:
    """Gives ``model`` and its submodules of the classes in ``names`` those classes' original paths."""
    for module in model.modules():
        if type(module) in names:
            module.__class__ = register_class(monkeypatch, type(module), names[type(module)])
    return model


def maf(features, context, hidden, *, num_layers=2, num_blocks=1, bn=False, embedding=None, dropout=0.0,
        residual=True, random_masks=False, random_permutations=False) -> torch.nn.Module:
    """A MaskedAutoregressiveFlow's layers (the original's constructor arguments, nflows 0.14)."""
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.normalization import BatchNorm
    from nflows.transforms.permutations import RandomPermutation, ReversePermutation

    layers, conditioner = [], embedding.out_features if embedding else context
    for _ in range(num_layers):
        layers.append((RandomPermutation if random_permutations else ReversePermutation)(features))
        layers.append(MaskedAffineAutoregressiveTransform(
            features=features, hidden_features=hidden, context_features=conditioner,
            num_blocks=num_blocks, use_residual_blocks=residual, random_mask=random_masks, activation=F.relu,
            dropout_probability=dropout, use_batch_norm=bn,
        ))
        if bn:
            layers.append(BatchNorm(features))
    return Flow(CompositeTransform(layers), StandardNormal([features]), embedding_net=embedding)


def rnvp(features, context, hidden, *, num_layers=2, num_blocks=1, bn=False, dropout=0.0,
         volume_preserving=False, activation=F.relu) -> torch.nn.Module:
    """A SimpleRealNVP's layers: alternating checkerboard couplings (nflows 0.14)."""
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.nn.nets import ResidualNet
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.coupling import AdditiveCouplingTransform, AffineCouplingTransform
    from nflows.transforms.normalization import BatchNorm

    mask = torch.ones(features)
    mask[::2] = -1
    layers = []
    for _ in range(num_layers):
        coupling = AdditiveCouplingTransform if volume_preserving else AffineCouplingTransform
        layers.append(coupling(mask=mask, transform_net_create_fn=lambda i, o: ResidualNet(
            i, o, hidden_features=hidden, context_features=context, num_blocks=num_blocks, activation=activation,
            dropout_probability=dropout, use_batch_norm=bn,
        )))
        mask *= -1
        if bn:
            layers.append(BatchNorm(features=features))
    return Flow(CompositeTransform(layers), StandardNormal([features]))


@torch.no_grad()
def perturbed(model: torch.nn.Module, seed: int = 0, damp: float = 0.3) -> torch.nn.Module:
    """Random weights and statistics away from their defaults (final layers damped); eval mode."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point() or name.endswith((".mask", ".degrees")):
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if name.endswith("running_var"):
            tensor.copy_(torch.exp(0.3 * noise))
        elif tensor.dim() == 2:
            tensor.add_(noise * (damp if "final_layer" in name else 0.5) / tensor.shape[1] ** 0.5)
        else:
            tensor.add_(0.1 * noise)
    return model.eval()


def save_like_run_py(model: torch.nn.Module, root: Path, config: dict) -> Path:
    """``torch.save(model)`` to ``root/version_0/checkpoints/model.pkt``, ``config.yaml`` one up."""
    folder = root / "version_0"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save(model, folder / "checkpoints" / "model.pkt")
    return folder / "checkpoints" / "model.pkt"


def flow_config(name: str, **params) -> dict:
    """The original's config.yaml layout for a flow (``model_params.name``: MAF or RNVP)."""
    return {"model_params": {"name": name, "type": "flow", "params": params},
            "logging_params": {"save_dir": "logs/mnist/", "name": name, "manual_seed": 1265}}


def inputs(features: int, context: int, n: int = 9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian rows and one-hot contexts."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, features)).astype(np.float32)
    return z, np.eye(context, dtype=np.float32)[rng.integers(0, context, n)]


@torch.no_grad()
def torch_log_prob(flow: torch.nn.Module, z: np.ndarray, context: np.ndarray) -> np.ndarray:
    """nflows' log-density of ``z`` given ``context``."""
    return flow.log_prob(torch.from_numpy(z), torch.from_numpy(context)).numpy()
