"""nflows 0.14 ``Flow`` state dicts → ``ConditionalMAF`` / ``ConditionalRealNVP``.

The original FPN code built its flows with nflows 0.14 as ``Flow(CompositeTransform(layers),
StandardNormal([D]), embedding_net)`` where, per layer,

* MAF: ``[ReversePermutation(D), MaskedAffineAutoregressiveTransform(D, H, C, num_blocks=B,
  use_residual_blocks=True, random_mask=False, use_batch_norm=bn_within), (BatchNorm(D))]``
* RealNVP: ``[AffineCouplingTransform(mask, ResidualNet(.., H, C, num_blocks=B,
  use_batch_norm=bn_within)), (BatchNorm(D))]`` with ``mask = ones(D); mask[::2] = -1``,
  ``mask *= -1`` after every layer (``mask > 0``: transformed).

fpn-jax mirrors these layer for layer; layer ``i`` of nflows is index ``i`` of every stacked
array under ``flow.transform.layers`` (``Repeat``). Key mapping, ``T = _transform._transforms``
and ``k`` the index of the layer's first transform (``i * (2 + bn_between)`` for MAF,
``i * (1 + bn_between)`` for RealNVP); every ``Linear``: ``kernel = weight.T``::

    _embedding_net.{weight,bias}              embedding.{kernel,bias} (a torch Linear, or none)
    T.k._permutation                          Reverse (checked to be D-1..0)
    T.{k+1}.autoregressive_net.X              bijectors[1].made.X, X in
        initial_layer, context_layer, final_layer       (same names; final layer keeps the
                                                         interleaved (raw scale, shift) pairs:
                                                         nflows ``view(-1, D, 2)[..., 0]`` is
                                                         the scale, ``[..., 1]`` the shift)
        blocks.j.linear_layers.{0,1}          blocks[j].linear_{0,1}
        blocks.j.context_layer                blocks[j].context_layer
        blocks.j.batch_norm_layers.n.{weight,bias,running_mean,running_var}
                                              blocks[j].batch_norms[n].{scale,bias,mean,var}
        *.mask, *.degrees                     not stored: recomputed (masks checked equal)
    T.k.transform_net.X                       bijectors[0].net.X, same block names
        initial_layer (H, n_id + C)           rows ``[:n_id]`` and ``[h:]`` of our (h + C, H)
                                              kernel, h = ceil(D/2) (row n_id < h, for odd D
                                              the pad of the identity half, stays 0)
        final_layer (2 n_tr, H)               ``[:n_tr]`` shift → columns ``[:n_tr]``,
                                              ``[n_tr:]`` raw scale → ``[h : h + n_tr]`` of our
                                              (H, 2h) kernel; the pad's column stays 0
    T.k.{identity,transform}_features         parity ``i % 2`` (checked: layer 0 transforms odd
                                              positions); RealNVP gets scale_function="sigmoid"
    T.{last of the layer}.{unconstrained_weight,bias,running_mean,running_var}
                                              bijectors[-1].<same names> (BatchNorm bijector)

Both libraries use the same epsilons (1e-3 for the scale floor and the residual blocks'
``BatchNorm1d``, 1e-5 for the ``BatchNorm`` bijector) and nflows' data → noise ``forward`` is
our ``inverse``. The kind (MAF or RealNVP) and every size are read from the keys and shapes.
Not stored in a state dict: the activation (ReLU, as in the original code) and the dropout
rate (irrelevant in eval mode); a whole pickled flow (the original ``run.py``'s ``model.pkt``,
read without running it, see ``fpn_jax.convert.pickled``) records both, and the original's
``config.yaml`` beside the file records the dropout rate; otherwise pass them as overrides.
Anything else nflows can express (a MAF without residual blocks, random masks or permutations,
volume-preserving couplings, other transforms, an embedding net that is not one ``Linear``, an
unconditional flow) cannot be represented exactly and raises ``UnsupportedVariantError`` (a
``CheckpointError``) saying which variant it is.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax import checkpoint
from fpn_jax.checkpoint import CheckpointError
from fpn_jax.convert.pickled import PickledObject, StandIn
from fpn_jax.convert.torch_io import (
    ConfigMismatchWarning,
    TorchFile,
    UnsupportedVariantError,
    check_destination,
    check_state_dict,
    read_torch_file,
)
from fpn_jax.flows import ConditionalMAF, ConditionalRealNVP
from fpn_jax.nn import made_mask

Kind = Literal["maf", "rnvp"]
StateDict = Mapping[str, np.ndarray]
KeyPath = tuple[str | int, ...]

_T = "_transform._transforms"
_MAIN = {"maf": "autoregressive_net", "rnvp": "transform_net"}
_NAMES = {"maf": "MAF", "rnvp": "RealNVP"}
_ROLES = {  # what ``_transforms`` calls them: the nflows classes
    "perm": "Permutation",
    "made": "MaskedAffineAutoregressiveTransform",
    "coupling": "AffineCouplingTransform",
    "bn": "BatchNorm",
    "?": "unknown",
}
_BN_KEYS = ("unconstrained_weight", "bias", "running_mean", "running_var")
_TORCH_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


# --------------------------------------------------------------------- inference
def _transforms(state: StateDict) -> dict[int, str]:
    """``{index: role}`` of the composite's transforms, role one of perm/made/coupling/bn/?."""
    keys: dict[int, list[str]] = {}
    for key in state:
        if m := re.fullmatch(rf"{re.escape(_T)}\.(\d+)\.(.+)", key):
            keys.setdefault(int(m[1]), []).append(m[2])
    roles = {}
    for index, names in sorted(keys.items()):
        if "_permutation" in names:
            roles[index] = "perm"
        elif any(n.startswith("autoregressive_net.") for n in names):
            roles[index] = "made"
        elif any(n.startswith("transform_net.") for n in names):
            roles[index] = "coupling"
        elif "unconstrained_weight" in names or "running_mean" in names:
            roles[index] = "bn"
        else:
            roles[index] = "?"
    return roles


