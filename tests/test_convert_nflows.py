"""nflows 0.14 → fpn-jax conversion: exact parity with the reference flows, and clean errors.

Tolerance: every comparison allows ``1e-5 + 1e-6 · max|reference|``, i.e. 1e-5 absolute
plus ~8 float32 ulps of the largest value: log-densities reach |log p| ≈ 400 at D = 128,
where one float32 ulp is already 3e-5 and the two libraries sum in different orders.
"""

from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nflows")

import nflows_reference as ref  # noqa: E402

from fpn_jax import ConditionalMAF, ConditionalRealNVP  # noqa: E402
from fpn_jax.convert.nflows import flow_from_nflows, infer_nflows_config  # noqa: E402
from fpn_jax.convert.torch_io import CheckpointError, check_state_dict, read_state_dict  # noqa: E402

CONFIGS = {  # name: (D, H, C, batch norm within and between, batch sizes)
    "small": (40, 40, 10, False, (1, 7, 256)),
    "bn": (40, 100, 10, True, (256,)),
    "large": (128, 1024, 55, False, (7,)),
}
KINDS = ("maf", "rnvp")
# A MAF's noise -> data recursion y_i = (u_i - m_i(y_<i)) / s_i amplifies errors through the
# shift's dependence on y_<i; with randomly perturbed weights at full size it overflows to
# inf/nan in both libraries. Damping the MADEs' final layers keeps it well-conditioned, as
# in a trained flow.
MAF_SAMPLING_DAMP = 0.1


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op torch thread


def numpy_state(flow: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in flow.state_dict().items()}


@torch.no_grad()
def damp_final_layers(flow: torch.nn.Module, factor: float) -> torch.nn.Module:
    """Scales the conditioners' final layers (shift and scale outputs), see sampling below."""
    for name, p in flow.named_parameters():
        if "final_layer" in name:
            p.mul_(factor)
    return flow


@functools.cache
def reference(kind: str, config: str, damp: float = 1.0) -> torch.nn.Module:
    """A perturbed nflows flow of one of the ``CONFIGS``."""
    d, h, c, bn, _ = CONFIGS[config]
    torch.manual_seed(0)
    return damp_final_layers(ref.perturb(ref.BUILDERS[kind](d, c, h, bn_within=bn, bn_between=bn)), damp)


@functools.cache
def converted(kind: str, config: str, damp: float = 1.0) -> ConditionalMAF | ConditionalRealNVP:
    return flow_from_nflows(numpy_state(reference(kind, config, damp)), kind=kind)


def inputs(features: int, context_features: int, n: int, seed: int = 0, scale: float = 1.5):
    """(N, D) Gaussian rows of standard deviation ``scale`` and (N, C) one-hot contexts."""
    rng = np.random.default_rng(seed)
    z = (scale * rng.standard_normal((n, features))).astype(np.float32)
    context = np.eye(context_features, dtype=np.float32)[rng.integers(0, context_features, n)]
    return z, context


def assert_matches(ours, theirs: torch.Tensor, what: str) -> float:
    ours, theirs = np.asarray(ours), theirs.numpy()
    err, tol = np.abs(ours - theirs).max(), 1e-5 + 1e-6 * np.abs(theirs).max()
    print(f"{what}: max |error| {err:.2e} (max |value| {np.abs(theirs).max():.1f}, tolerance {tol:.1e})")
    assert err <= tol, f"{what}: max |error| {err} > {tol}"
    return err


@torch.no_grad()
def check_density(flow, torch_flow, z, context, what: str) -> None:
    zt, ct = torch.from_numpy(z), torch.from_numpy(context)
    assert_matches(flow.log_prob(z, context), torch_flow.log_prob(zt, ct), f"{what} log_prob")
    u = torch_flow._transform(zt, context=torch_flow._embedding_net(ct))[0]
    assert_matches(flow.to_noise(z, context), u, f"{what} to_noise")


@torch.no_grad()
def check_sampling(flow, torch_flow, u, context, what: str) -> None:
    ut, ct = torch.from_numpy(u), torch.from_numpy(context)
    z = torch_flow._transform.inverse(ut, context=torch_flow._embedding_net(ct))[0]
    assert_matches(flow.from_noise(u, context), z, f"{what} from_noise")


# --------------------------------------------------------------------------- parity
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("kind", KINDS)
def test_density_parity(kind, config):
    d, _, c, _, batches = CONFIGS[config]
    for n in batches:
        z, context = inputs(d, c, n)
        check_density(converted(kind, config), reference(kind, config), z, context, f"{kind}-{config}-N{n}")


