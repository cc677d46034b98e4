"""The conditional image flow (``fpn_jax.flows.image``) against the bijector contract.

Two tiny multi-scale flows over 4×4×2 images (D = 32) are built once: one conditioned on a
class vector (actnorm, 1×1 convolutions, alternating checkerboard / channel couplings, logit
preprocess), one on an image (batch norm, random channel permutations, channel couplings
with the sigmoid scale, affine preprocess). Their parameters (and batch statistics) are
perturbed away from the identity start, and every kind of image bijector is tested either
built on its own or taken out of them (one layer of a scanned stack), at 32 dimensions:

* ``inverse(forward(x)) = x`` and ``forward(inverse(y)) = y``;
* both log-dets, shape (N,), equal ``log|det J|`` of the autodiff Jacobian of the flattened
  map, and are opposite at corresponding points;
* a conditional bijector's output changes with the condition (class or image);
* the coupling starts as the identity.

Then the flow: ``log_prob`` against the base density plus the autodiff log-det, sampling
(temperature 0 is the image of the base's mode), bits per dimension (a uniform density gives
8), the public API's errors, the registry, and a few training steps of the project's
training loop lowering the loss. Everything is compiled once per case (``jax.jit``), to keep
the file fast on a small machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturb_with_numpy
from flax import nnx

from fpn_jax import checkpoint, registry
from fpn_jax.flows.image import (
    ActNorm,
    AffineTransform,
    ChannelPermutation,
    ConditionalImageFlow,
    ImageAffineCoupling,
    LogitTransform,
    Squeeze,
    bits_per_dim,
    coupling_mask,
    dequantize,
    squeeze,
    unsqueeze,
)
from fpn_jax.train import TrainConfig
from fpn_jax.train.image_flow import fit_image_flow

N, K = 3, 3  # rows, classes
IMAGE = (4, 4, 2)  # D = 32
CONDITION_IMAGE = (4, 4, 1)
SMALL = dict(hidden_channels=8, num_scales=2, steps_per_scale=2, num_blocks=1)


def layer(repeat: nnx.Module, index: int) -> nnx.Module:
    """Layer ``index`` of an ``ImageRepeat`` (its parameters carry a leading layer axis)."""
    graphdef, state = nnx.split(repeat.layers)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[index], state))


class Flows:
    """The two test flows, built once: fresh copies and perturbed ones."""

    def __init__(self):
        @nnx.jit  # one compiled initialisation instead of many small eager ones
        def build(rngs_class, rngs_image):
            return (
                ConditionalImageFlow(IMAGE, (K,), mask="alternate", rngs=rngs_class, **SMALL),
                ConditionalImageFlow(
                    IMAGE, CONDITION_IMAGE, mask="channel", mixing="shuffle", norm="batch_norm",
                    preprocess="affine", scale_function="sigmoid", rngs=rngs_image, **SMALL,
                ),
            )

        self.fresh_class, self.fresh_image = build(nnx.Rngs(0), nnx.Rngs(1))
        self.by_class = nnx.clone(self.fresh_class)
        self.by_image = nnx.clone(self.fresh_image)
        perturb_with_numpy(self.by_class, seed=11, scale=0.05)
        perturb_with_numpy(self.by_image, seed=12, scale=0.05)
        self.by_image.eval()


_FLOWS: list[Flows] = []


def flows() -> Flows:
    if not _FLOWS:
        _FLOWS.append(Flows())
    return _FLOWS[0]


def class_context(seed: int = 5) -> jax.Array:
    return jax.nn.one_hot(jax.random.randint(jax.random.key(seed), (N,), 0, K), K)


def image_context(shape: tuple[int, ...] = CONDITION_IMAGE, seed: int = 6) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (N, *shape))


def level0_steps(flow: ConditionalImageFlow):
    return flow.transform.bijectors[1].steps


# name -> (build() -> bijector, event shape (or the noise and data sides' shapes), condition or None)
CASES: dict[str, tuple[Callable[[], nnx.Module], tuple[int, ...], Callable[[], jax.Array] | None]] = {
    "squeeze": (lambda: Squeeze(), ((2, 2, 8), IMAGE), None),  # (noise side, data side)
    "logit": (lambda: LogitTransform(0.05), IMAGE, None),
    "affine": (lambda: AffineTransform(2.0, -1.0), IMAGE, None),
    "actnorm": (lambda: ActNorm(2), IMAGE, None),
    "reverse_channels": (lambda: ChannelPermutation(2), IMAGE, None),
    # Taken out of the perturbed flows: level 0 works on squeezed (N, 2, 2, 8) images.
    "actnorm_in_flow": (lambda: layer(level0_steps(flows().by_class), 0).bijectors[0], (2, 2, 8), None),
    "conv1x1": (lambda: layer(level0_steps(flows().by_class), 0).bijectors[1], (2, 2, 8), None),
    "coupling_checkerboard_class": (
        lambda: layer(level0_steps(flows().by_class), 0).bijectors[2], (2, 2, 8), class_context,
    ),
    "batch_norm": (lambda: layer(level0_steps(flows().by_image), 0).bijectors[0], (2, 2, 8), None),
    "shuffle_channels": (lambda: layer(level0_steps(flows().by_image), 0).bijectors[1], (2, 2, 8), None),
    "coupling_channel_image": (
        lambda: layer(level0_steps(flows().by_image), 1).bijectors[2], (2, 2, 8),
        lambda: image_context((2, 2, 4)),
    ),
    "flow_transform_class": (lambda: flows().by_class.transform, IMAGE, class_context),
    "flow_transform_image": (lambda: flows().by_image.transform, IMAGE, image_context),
}


def _checks(bijector: nnx.Module, shapes: dict[str, tuple[int, ...]], conditional: bool):
    """One jitted program: round trips, log-dets, autodiff Jacobians, and the context swapped."""
    graphdef, state = nnx.split(bijector)
    d = math.prod(shapes["forward_and_log_det"])

    def run(state, x, y, c, c_other):
        b = nnx.merge(graphdef, state)

        def flat(method, v, ci):
            out = getattr(b, method)(v.reshape(1, *shapes[method]), None if ci is None else ci[None])[0]
            return out.reshape(d)

        out = {}
        out["fx"], out["ld_f"] = b.forward_and_log_det(x, c)
        out["x_back"] = b.inverse_and_log_det(out["fx"], c)[0]
        out["iy"], out["ld_i"] = b.inverse_and_log_det(y, c)
        out["y_back"] = b.forward_and_log_det(out["iy"], c)[0]
        out["ld_i_at_fx"] = b.inverse_and_log_det(out["fx"], c)[1]
        # The data -> noise Jacobian at y = f(x), (N, D, D): its log|det| is the inverse log-det
        # there and minus the forward one at x (one Jacobian checks both directions).
        def jac(v, ci):
            return jax.jacfwd(lambda w: flat("inverse_and_log_det", w, ci))(v.reshape(d))

        out["jac_i_at_fx"] = jax.vmap(jac, in_axes=(0, None if c is None else 0))(out["fx"], c)
        if conditional:
            out["fx_other"], out["ld_f_other"] = b.forward_and_log_det(x, c_other)
            out["iy_other"] = b.inverse_and_log_det(y, c_other)[0]
        return out

    return jax.jit(run), state


_RESULTS: dict[str, dict[str, np.ndarray]] = {}


def results(name: str) -> dict[str, np.ndarray]:
    if name not in _RESULTS:
        build, shape, context = CASES[name]
        noise_shape, data_shape = shape if isinstance(shape[0], tuple) else (shape, shape)
        bijector = build()
        if name in ("actnorm", "reverse_channels"):
            perturb_with_numpy(bijector, seed=13)
        c = None if context is None else context()
        c_other = None
        if c is not None:
            c_other = jnp.roll(c, 1, axis=-1) if c.ndim == 2 else 1.0 - c
        shapes = {"forward_and_log_det": noise_shape, "inverse_and_log_det": data_shape}
        run, state = _checks(bijector, shapes, c is not None)
        kx, ky = jax.random.split(jax.random.key(7))
        x = jax.random.normal(kx, (N, *noise_shape))
        y = jax.nn.sigmoid(jax.random.normal(ky, (N, *data_shape)))  # data side in (0, 1): fine for the logit
        out = jax.device_get(run(state, x, y, c, c_other))
        out.update(x=np.asarray(x), y=np.asarray(y))
        _RESULTS[name] = out
    return _RESULTS[name]


@pytest.mark.parametrize("name", list(CASES))
def test_inverse_undoes_forward_and_back(name):
    r = results(name)
    assert np.all(np.isfinite(r["fx"])) and np.all(np.isfinite(r["iy"]))
    np.testing.assert_allclose(r["x_back"], r["x"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(r["y_back"], r["y"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(CASES))
def test_log_dets_are_the_autodiff_jacobians(name):
    r = results(name)
    assert r["ld_f"].shape == r["ld_i"].shape == (N,)
    sign, log_abs = np.linalg.slogdet(np.asarray(r["jac_i_at_fx"], np.float64))
    assert np.all(sign != 0)
    np.testing.assert_allclose(r["ld_i_at_fx"], log_abs, rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(r["ld_f"], -log_abs, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if case[2] is not None])
def test_the_condition_changes_the_output(name):
    r = results(name)
    assert float(np.abs(r["fx_other"] - r["fx"]).reshape(N, -1).max(axis=1).min()) > 1e-4  # in every row
    assert float(np.abs(r["iy_other"] - r["iy"]).reshape(N, -1).max(axis=1).min()) > 1e-4
    assert float(np.abs(r["ld_f_other"] - r["ld_f"]).max()) > 1e-4


def test_squeeze_moves_2x2_blocks_into_channels():
    x = jnp.arange(2 * 4 * 4 * 3.0).reshape(2, 4, 4, 3)
    z = squeeze(x)
    assert z.shape == (2, 2, 2, 12)
    np.testing.assert_array_equal(z[1, 1, 0, 3 * 3 : 3 * 4], x[1, 3, 1])  # offset (a, b) = (1, 1)
    np.testing.assert_array_equal(unsqueeze(z), x)
    with pytest.raises(ValueError, match="even"):
        squeeze(jnp.zeros((1, 3, 4, 1)))


def test_masks_split_the_entries():
    checker = coupling_mask(0, 0, 4, 4, 2)
    assert checker.sum() == 16 and checker[0, 0, 0] == 1 and checker[0, 1, 0] == 0
    np.testing.assert_array_equal(coupling_mask(0, 1, 4, 4, 2), 1 - checker)
    channel = coupling_mask(1, 0, 2, 2, 8)
    np.testing.assert_array_equal(channel[0, 0], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(coupling_mask(1, 1, 2, 2, 8), 1 - channel)


def test_couplings_start_as_the_identity():
    fresh = flows().fresh_class
    step = layer(level0_steps(fresh), 1)
    coupling = step.bijectors[2]
    x = jax.random.normal(jax.random.key(3), (N, 2, 2, 8))
    y, log_det = jax.jit(lambda x, c: coupling.forward_and_log_det(x, c))(x, class_context())
    np.testing.assert_allclose(y, x, atol=1e-5)
    np.testing.assert_allclose(log_det, 0.0, atol=1e-4)


def test_data_dependent_actnorm_initialisation_normalises_the_batch():
    flow = nnx.clone(flows().fresh_class)
    y = dequantize(jax.random.key(15), jax.random.randint(jax.random.key(14), (N, *IMAGE), 0, 256))
    c = class_context()
    flow.initialize_actnorm(y, c)
    h = squeeze(flow.transform.bijectors[0].inverse_and_log_det(y)[0])  # level 0's input
    step = layer(level0_steps(flow), 0)
    u = np.asarray(step.bijectors[0].inverse_and_log_det(h)[0]).reshape(-1, h.shape[-1])
    np.testing.assert_allclose(u.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(u.std(0), 1.0, rtol=1e-3)
    assert np.all(np.isfinite(np.asarray(flow.log_prob(y, c))))


def test_coupling_rejects_a_bad_mask():
    with pytest.raises(ValueError, match="`mask` must be one of"):
        ImageAffineCoupling(4, 0, 4, mask="stripes", rngs=nnx.Rngs(0))


def test_log_prob_is_the_base_density_plus_the_log_det():
    flow = flows().by_class
    r = results("flow_transform_class")  # the same flow and condition; x = T(noise) on the data side
    log_prob = np.asarray(flow.log_prob(r["fx"], class_context()))
    assert log_prob.shape == (N,) and np.all(np.isfinite(log_prob))
    log_det = np.linalg.slogdet(np.asarray(r["jac_i_at_fx"], np.float64))[1]
    u = r["x"].reshape(N, -1).astype(np.float64)  # T⁻¹(T(x)) = x
    expected = -0.5 * (u**2).sum(1) - 0.5 * u.shape[1] * math.log(2 * math.pi) + log_det
    np.testing.assert_allclose(log_prob, expected, rtol=1e-4, atol=2e-3)


def test_the_condition_changes_the_density():
    flow, c = flows().by_class, class_context()  # (the image condition: flow_transform_image above)
    y = results("flow_transform_class")["fx"]
    assert float(jnp.abs(flow.log_prob(y, c) - flow.log_prob(y, jnp.roll(c, 1, axis=-1))).min()) > 1e-4


def test_sampling_with_temperature():
    flow, c = flows().by_class, class_context()
    key = jax.random.key(9)
    samples = flow.sample(key, c)
    assert samples.shape == (N, *IMAGE)
    bound = 0.05 / 0.9  # the logit's data side is (-α/(1-2α), 1 + α/(1-2α)) ⊃ [0, 1]
    assert np.all((np.asarray(samples) > -bound) & (np.asarray(samples) < 1 + bound))
    mode = flow.sample(key, c, temperature=0.0)
    np.testing.assert_allclose(mode, flow.from_noise(jnp.zeros((N, *IMAGE)), c), atol=1e-5)
    cooler = flow.sample(key, c, temperature=0.5)
    assert float(jnp.abs(cooler - mode).max()) < float(jnp.abs(samples - mode).max())
    with pytest.raises(ValueError, match="temperature"):
        flow.sample(key, c, temperature=-1.0)


def test_bits_per_dim_of_a_uniform_density_is_eight():
    np.testing.assert_allclose(bits_per_dim(jnp.zeros(2), 32), 8.0, rtol=1e-6)
    # A density of e^{D log 2} on the unit cube (one bit better per dimension): 7 bits/dim.
    np.testing.assert_allclose(bits_per_dim(jnp.asarray(32 * math.log(2.0)), 32), 7.0, rtol=1e-6)


def test_dequantisation_stays_in_the_bins():
    levels = jnp.asarray([[0.0, 1.0, 255.0]])
    y = np.asarray(dequantize(jax.random.key(0), jnp.broadcast_to(levels, (1000, 3))))
    assert np.all(np.floor(y * 256) == np.asarray(levels))


def test_flow_bits_per_dim_matches_log_prob():
    flow, c = flows().by_class, class_context()
    images = jax.random.randint(jax.random.key(10), (N, *IMAGE), 0, 256)
    key = jax.random.key(11)
    bpd = np.asarray(flow.bits_per_dim(key, images, c))
    log_prob = flow.log_prob(dequantize(key, images), c)
    np.testing.assert_allclose(bpd, -(log_prob - 32 * math.log(256)) / (32 * math.log(2)), rtol=1e-5)
    assert np.all(bpd > 0)


def test_public_api_names_bad_arguments():
    flow = flows().by_class
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, 4, 4, 2\)"):
        flow.log_prob(jnp.zeros((N, 4, 4, 3)), class_context())
    with pytest.raises(ValueError, match=r"`context` must have shape \(N, 3\)"):
        flow.log_prob(jnp.full((N, *IMAGE), 0.5), jnp.zeros((N, 4)))
    with pytest.raises(ValueError, match="finite"):
        flow.log_prob(jnp.full((N, *IMAGE), jnp.nan), class_context())
    with pytest.raises(ValueError, match="divisible"):
        ConditionalImageFlow((6, 6, 1), (2,), num_scales=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="context_shape"):
        ConditionalImageFlow(IMAGE, (4, 3), rngs=nnx.Rngs(0))


def test_checkpoint_round_trip(tmp_path):
    flow = flows().by_image  # batch statistics and a random channel permutation must survive too
    assert registry.architectures()["conditional_image_flow"] is ConditionalImageFlow
    checkpoint.save(tmp_path / "flow", flow)
    loaded = checkpoint.load(tmp_path / "flow", expect=ConditionalImageFlow)
    assert loaded.config == flow.config
    for a, b in zip(jax.tree.leaves(nnx.state(flow)), jax.tree.leaves(nnx.state(loaded)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_training_with_the_project_loop_lowers_bits_per_dim():
    flow = nnx.clone(flows().fresh_class)
    labels = jnp.arange(32) % K
    key_noise = jax.random.key(12)
    # Tiny images whose level depends on the class: easy to learn, far from the initial density.
    images = jnp.clip(
        40.0 + 60.0 * labels[:, None, None, None] + 8.0 * jax.random.normal(key_noise, (32, *IMAGE)), 0, 255
    ).round()
    context = jax.nn.one_hot(labels, K)
    config = TrainConfig(learning_rate=3e-3, batch_size=16, max_epochs=4, patience=None)
    history = fit_image_flow(flow, images, context, key=jax.random.key(13), config=config, progress=False)
    assert len(history.train_loss) == 4 and np.all(np.isfinite(history.train_loss))
    assert history.train_loss[-1] < history.train_loss[0] - 0.1