def _shape(state: StateDict, prefixes: list[str], suffix: str) -> tuple[int, ...] | None:
    """The most common shape of ``prefix + suffix`` over the layers, or None if no layer has it.

    Taking the most common shape means one bad layer is then reported as a mismatch instead
    of skewing the inferred architecture.
    """
    shapes = Counter(tuple(np.shape(state[p + suffix])) for p in prefixes if p + suffix in state)
    return shapes.most_common(1)[0][0] if shapes else None


def _unsupported(source: str, variant: str, detail: str, supported: str) -> UnsupportedVariantError:
    return UnsupportedVariantError(
        f"{source} is {variant} ({detail}), which fpn-jax cannot represent exactly ({supported}): this "
        "variant is not supported.",
        variant,
    )


def _cycling_degrees(n: int, features: int) -> np.ndarray:
    """The non-random hidden degrees of nflows' MADE: ``arange(n) % max(1, D - 1) + min(1, D - 1)``."""
    return np.arange(n) % max(1, features - 1) + min(1, features - 1)


def check_nflows_variant(state_dict: StateDict, *, source: str = "state_dict") -> None:
    """Says plainly which unsupported nflows variant a state dict is, if it is one.

    Checked from the keys and buffers: a MAF without residual blocks (``MaskedFeedforwardBlock``
    s, ``use_residual_blocks=False``), possibly with random masks; MADE random masks; random
    permutations; volume-preserving (additive) couplings; transforms that neither original flow
    has.

    Args:
      state_dict: ``{key: array}`` of an nflows ``Flow``.
      source: name of the state dict's origin, for the message.

    Raises:
      UnsupportedVariantError: naming the variant.
    """
    roles = _transforms(state_dict)
    feedforward = re.compile(rf"{re.escape(_T)}\.\d+\.autoregressive_net\.blocks\.\d+\.linear\.")
    hidden_degrees = [
        k for k in state_dict
        if ".autoregressive_net." in k and k.endswith(".degrees") and ".final_layer." not in k
    ]
    features = next(
        (int(np.shape(v)[1]) for k, v in state_dict.items() if k.endswith("autoregressive_net.initial_layer.weight")),
        0,
    )
    random_masks = features > 0 and any(
        not np.array_equal(state_dict[k], _cycling_degrees(len(state_dict[k]), features)) for k in hidden_degrees
    )
    if any(feedforward.match(k) for k in state_dict):
        variant = "an nflows MAF without residual blocks" + (" and with random masks" if random_masks else "")
        flags = "use_residual_blocks=False" + (", use_random_masks=True" if random_masks else "")
        raise _unsupported(
            source, variant, f"MaskedAutoregressiveFlow({flags}): its MADEs are built of MaskedFeedforwardBlocks",
            "fpn-jax's ConditionalMAF has residual blocks with degree-cycling masks (use_residual_blocks=True, "
            "use_random_masks=False, the original FPN code's defaults)",
        )
    if random_masks:
        raise _unsupported(
            source, "an nflows MAF with random masks", "use_random_masks=True: its MADE degrees are not nflows' "
            "cycling ones", "fpn-jax's ConditionalMAF uses degree-cycling masks (use_random_masks=False)",
        )
    permutations = [i for i, r in roles.items() if r == "perm"]
    for index, role in roles.items():
        if role == "perm":
            perm = np.asarray(state_dict[f"{_T}.{index}._permutation"])
            if not np.array_equal(perm, np.arange(len(perm))[::-1]):
                raise _unsupported(
                    source, "an nflows MAF with random permutations",
                    f"use_random_permutations=True: layer {permutations.index(index)}'s permutation "
                    f"{_T}.{index}._permutation is not the reversal D-1..0",
                    "fpn-jax's ConditionalMAF reverses the features between layers (ReversePermutation)",
                )
        elif role == "coupling":
            trans = state_dict.get(f"{_T}.{index}.transform_features")
            final = state_dict.get(f"{_T}.{index}.transform_net.final_layer.weight")
            if trans is not None and final is not None and np.shape(final)[0] == np.shape(trans)[0]:
                raise _unsupported(
                    source, "a volume-preserving nflows RealNVP",
                    "SimpleRealNVP(use_volume_preserving=True): AdditiveCouplingTransforms, shift only",
                    "fpn-jax's ConditionalRealNVP has affine couplings (scale and shift)",
                )
        elif role == "?":
            names = sorted({k.split(".", 3)[3] for k in state_dict if k.startswith(f"{_T}.{index}.")})
            raise _unsupported(
                source, "an nflows flow with a transform neither original flow has",
                f"{_T}.{index} holds {names[:6]}",
                "fpn-jax converts the original MAF (ReversePermutation, MaskedAffineAutoregressiveTransform, "
                "BatchNorm) and RealNVP (AffineCouplingTransform, BatchNorm)",
            )