@pytest.mark.parametrize("kind, config", [("maf", "small"), ("maf", "bn"), *(("rnvp", c) for c in CONFIGS)])
def test_sampling_parity(kind, config):
    d, _, c, _, _ = CONFIGS[config]
    u, context = inputs(d, c, 7, seed=1, scale=1.0)
    damp = MAF_SAMPLING_DAMP if kind == "maf" else 1.0
    flow, torch_flow = converted(kind, config, damp), reference(kind, config, damp)
    check_sampling(flow, torch_flow, u, context, f"{kind}-{config}")


@pytest.mark.parametrize("kind", KINDS)
def test_odd_width_embedding_and_inferred_config(kind):
    d, c, e = 7, 3, 5
    torch.manual_seed(1)
    embedding = torch.nn.Linear(c, e)
    sizes = dict(num_layers=3, num_blocks=1, bn_within=True, bn_between=True)
    torch_flow = ref.perturb(ref.BUILDERS[kind](d, e, 16, embedding=embedding, **sizes), seed=1)
    damp_final_layers(torch_flow, MAF_SAMPLING_DAMP if kind == "maf" else 1.0)
    state = numpy_state(torch_flow)
    expected = {
        "features": d,
        "context_features": c,
        "hidden_features": 16,
        "num_layers": 3,
        "num_blocks": 1,
        "batch_norm_within": True,
        "batch_norm_between": True,
        "embedding_features": e,
    }
    if kind == "rnvp":
        expected["scale_function"] = "sigmoid"
    assert infer_nflows_config(state, kind) == expected
    flow = flow_from_nflows(state, kind=kind, context_features=c)
    assert isinstance(flow, ConditionalMAF if kind == "maf" else ConditionalRealNVP)
    check_density(flow, torch_flow, *inputs(d, c, 9), f"{kind}-odd")
    check_sampling(flow, torch_flow, *inputs(d, c, 9, seed=2, scale=1.0), f"{kind}-odd")


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kind", KINDS)
def test_wrong_kind(kind):
    other = "rnvp" if kind == "maf" else "maf"
    state = numpy_state(reference(other, "small"))
    with pytest.raises(CheckpointError, match=f"kind='{other}'") as info:
        flow_from_nflows(state, kind=kind, source="flow.pt")
    assert "flow.pt" in str(info.value) and "_transform._transforms.0." in str(info.value)


def test_missing_unexpected_and_mismatched_keys_are_all_listed():
    state = numpy_state(reference("maf", "small"))
    gone = "_transform._transforms.3.autoregressive_net.blocks.1.linear_layers.0.weight"
    resized = "_transform._transforms.1.autoregressive_net.context_layer.weight"
    del state[gone]
    state[resized] = np.zeros((40, 11), np.float32)
    state["_distribution.extra"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as info:
        flow_from_nflows(state, kind="maf", source="flow.pt")
    message = str(info.value)
    assert "flow.pt does not match an nflows MAF" in message
    assert f"missing keys (1):\n    {gone}" in message
    assert "unexpected keys (1):\n    _distribution.extra" in message
    assert f"{resized}: expected (40, 10), got (40, 11)" in message


def test_override_that_contradicts_the_checkpoint():
    state = numpy_state(reference("rnvp", "small"))
    message = r"0\.transform_net\.initial_layer\.weight: expected \(48, 29\), got \(40, 30\)"
    with pytest.raises(CheckpointError, match=message):
        flow_from_nflows(state, kind="rnvp", hidden_features=48, context_features=9)


def test_unrepresentable_structures():
    state = numpy_state(reference("maf", "small"))
    state["_transform._transforms.2._permutation"] = np.random.default_rng(0).permutation(40)
    with pytest.raises(CheckpointError, match="layer 1's permutation.*cannot represent"):
        flow_from_nflows(state, kind="maf")
    flipped = ref.rnvp(6, 2, 8, num_layers=2)  # a first mask transforming the even positions
    flipped._transform._transforms[0], flipped._transform._transforms[1] = (
        flipped._transform._transforms[1],
        flipped._transform._transforms[0],
    )
    with pytest.raises(CheckpointError, match=r"coupling layer 0 transforms positions \[0, 2, 4\].*cannot"):
        flow_from_nflows(numpy_state(flipped), kind="rnvp")


def test_check_state_dict_reports_shapes():
    message = r"(?s)ae\.pt does not match AE:\n.*enc.w: expected \(16, 1, 4, 4\), got \(32, 1, 4, 4\)"
    with pytest.raises(CheckpointError, match=message):
        check_state_dict(
            {"enc.w": np.zeros((32, 1, 4, 4)), "bn.num_batches_tracked": np.zeros(())},
            {"enc.w": (16, 1, 4, 4)},
            source="ae.pt",
            architecture="AE",
        )


def test_read_files(tmp_path):
    torch_flow = reference("rnvp", "small")
    plain, lightning = tmp_path / "flow.pt", tmp_path / "flow.ckpt"
    torch.save(torch_flow.state_dict(), plain)
    state = {f"model.{k}": v for k, v in torch_flow.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "optimizer_states": []}, lightning)
    expected = numpy_state(torch_flow)
    for path in (plain, lightning):
        got = read_state_dict(path)
        assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)
    z, context = inputs(40, 10, 5)
    from_file = flow_from_nflows(lightning, kind="rnvp").log_prob(z, context)
    np.testing.assert_array_equal(from_file, converted("rnvp", "small").log_prob(z, context))