def detect_nflows_kind(state_dict: StateDict, *, source: str = "state_dict") -> Kind:
    """Tells an nflows MAF from a RealNVP by its keys.

    Args:
      state_dict: ``{key: array}`` of an nflows ``Flow``.
      source: name of the state dict's origin, for the message.

    Returns:
      ``"maf"`` (``MaskedAffineAutoregressiveTransform`` s) or ``"rnvp"``
      (``AffineCouplingTransform`` s).

    Raises:
      CheckpointError: neither, or both.
    """
    found = {r for r in _transforms(state_dict).values() if r in ("made", "coupling")}
    if len(found) == 1:
        return "maf" if found == {"made"} else "rnvp"
    sample = ", ".join(list(state_dict)[:6])
    what = "both MADE and coupling transforms" if found else f"no '{_T}.N.{{autoregressive_net,transform_net}}.*' keys"
    raise CheckpointError(
        f"{source} is not an nflows MAF or RealNVP state_dict: {what} (keys such as {sample})."
    )


def infer_nflows_config(
    state_dict: StateDict, kind: Kind | None = None, *, source: str = "state_dict"
) -> dict[str, Any]:
    """Infers the fpn-jax constructor arguments of an nflows ``Flow`` from its keys and shapes.

    Args:
      state_dict: ``{key: array}`` of the nflows ``Flow`` (see ``read_state_dict``).
      kind: ``"maf"`` or ``"rnvp"``, checked against the keys; read from them by default.
      source: name of the state dict's origin, for error messages.

    Returns:
      Keyword arguments of ``ConditionalMAF`` / ``ConditionalRealNVP`` (``features``,
      ``context_features``, ``hidden_features``, ``num_layers``, ``num_blocks``,
      ``batch_norm_within``, ``batch_norm_between``, ``embedding_features``; plus
      ``scale_function="sigmoid"`` for RealNVP), JSON-serialisable.

    Raises:
      UnsupportedVariantError: an nflows variant fpn-jax cannot represent (named).
      CheckpointError: the state dict is not an nflows flow (of this kind), or a size
        cannot be inferred.
    """
    if kind is not None and kind not in _MAIN:
        raise ValueError(f"infer_nflows_config: `kind` must be 'maf', 'rnvp' or None; got {kind!r}.")
    check_nflows_variant(state_dict, source=source)
    if kind is None:
        kind = detect_nflows_kind(state_dict, source=source)
    roles = _transforms(state_dict)
    main = "made" if kind == "maf" else "coupling"
    layers = [i for i, r in roles.items() if r == main]
    if not layers:
        found = sorted({_ROLES[r] for r in roles.values()}) or [f"none (no '{_T}.N.*' keys)"]
        other = "maf" if kind == "rnvp" else "rnvp"
        sample = ", ".join(list(state_dict)[:6])
        raise CheckpointError(
            f"{source} is not an nflows {_NAMES[kind]} state_dict (kind={kind!r}): no "
            f"'{_T}.N.{_MAIN[kind]}.*' keys; its transforms are {found} (keys such as {sample}). "
            f"Wrong kind? Try kind={other!r}, or give no kind: it is read from the keys."
        )
    prefixes = [f"{_T}.{i}.{_MAIN[kind]}." for i in layers]

    def need(suffix: str) -> tuple[int, ...]:
        shape = _shape(state_dict, prefixes, suffix)
        if shape is None:
            raise CheckpointError(
                f"{source}: cannot infer the architecture, no key '{_T}.N.{_MAIN[kind]}.{suffix}'."
            )
        return shape

    hidden, in_width = need("initial_layer.weight")
    block = re.compile(rf"{re.escape(_T)}\.\d+\.{_MAIN[kind]}\.blocks\.(\d+)\.")
    num_blocks = max((int(m[1]) for k in state_dict if (m := block.match(k))), default=-1) + 1
    bn_within = any(".batch_norm_layers." in k for k in state_dict)
    context = _shape(state_dict, prefixes, "context_layer.weight") or _shape(
        state_dict, prefixes, "blocks.0.context_layer.weight"
    )
    if kind == "maf":
        features = in_width
        if context is None:
            raise CheckpointError(
                f"{source}: the MADEs have no context_layer, i.e. an unconditional nflows flow; "
                "fpn-jax flows are conditional, so it cannot be represented."
            )
        conditioner = context[1]
    else:
        first = [f"{_T}.{layers[0]}."]
        ident, trans = (_shape(state_dict, first, f"{n}_features") for n in ("identity", "transform"))
        if ident is not None and trans is not None:
            features, conditioner = ident[0] + trans[0], in_width - ident[0]
        elif context is not None:  # layer 0 keeps the even positions: ceil(D / 2) of them
            conditioner = context[1]
            n_id = in_width - conditioner
            features = 2 * n_id - 1 if need("final_layer.weight")[0] // 2 < n_id else 2 * n_id
        else:
            raise CheckpointError(
                f"{source}: cannot infer `features`: missing '{_T}.{layers[0]}.identity_features' "
                "and 'transform_features' (buffers of nflows' coupling transforms)."
            )
    config: dict[str, Any] = {
        "features": int(features),
        "context_features": int(conditioner),
        "hidden_features": int(hidden),
        "num_layers": len(layers),
        "num_blocks": num_blocks,
        "batch_norm_within": bn_within,
        "batch_norm_between": "bn" in roles.values(),
        "embedding_features": None,
    }
    if "_embedding_net.weight" in state_dict:
        e, c = np.shape(state_dict["_embedding_net.weight"])
        config["embedding_features"], config["context_features"] = int(e), int(c)
    linear = ("_embedding_net.weight", "_embedding_net.bias")
    other = [k for k in state_dict if k.startswith("_embedding_net.") and k not in linear]
    if other:
        raise CheckpointError(
            f"{source}: the embedding_net is not a single torch.nn.Linear (keys {other}); fpn-jax "
            "supports a linear context embedding or none, so it cannot be represented."
        )
    if kind == "rnvp":
        config["scale_function"] = "sigmoid"
    return config


# --------------------------------------------------------------------- expected layout
def _layer_indices(config: Mapping[str, Any], kind: Kind) -> list[tuple[int, int | None]]:
    """Per layer: (index of its main nflows transform, index of its BatchNorm or None)."""
    bn = bool(config["batch_norm_between"])
    stride = (2 if kind == "maf" else 1) + bn
    first = 1 if kind == "maf" else 0
    starts = range(0, stride * config["num_layers"], stride)
    return [(s + first, s + stride - 1 if bn else None) for s in starts]


def _split(features: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(identity, transformed) positions of RealNVP layer ``layer`` (our parity ``layer % 2``)."""
    positions = np.arange(features)
    transformed = positions % 2 != layer % 2
    return positions[~transformed], positions[transformed]


def expected_nflows_keys(config: Mapping[str, Any], kind: Kind) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the nflows ``Flow`` that ``config`` (our kwargs) corresponds to."""
    d, h, b = config["features"], config["hidden_features"], config["num_blocks"]
    e = config.get("embedding_features")
    c = e or config["context_features"]
    out: dict[str, tuple[int, ...]] = {}

    def linear(name: str, n_out: int, n_in: int, masked: bool = False) -> None:
        out[f"{name}.weight"], out[f"{name}.bias"] = (n_out, n_in), (n_out,)
        if masked:
            out[f"{name}.mask"], out[f"{name}.degrees"] = (n_out, n_in), (n_out,)

    if e:
        linear("_embedding_net", e, config["context_features"])
    masked = kind == "maf"
    for i, (k, k_bn) in enumerate(_layer_indices(config, kind)):
        if kind == "maf":
            out[f"{_T}.{k - 1}._permutation"] = (d,)
            p, n_in, n_out = f"{_T}.{k}.autoregressive_net.", d, 2 * d
            linear(p + "context_layer", h, c)
        else:
            ident, trans = _split(d, i)
            out[f"{_T}.{k}.identity_features"] = (len(ident),)
            out[f"{_T}.{k}.transform_features"] = (len(trans),)
            p, n_in, n_out = f"{_T}.{k}.transform_net.", len(ident) + c, 2 * len(trans)
        linear(p + "initial_layer", h, n_in, masked)
        for j in range(b):
            q = f"{p}blocks.{j}."
            linear(q + "context_layer", h, c)
            for n in range(2):
                linear(f"{q}linear_layers.{n}", h, h, masked)
            if config["batch_norm_within"]:
                for n in range(2):
                    for name in _TORCH_BN:
                        out[f"{q}batch_norm_layers.{n}.{name}"] = (h,)
        linear(p + "final_layer", n_out, h, masked)
        if k_bn is not None:
            for name in _BN_KEYS:
                out[f"{_T}.{k_bn}.{name}"] = (d,)
    return out


# --------------------------------------------------------------------- conversion
def _architecture(config: Mapping[str, Any], kind: Kind) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in config.items() if k != "activation")
    return f"an nflows {_NAMES[kind]} ({args})"