def test_unreadable_files(tmp_path):
    garbage, truncated = tmp_path / "garbage.pt", tmp_path / "truncated.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 50)
    torch.save(reference("maf", "small").state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    for path in (garbage, truncated, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError, match=path.name):
            read_state_dict(path)
    with pytest.raises(CheckpointError, match="truncated.pt"):
        flow_from_nflows(truncated, kind="maf")


def test_torch_is_optional(monkeypatch, tmp_path):
    path = tmp_path / "flow.pt"
    path.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r'pip install "fpn-jax\[torch\]"'):
        read_state_dict(path)
    code = "import sys, fpn_jax.convert.nflows, fpn_jax.convert.torch_io; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_non_finite_weights_are_named(tmp_path):
    state = reference("maf", "small").state_dict()
    key = sorted(k for k in state if k.endswith("weight"))[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    path = tmp_path / "diverged.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=rf"diverged.pt' holds NaN or infinite values .* 1 tensor\(s\): {key}\."):
        read_state_dict(path)


# --------------------------------------------------------------------------- kind and variants
@pytest.mark.parametrize("kind", KINDS)
def test_kind_is_read_from_the_keys(kind):
    state = numpy_state(reference(kind, "small"))
    assert infer_nflows_config(state) == infer_nflows_config(state, kind)
    flow = flow_from_nflows(state)
    assert isinstance(flow, ConditionalMAF if kind == "maf" else ConditionalRealNVP)
    z, context = inputs(40, 10, 3)
    np.testing.assert_array_equal(flow.log_prob(z, context), converted(kind, "small").log_prob(z, context))


def _variant_state(**kwargs) -> dict[str, np.ndarray]:
    from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
    from nflows.transforms.coupling import AdditiveCouplingTransform

    flow = ref.maf(6, 2, 8, num_layers=2)
    torch.manual_seed(0)
    if "coupling" in kwargs:  # SimpleRealNVP(use_volume_preserving=True)
        flow = ref.rnvp(6, 2, 8, num_layers=2)
        mask = flow._transform._transforms[0].transform_features.new_ones(6)
        mask[::2] = -1
        flow._transform._transforms[0] = AdditiveCouplingTransform(
            mask, lambda i, o: ref.ResidualNet(i, o, hidden_features=8, context_features=2, num_blocks=2))
    elif kwargs:
        flow._transform._transforms[1] = MaskedAffineAutoregressiveTransform(
            features=6, hidden_features=8, context_features=2, num_blocks=2, **kwargs)
    return numpy_state(flow)


@pytest.mark.parametrize("variant, message", [
    ({"use_residual_blocks": False}, r"an nflows MAF without residual blocks \(MaskedAutoregressiveFlow\("
                                     r"use_residual_blocks=False\): .*MaskedFeedforwardBlocks\).*not supported"),
    ({"use_residual_blocks": False, "random_mask": True},
     r"MAF without residual blocks and with random masks \(.*use_random_masks=True\)"),
    ({"coupling": "additive"}, r"a volume-preserving nflows RealNVP \(SimpleRealNVP\(use_volume_preserving=True\)"),
])
def test_unsupported_variants_are_named_not_listed_as_missing_keys(variant, message):
    from fpn_jax.convert.torch_io import UnsupportedVariantError

    for kind in (None, "maf"):
        with pytest.raises(UnsupportedVariantError, match=message) as info:
            flow_from_nflows(_variant_state(**variant), kind=kind, source="flow.pt")
        assert "missing keys" not in str(info.value)


def test_a_transform_neither_flow_has_is_named():
    from fpn_jax.convert.torch_io import UnsupportedVariantError

    state = numpy_state(reference("maf", "small"))
    state["_transform._transforms.2.log_scale"] = state.pop("_transform._transforms.2._permutation").astype("f4")
    with pytest.raises(UnsupportedVariantError, match=r"_transform._transforms.2 holds \['log_scale'\]"):
        flow_from_nflows(state)