def _check_structure(state: StateDict, config: Mapping[str, Any], kind: Kind, source: str) -> None:
    """What shapes cannot tell: permutations, coupling masks and MADE masks must be ours."""
    d = config["features"]
    for i, (k, _) in enumerate(_layer_indices(config, kind)):
        if kind == "maf":
            perm = state[f"{_T}.{k - 1}._permutation"]
            if not np.array_equal(perm, np.arange(d)[::-1]):
                raise CheckpointError(
                    f"{source}: layer {i}'s permutation ({_T}.{k - 1}._permutation) is not the "
                    "reversal D-1..0 (a RandomPermutation?); fpn-jax's MAF cannot represent it."
                )
            for key, value in state.items():
                if key.startswith(f"{_T}.{k}.") and key.endswith(".mask"):
                    roles = _made_roles(key)
                    ours = made_mask(roles[0], value.shape[1], roles[1], value.shape[0], d).T
                    if not np.array_equal(value, ours):
                        raise CheckpointError(
                            f"{source}: MADE mask {key} differs from fpn-jax's degree-cycling "
                            "masks (random_mask=True?); it cannot be represented."
                        )
        else:
            ident, trans = _split(d, i)
            got, kept = state[f"{_T}.{k}.transform_features"], state[f"{_T}.{k}.identity_features"]
            if not np.array_equal(got, trans) or not np.array_equal(kept, ident):
                raise CheckpointError(
                    f"{source}: coupling layer {i} transforms positions {got.tolist()}, but fpn-jax's "
                    f"RealNVP alternates checkerboards (layer {i}: {trans.tolist()}, from nflows' "
                    "mask = ones(D); mask[::2] = -1; mask *= -1 per layer); it cannot be represented."
                )


def _made_roles(key: str) -> tuple[str, str]:
    if ".initial_layer." in key:
        return "input", "hidden"
    return ("hidden", "output") if ".final_layer." in key else ("hidden", "hidden")


def _kernel(state: StateDict, name: str) -> tuple[np.ndarray, np.ndarray]:
    return state[f"{name}.weight"].T, state[f"{name}.bias"]


def _put_linear(acc: dict[KeyPath, list], path: KeyPath, kernel: np.ndarray, bias: np.ndarray) -> None:
    acc.setdefault((*path, "kernel"), []).append(kernel)
    acc.setdefault((*path, "bias"), []).append(bias)


def _put_blocks(
    acc: dict[KeyPath, list], state: StateDict, prefix: str, path: KeyPath, config: Mapping[str, Any]
) -> None:
    for j in range(config["num_blocks"]):
        q, at = f"{prefix}blocks.{j}.", (*path, "blocks", j)
        _put_linear(acc, (*at, "context_layer"), *_kernel(state, q + "context_layer"))
        for n in range(2):
            _put_linear(acc, (*at, f"linear_{n}"), *_kernel(state, f"{q}linear_layers.{n}"))
            if config["batch_norm_within"]:
                for torch_name, ours in _TORCH_BN.items():
                    value = state[f"{q}batch_norm_layers.{n}.{torch_name}"]
                    acc.setdefault((*at, "batch_norms", n, ours), []).append(value)


def _assign(module: nnx.Module, path: KeyPath, value: np.ndarray) -> None:
    target: Any = module
    for part in path:
        target = target[part] if isinstance(part, int) else getattr(target, part)
    if tuple(target.shape) != value.shape:  # a converter bug, not a user error
        raise AssertionError(f"{path}: built {value.shape} for a variable of shape {target.shape}")
    target.set_value(jnp.asarray(value, target.dtype))


def _load(
    flow: ConditionalMAF | ConditionalRealNVP, state: StateDict, config: Mapping[str, Any], kind: Kind
) -> None:
    """Sets every array of ``flow`` (abstract, built from ``config``) from a checked state dict."""
    d = config["features"]
    acc: dict[KeyPath, list] = {}
    base: KeyPath = ("transform", "layers", "bijectors")
    for i, (k, k_bn) in enumerate(_layer_indices(config, kind)):
        if kind == "maf":
            p, at = f"{_T}.{k}.autoregressive_net.", (*base, 1, "made")
            for name in ("initial_layer", "context_layer", "final_layer"):
                _put_linear(acc, (*at, name), *_kernel(state, p + name))
        else:
            p, at = f"{_T}.{k}.transform_net.", (*base, 0, "net")
            # Ours: the identity and transformed halves padded to h = ceil(D/2) (for odd D one
            # of them has a pad, a zero row / unused column); nflows': their true sizes.
            ident, trans = _split(d, i)
            h, n_id, n = (d + 1) // 2, len(ident), len(trans)
            w, b = _kernel(state, p + "initial_layer")  # rows: [identity features, context]
            kernel = np.zeros((h + w.shape[0] - n_id, w.shape[1]), w.dtype)
            kernel[:n_id], kernel[h:] = w[:n_id], w[n_id:]
            _put_linear(acc, (*at, "initial_layer"), kernel, b)
            w, b = _kernel(state, p + "final_layer")  # columns: [shift, raw scale] of `trans`
            kernel, bias = np.zeros((len(w), 2 * h), w.dtype), np.zeros(2 * h, b.dtype)
            kernel[:, :n], kernel[:, h : h + n] = w[:, :n], w[:, n:]
            bias[:n], bias[h : h + n] = b[:n], b[n:]
            _put_linear(acc, (*at, "final_layer"), kernel, bias)
        _put_blocks(acc, state, p, at, config)
        if k_bn is not None:
            for name in _BN_KEYS:
                acc.setdefault((*base, -1, name), []).append(state[f"{_T}.{k_bn}.{name}"])
    arrays = {path: np.stack(values) for path, values in acc.items()}
    if kind == "rnvp":
        arrays[(*base, 0, "parity")] = np.arange(config["num_layers"]) % 2
    if flow.embedding is not None:
        arrays[("embedding", "kernel")], arrays[("embedding", "bias")] = _kernel(state, "_embedding_net")
    for path, value in arrays.items():
        _assign(flow, path, value)
    leaves = jax.tree.leaves_with_path(nnx.state(flow))
    unset = [jax.tree_util.keystr(p) for p, v in leaves if isinstance(v, jax.ShapeDtypeStruct)]
    if unset:  # a converter bug, not a user error
        raise AssertionError(f"converter bug: variables left unset: {unset}")


# --------------------------------------------------------------------- pickles and config.yaml
#: What the original code's and nflows' flow classes are called in a pickle (``model.pkt``).
FLOW_CLASSES = frozenset({
    "models.flows.autoregressive.MaskedAutoregressiveFlow",
    "models.flows.realnvp.SimpleRealNVP",
    "flows.autoregressive.MaskedAutoregressiveFlow",
    "flows.realnvp.SimpleRealNVP",
    "flows.base.Flow",
    "nflows.flows.base.Flow",
    "nflows.flows.autoregressive.MaskedAutoregressiveFlow",
    "nflows.flows.realnvp.SimpleRealNVP",
})
_TRANSFORM_ROLES = {  # nflows class name → what it is in the original flows
    "ReversePermutation": "perm",
    "MaskedAffineAutoregressiveTransform": "maf",
    "AffineCouplingTransform": "rnvp",
    "BatchNorm": "bn",
}
_UNSUPPORTED_TRANSFORMS = {
    "RandomPermutation": ("an nflows MAF with random permutations", "use_random_permutations=True",
                          "fpn-jax's ConditionalMAF reverses the features between layers (ReversePermutation)"),
    "AdditiveCouplingTransform": ("a volume-preserving nflows RealNVP",
                                  "SimpleRealNVP(use_volume_preserving=True): additive couplings, shift only",
                                  "fpn-jax's ConditionalRealNVP has affine couplings (scale and shift)"),
}
#: torch activations (last name of the pickled function) with an exact ``jax.nn`` equal.
_ACTIVATIONS = {"relu", "tanh", "sigmoid", "elu", "silu", "leaky_relu", "softplus", "selu", "celu"}
_CONFIG_NAMES = {"MAF": "maf", "RNVP": "rnvp"}
_CONFIG_SIZES = {  # the original's constructor argument → ours, default
    "features": ("features", None),
    "hidden_features": ("hidden_features", None),
    "context_features": ("context_features", None),
    "embedding_features": ("embedding_features", None),
    "num_layers": ("num_layers", 5),
    "num_blocks_per_layer": ("num_blocks", 2),
    "batch_norm_within_layers": ("batch_norm_within", False),
    "batch_norm_between_layers": ("batch_norm_between", False),
}


def describe_pickled_flow(module: PickledObject, *, source: str = "the pickle") -> dict[str, Any]:
    """What a pickled nflows flow (the original ``model.pkt``) says beyond its weights.

    Args:
      module: the pickled flow (``TorchFile.module``).
      source: the file, for messages.

    Returns:
      ``{"kind": "maf" | "rnvp", "activation": name, "dropout": rate}`` (activation and
      dropout only where the pickle holds them).

    Raises:
      UnsupportedVariantError: a transform class, or an activation, fpn-jax's flows do not have.
      CheckpointError: the pickle is not a flow (an autoencoder of the original code, say).
    """
    name = module.qualified_name
    if name not in FLOW_CLASSES:
        hint = ""
        if name.startswith("models.vae."):
            hint = (" It is an autoencoder of the original code: convert it with 'python -m fpn_jax.convert "
                    "autoencoder' (convert_autoencoder).")
        raise CheckpointError(
            f"{source} holds a pickled {name}, not one of the original code's nflows flows "
            f"({', '.join(sorted(c.rpartition('.')[2] for c in FLOW_CLASSES if c.startswith('models.')))}).{hint}"
        )
    transforms = module.get("_transform._transforms")
    children = transforms.children() if isinstance(transforms, PickledObject) else {}
    kinds = set()
    for index, child in children.items():
        short = child.short_name()
        if short in _UNSUPPORTED_TRANSFORMS:
            variant, detail, supported = _UNSUPPORTED_TRANSFORMS[short]
            raise _unsupported(source, variant, f"{detail}; {_T}.{index} is a {child.qualified_name}", supported)
        role = _TRANSFORM_ROLES.get(short)
        if role is None or not child.qualified_name.startswith("nflows."):
            raise _unsupported(
                source, "an nflows flow with a transform neither original flow has",
                f"{_T}.{index} is a {child.qualified_name}",
                "fpn-jax converts the original MAF (ReversePermutation, MaskedAffineAutoregressiveTransform, "
                "BatchNorm) and RealNVP (AffineCouplingTransform, BatchNorm)",
            )
        kinds.add(role)
    found: dict[str, Any] = {}
    if len(kinds & {"maf", "rnvp"}) == 1:
        found["kind"] = (kinds & {"maf", "rnvp"}).pop()
    for path, sub in module.named_modules():
        activation = sub.attributes.get("activation")
        if "activation" not in found and isinstance(activation, type) and issubclass(activation, StandIn):
            short = activation.short_name()
            if short not in _ACTIVATIONS or not activation.qualified_name.startswith("torch."):
                raise _unsupported(
                    source, f"an nflows flow with the activation {activation.qualified_name}",
                    f"{path}.activation", f"fpn-jax converts torch's {', '.join(sorted(_ACTIVATIONS))}",
                )
            found["activation"] = short
        if "dropout" not in found and sub.qualified_name == "torch.nn.modules.dropout.Dropout":
            found["dropout"] = float(sub.attributes.get("p", 0.0))
    return found


def _config_hints(file: TorchFile) -> dict[str, Any]:
    """The kind, dropout and sizes the original code's ``config.yaml`` beside the file records."""
    if file.config is None:
        return {}
    model = file.config["model_params"]
    params = model["params"]
    hints: dict[str, Any] = {"name": str(model["name"]), "sizes": {}}
    if model["name"] in _CONFIG_NAMES:
        hints["kind"] = _CONFIG_NAMES[model["name"]]
    if isinstance(params.get("dropout_probability"), (int, float)):
        hints["dropout"] = float(params["dropout_probability"])
    for theirs, (ours, default) in _CONFIG_SIZES.items():
        hints["sizes"][ours] = params.get(theirs, default)
    return hints


def _warn_config_mismatches(file: TorchFile, config: Mapping[str, Any], kind: Kind, hints: Mapping[str, Any]) -> None:
    """Warns where ``config.yaml`` disagrees with the weights (the weights win)."""
    if not hints:
        return
    wrong = []
    if hints.get("kind", kind) != kind or hints["name"] not in _CONFIG_NAMES:
        wrong.append(f"model_params.name is {hints['name']!r}, the weights are an nflows {_NAMES[kind]}")
    for ours, value in hints["sizes"].items():
        if value is not None and ours in config and value != config[ours]:
            wrong.append(f"{ours}: config.yaml {value!r}, the weights {config[ours]!r}")
        elif value is None and ours == "embedding_features" and config.get(ours) is not None:
            wrong.append(f"{ours}: config.yaml none, the weights {config[ours]!r}")
    if wrong:
        warnings.warn(
            f"{file.config_path} does not describe {file.source} (converted as the weights say): "
            + "; ".join(wrong) + ".",
            ConfigMismatchWarning,
            stacklevel=3,
        )


def flow_from_nflows(
    state_dict: StateDict | TorchFile | str | os.PathLike,
    *,
    kind: Kind | None = None,
    context_features: int | None = None,
    source: str | None = None,
    **overrides: Any,
) -> ConditionalMAF | ConditionalRealNVP:
    """Builds the fpn-jax flow equivalent to an nflows 0.14 ``Flow`` and loads its weights.

    The architecture is inferred (``infer_nflows_config``), overridden by ``context_features``
    and ``overrides``, checked against the state dict (every missing/unexpected key and shape
    mismatch is listed), and the weights are copied (see the module docstring for the map).
    From a file, a whole pickled flow adds its activation and dropout rate, and the original
    code's ``config.yaml`` beside the file its dropout rate (``ConfigMismatchWarning`` where it
    disagrees with the weights). The returned flow is in eval mode; ``log_prob``, ``to_noise``
    and ``from_noise`` equal nflows' ``log_prob``, ``_transform(z, ctx)[0]`` and
    ``_transform.inverse(u, ctx)[0]``.

    Args:
      state_dict: ``{key: array}`` of the nflows ``Flow``, a ``TorchFile``, or a path to read
        with ``read_torch_file`` (state dict, Lightning ``.ckpt`` or pickled ``model.pkt``).
      kind: ``"maf"`` (``ConditionalMAF``) or ``"rnvp"`` (``ConditionalRealNVP``), checked
        against the file when given; read from it (the keys) by default.
      context_features: C, if you want it checked; inferred otherwise.
      source: name of the state dict's origin for messages (default: the path).
      **overrides: other constructor arguments, winning over the inferred ones (e.g.
        ``activation``, ``dropout``: not stored in a state dict).

    Returns:
      The converted flow; ``flow.config`` is its configuration.

    Raises:
      UnsupportedVariantError: an nflows variant fpn-jax cannot represent (named).
      CheckpointError: not an nflows flow (of the given kind), keys or shapes that do not
        match, or an unreadable file (see ``read_torch_file``).
    """
    hints: dict[str, Any] = {}
    file = None
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = read_torch_file(state_dict)
    if isinstance(state_dict, TorchFile):
        file, source = state_dict, source or state_dict.source
        hints = _config_hints(file)
        found = describe_pickled_flow(file.module, source=source) if file.module is not None else {}
        defaults = {k: v for k, v in {"dropout": hints.get("dropout"), **found}.items() if v is not None}
        overrides = {k: v for k, v in defaults.items() if k != "kind"} | overrides
        state_dict = file.state
    source = source or "state_dict"
    config = infer_nflows_config(state_dict, kind, source=source)
    kind = kind or detect_nflows_kind(state_dict, source=source)
    if file is not None:
        _warn_config_mismatches(file, config, kind, hints)
    if context_features is not None:
        overrides["context_features"] = context_features
    if overrides.get("scale_function", "sigmoid") != "sigmoid" and kind == "rnvp":
        raise ValueError(
            "flow_from_nflows: nflows' AffineCouplingTransform scales with sigmoid(a + 2) + 1e-3; "
            "`scale_function` must stay 'sigmoid'."
        )
    config.update(overrides)
    expected = expected_nflows_keys(config, kind)
    check_state_dict(state_dict, expected, source=source, architecture=_architecture(config, kind))
    _check_structure(state_dict, config, kind, source)
    cls = ConditionalMAF if kind == "maf" else ConditionalRealNVP
    flow = nnx.eval_shape(lambda: cls(**config, rngs=nnx.Rngs(0)))  # abstract: every array is set below
    _load(flow, state_dict, config, kind)
    flow.eval()
    return flow


def convert_flow(
    source: str | os.PathLike, destination: str | os.PathLike, *, kind: Kind | None = None,
    overwrite: bool = False, **overrides: Any,
) -> Path:
    """Converts an nflows ``Flow`` file into an orbax checkpoint for ``fpn_jax.checkpoint.load``.

    Reads a state dict (``.pt``/``.pth``), a Lightning ``.ckpt`` or the original code's whole
    pickled flow (``model.pkt``, with its ``config.yaml``), without running any code from it
    (``flow_from_nflows``), and writes an orbax checkpoint; nothing is written on failure.

    Args:
      source: the torch file.
      destination: the checkpoint folder to write.
      kind: ``"maf"`` or ``"rnvp"``, checked when given; read from the file by default.
      overwrite: replace an existing ``destination``.
      **overrides: constructor arguments, see ``flow_from_nflows``.

    Returns:
      The checkpoint folder.

    Raises:
      FileExistsError: ``destination`` exists and ``overwrite`` is False (checked first).
      CheckpointError: see ``flow_from_nflows``.
    """
    check_destination(destination, overwrite)
    flow = flow_from_nflows(source, kind=kind, **overrides)
    return checkpoint.save(destination, flow, extra={"converted_from": str(Path(source).absolute())},
                           overwrite=overwrite)
