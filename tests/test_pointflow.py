"""PointFlow's auto-encoder in Flax: shapes, invariances, exactness, training, and parity with torch.

The torch reference (``torch_pointflow``) follows the original's definition with random
weights, non-trivial batch-norm / moving-batch-norm statistics and T = 0.64 (not 0.5); it is
saved as PointFlow's train.py saves it (``{'epoch', 'model', 'optimizer'}``, DataParallel
``.module`` keys) and converted with ``fpn_jax.convert.pointflow``. Sizes are tiny (latent 8,
hidden 16, 32 points, 4 RK4 steps) to keep the file fast; the maths does not depend on them.

Tolerances: float32 parity 1e-5 absolute plus 1e-6 · max|reference| (log-densities reach
|log p| of a few tens); float64 (``jax.enable_x64``) 1e-6 (measured ~1e-13); adaptive Dopri5
vs a 200-step float64 RK4, and forward-then-reverse round trips, 1e-4.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

import torch_pointflow as ref  # noqa: E402

from fpn_jax import TrainConfig, autoencoders, checkpoint  # noqa: E402
from fpn_jax.autoencoders import pointflow  # noqa: E402
from fpn_jax.autoencoders.pointflow import PointFlow, read_normalization  # noqa: E402
from fpn_jax.checkpoint import CheckpointError  # noqa: E402
from fpn_jax.convert.__main__ import main as convert_main  # noqa: E402
from fpn_jax.convert.pointflow import convert_pointflow, pointflow_from_state_dict  # noqa: E402

B, P, L, STEPS = 3, 32, 8, 4
SIZES = dict(conv_dims=(16, 16, 16, 32), fc_dims=(16, 16), hidden_dims=(16, 16, 16))
OURS = dict(encoder_conv_dims=SIZES["conv_dims"], encoder_fc_dims=SIZES["fc_dims"], hidden_dims=SIZES["hidden_dims"])


def close(actual, expected, *, atol=1e-5, rtol_of_max=1e-6):
    expected = np.asarray(expected, np.float64)
    tolerance = atol + rtol_of_max * np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, atol=tolerance, rtol=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op torch thread


@pytest.fixture(scope="module")
def reference():
    """The torch reference in float64, with float32-representable weights (what the file holds)."""
    torch.manual_seed(0)
    model = ref.perturbed(ref.PointFlowAE(zdim=L, steps=STEPS, **SIZES), seed=0)
    return model.double()


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    """Saved as train.py saves it, converted (RK4, 4 steps), loaded back from the fpn-jax checkpoint."""
    folder = tmp_path_factory.mktemp("pointflow")
    ref.save_like_pointflow(reference, folder / "checkpoint.pt")
    out = convert_pointflow(folder / "checkpoint.pt", folder / "converted", mean=np.zeros((1, 1, 3)),
                            std=np.ones((1, 1, 1)), solver="rk4", rk4_steps=STEPS, num_points=P)
    return autoencoders.load(out)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, P, 3)) * np.array([1.0, 0.6, 0.3])
    z = rng.normal(size=(B, L))
    return x.astype(np.float32), z.astype(np.float32)


def as_torch(*arrays):
    return [torch.from_numpy(np.asarray(a, np.float64)) for a in arrays]


# -- shapes and invariances ------------------------------------------------------------------
def test_shapes_of_every_stage(converted, data):
    x, z = data
    model = converted
    assert model.data_shape == (P, 3) and model.data_range is None and model.latent_features == L
    assert model.encode(x).shape == (B, L)
    assert model.encode(x[:, :7]).shape == (B, L)  # any number of points
    flow = model.point_cnf
    y0, logdet0 = flow.norm_in.forward(jnp.asarray(x))
    assert y0.shape == (B, P, 3) and logdet0.shape == (B, P)
    assert flow.norm_in.reverse(y0).shape == (B, P, 3)
    assert flow.cnf.field(0.1, jnp.asarray(x), jnp.asarray(z)).shape == (B, P, 3)
    f, div = flow.cnf.field_and_divergence(0.1, jnp.asarray(x), jnp.asarray(z))
    assert f.shape == (B, P, 3) and div.shape == (B, P)
    y, logdet = model.points_to_noise(x, z)
    assert y.shape == (B, P, 3) and logdet.shape == (B, P)
    assert model.noise_to_points(y, z).shape == (B, P, 3)
    assert model.point_log_likelihood(x, z).shape == (B, P)
    assert model.log_likelihood(x, z).shape == (B,)
    assert model.decode(z, key=jax.random.key(0), num_points=5).shape == (B, 5, 3)
    assert model.decode(z[:1], key=jax.random.key(0), truncate_std=2.0, num_points=5).shape == (1, 5, 3)
    with pytest.raises(ValueError, match=r"argument `x` must be point clouds of shape \(N, P, 3\)"):
        model.encode(x[..., :2])
    with pytest.raises(ValueError, match="`key` is required"):
        model.decode(z)
    with pytest.raises(TypeError, match="unknown option"):
        model.decode(z, key=jax.random.key(0), points=5)
    with pytest.raises(ValueError, match="`solver`"):
        PointFlow(L, solver="euler", rngs=nnx.Rngs(0))


def test_permuting_points_leaves_z_unchanged(converted, data):
    x, _ = data
    permuted = x[:, np.random.default_rng(1).permutation(P)]
    np.testing.assert_allclose(converted.encode(permuted), converted.encode(x), atol=1e-6)


# -- parity with the torch reference -----------------------------------------------------------
def test_encoder_matches_torch(converted, reference, data):
    x, _ = data
    with torch.no_grad():
        expected = reference.encode(*as_torch(x)).numpy()
    assert np.abs(expected).mean() > 0.1
    close(converted.encode(x), expected)


def test_ode_field_and_divergence_match_torch(converted, reference, data):
    x, z = data
    t = 0.3
    odefunc = reference.point_cnf.module.chain[1].odefunc
    dy, minus_div = odefunc(torch.tensor(t, dtype=torch.float64), *as_torch(x, z))
    f, div = converted.point_cnf.cnf.field_and_divergence(t, jnp.asarray(x), jnp.asarray(z))
    assert dy.abs().mean() > 0.1
    close(converted.point_cnf.cnf.field(t, jnp.asarray(x), jnp.asarray(z)), dy.numpy())
    close(f, dy.numpy())
    close(div, -minus_div[..., 0].numpy())


def test_moving_batch_norm_both_ways_with_logdet(converted, reference, data):
    x, _ = data
    for index, ours in ((0, converted.point_cnf.norm_in), (2, converted.point_cnf.norm_out)):
        theirs = reference.point_cnf.module.chain[index]
        (tx,) = as_torch(x)
        with torch.no_grad():
            y, delta = theirs(tx, None, torch.zeros(B, P, 1, dtype=torch.float64))
            back, delta_back = theirs(y, None, torch.zeros(B, P, 1, dtype=torch.float64), reverse=True)
        y_ours, logdet = ours.forward(jnp.asarray(x))
        close(y_ours, y.numpy())
        close(logdet, -delta[..., 0].numpy())  # the original carries Δ log p = −log|det|
        close(ours.reverse(jnp.asarray(y.numpy(), jnp.float32)), back.numpy())
        close(delta_back[..., 0].numpy(), logdet)  # reverse: log p(x) = log p(y) + log|det ∂y/∂x|
        assert np.abs(logdet).max() > 0.1


def test_moving_batch_norm_training_updates_statistics_like_the_original(converted, reference, data):
    x, _ = data
    theirs = copy.deepcopy(reference.point_cnf.module.chain[0]).train()
    ours = nnx.clone(converted.point_cnf.norm_in)
    ours.train()
    with torch.no_grad():
        y_theirs = theirs(*as_torch(x)).numpy()
    y_ours, _ = ours.forward(jnp.asarray(x))
    close(y_ours, y_theirs)  # normalised with the statistics before the update, as the original
    close(ours.mean[...], theirs.running_mean.numpy())
    close(ours.var[...], theirs.running_var.numpy())
    assert not np.allclose(ours.mean[...], converted.point_cnf.norm_in.mean[...])


def test_rk4_solves_match_torch_float32(converted, reference, data):
    x, z = data
    tx, tz = as_torch(x, z)
    with torch.no_grad():
        y, delta = reference.point_cnf(tx, tz, torch.zeros(B, P, 1, dtype=torch.float64))
        back = reference.point_cnf(y, tz, reverse=True)
        log_px = reference.log_px(tx, tz)
    y_ours, logdet = converted.points_to_noise(x, z)
    close(y_ours, y.numpy())
    close(logdet, -delta[..., 0].numpy())
    close(converted.noise_to_points(y.numpy().astype(np.float32), z), back.numpy())
    close(converted.point_log_likelihood(x, z), log_px.numpy())
    close(converted.log_likelihood(x, z), log_px.sum(-1).numpy())


def test_rk4_solves_match_torch_float64(converted, reference, data):
    x, z = data
    tx, tz = as_torch(x, z)
    with torch.no_grad():
        y, delta = reference.point_cnf(tx, tz, torch.zeros(B, P, 1, dtype=torch.float64))
        back = reference.point_cnf(y, tz, reverse=True)
    with jax.enable_x64(True):
        flow = nnx.clone(converted.point_cnf)
        nnx.update(flow, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), nnx.state(flow)))
        x64, z64 = jnp.asarray(x, jnp.float64), jnp.asarray(z, jnp.float64)
        y_ours, logdet = flow.forward(x64, z64)
        back_ours = flow.reverse(jnp.asarray(y.numpy()), z64)
        assert y_ours.dtype == jnp.float64
        np.testing.assert_allclose(y_ours, y.numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(logdet, -delta[..., 0].numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(back_ours, back.numpy(), atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def adaptive(converted):
    """The converted model solving with Dopri5, rtol = atol = 1e-5 (the original's settings)."""
    return nnx.clone(converted).configure_solver(solver="dopri5", atol=1e-5, rtol=1e-5)


def test_dopri5_matches_a_fine_torch_solve_and_round_trips(adaptive, reference, data):
    x, z = data
    tx, tz = as_torch(x, z)
    fine = copy.deepcopy(reference)
    fine.point_cnf.module.chain[1].steps = 200
    with torch.no_grad():
        y, delta = fine.point_cnf(tx, tz, torch.zeros(B, P, 1, dtype=torch.float64))
    y_ours, logdet = adaptive.points_to_noise(x, z)
    np.testing.assert_allclose(y_ours, y.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(logdet, -delta[..., 0].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(adaptive.noise_to_points(y_ours, z), x, atol=1e-4, rtol=0)


def test_decode_then_forward_recovers_the_noise(adaptive, data):
    _, z = data
    key = jax.random.key(7)
    x = adaptive.decode(z, key=key, num_points=P)
    y = jax.random.normal(key, (B, P, 3))  # decode draws y ~ N(0, I) with the key as given
    np.testing.assert_allclose(adaptive.points_to_noise(x, z)[0], y, atol=1e-4, rtol=0)
    assert float(jnp.abs(x - y).mean()) > 0.1  # the map is not the identity


# -- exactness, gradients, training --------------------------------------------------------------
def tiny_model(**kw) -> PointFlow:
    return PointFlow(4, num_points=16, encoder_conv_dims=(8, 8), encoder_fc_dims=(8,), hidden_dims=(8, 8),
                     solver="rk4", rk4_steps=3, rngs=nnx.Rngs(0), **kw)


def test_exact_divergence_equals_the_jacobian_trace():
    cnf = tiny_model().point_cnf.cnf
    x = jax.random.normal(jax.random.key(0), (1, 5, 3))
    z = jax.random.normal(jax.random.key(1), (1, 4))
    jacobian = jax.jacfwd(lambda v: cnf.field(0.2, v.reshape(1, 5, 3), z).reshape(-1))(x.reshape(-1))
    blocks = jacobian.reshape(5, 3, 5, 3)
    _, divergence = cnf.field_and_divergence(0.2, x, z)
    expected = jnp.stack([jnp.trace(blocks[p, :, p, :]) for p in range(5)])
    np.testing.assert_allclose(divergence[0], expected, atol=1e-6)
    off = blocks.at[jnp.arange(5), :, jnp.arange(5), :].set(0.0)
    assert float(jnp.abs(off).max()) == 0.0  # points move independently given z
    assert float(jnp.abs(expected).max()) > 1e-3


def test_gradient_of_the_training_loss_reaches_every_parameter():
    model = tiny_model()
    model.train()
    x = jax.random.normal(jax.random.key(0), (4, 16, 3))
    grads = nnx.grad(lambda m: jnp.mean(m.loss(x, jax.random.key(1))[0]))(model)
    # In training mode batch norm subtracts the batch mean, so a bias feeding a batch norm
    # (every encoder conv and hidden fc, and bn2's shift before the max and fc1) has no
    # gradient, in the original too.
    cancelled = {"encoder.convs.0.bias", "encoder.convs.1.bias", "encoder.fcs.0.bias", "encoder.conv_norms.1.bias"}
    norms = {}
    for path, g in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grads)):
        norms[".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)] = float(jnp.abs(g).max())
    assert "point_cnf.cnf.sqrt_end_time" in norms and "point_cnf.norm_out.weight" in norms
    assert all(norms[name] < 1e-4 for name in cancelled), {name: norms[name] for name in cancelled}
    zero = [name for name, norm in norms.items() if name not in cancelled and not norm > 0]
    assert not zero, f"no gradient reaches {zero}"


def test_max_pooling_sends_the_gradient_to_one_point_per_channel():
    # Channel 0 has a tie between points 0 and 2; channel 1 has one maximum (point 1).
    h = jnp.asarray([[[3.0, 1.0], [1.0, 5.0], [3.0, 2.0]]])
    pooled = pointflow._max_over_points(h)
    np.testing.assert_array_equal(pooled, [[3.0, 5.0]])
    grad = jax.grad(lambda h: jnp.sum(pointflow._max_over_points(h) * jnp.asarray([2.0, 7.0])))(h)
    np.testing.assert_array_equal(grad, [[[2.0, 0.0], [0.0, 7.0], [0.0, 0.0]]])  # the first of the tied points


def test_fit_lowers_the_training_loss():
    model = tiny_model()
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(8, 16, 3))
    radii = rng.uniform(0.5, 1.5, size=(8, 1, 1))
    clouds = (radii * directions / np.linalg.norm(directions, axis=-1, keepdims=True)).astype(np.float32)
    before = float(jnp.mean(model.loss(clouds, jax.random.key(0))[0]))
    config = TrainConfig(learning_rate=1e-2, batch_size=4, max_epochs=4, patience=None)
    history = autoencoders.fit(model, clouds, key=jax.random.key(0), config=config, progress=False)
    after = float(jnp.mean(model.loss(clouds, jax.random.key(0))[0]))
    assert history.train_loss[-1] < history.train_loss[0]
    assert after < before - 1.0, (before, after)


# -- the converter -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def state(reference):
    return {k: v.float().numpy() for k, v in reference.state_dict().items()}


def test_every_key_is_mapped_or_named(state):
    assert any(k.endswith("num_batches_tracked") for k in state)
    assert "point_cnf.module.chain.0.step" in state and "point_cnf.module.chain.1.odefunc._num_evals" in state
    missing = dict(state)
    del missing["point_cnf.module.chain.1.odefunc.diffeq.layers.2._hyper_bias.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\):\s+point_cnf.chain.1.odefunc.diffeq.layers.2."
                                              r"_hyper_bias.weight"):
        pointflow_from_state_dict(missing, source="bad.pt")
    unexpected = dict(state, **{"point_cnf.module.chain.1.odefunc.extra": np.zeros(3, np.float32),
                                "point_cnf.module.chain.5.step": np.zeros(1, np.float32)})
    with pytest.raises(CheckpointError) as info:
        pointflow_from_state_dict(unexpected, source="bad.pt")
    assert "point_cnf.chain.1.odefunc.extra" in str(info.value) and "point_cnf.chain.5.step" in str(info.value)
    stray = dict(state, **{"encoder.module.bn9.num_batches_tracked": np.zeros((), np.int64)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): encoder.bn9.num_batches_tracked"):
        pointflow_from_state_dict(stray, source="bad.pt")
    misshapen = dict(state, **{"encoder.module.bn2.running_var": np.ones(5, np.float32)})
    with pytest.raises(CheckpointError, match=r"encoder.bn2.running_var: expected \(16,\), got \(5,\)"):
        pointflow_from_state_dict(misshapen, source="bad.pt")


def test_generative_and_single_category_checkpoints_are_refused(state, tmp_path, reference):
    generative = dict(state, **{"latent_cnf.module.chain.1.sqrt_end_time": np.ones((), np.float32)})
    with pytest.raises(CheckpointError, match="generative model"):
        pointflow_from_state_dict(generative)
    (tmp_path / "airplane").mkdir()
    ref.save_like_pointflow(reference, tmp_path / "airplane" / "checkpoint.pt", wrapper=False)
    with pytest.raises(CheckpointError, match="single-category"):
        convert_pointflow(tmp_path / "airplane" / "checkpoint.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_converts_a_bare_legacy_file_with_its_normalisation(reference, tmp_path, data, capsys):
    x, _ = data
    ref.save_like_pointflow(reference, tmp_path / "model.pt", wrapper=False, legacy=True)
    np.save(tmp_path / "train_set_mean.npy", np.array([[[0.1, -0.2, 0.3]]], np.float32))
    np.save(tmp_path / "train_set_std.npy", np.array([[[0.25]]], np.float32))
    out = tmp_path / "pf"
    args = ["pointflow", str(tmp_path / "model.pt"), str(out), "--mean", str(tmp_path / "train_set_mean.npy"),
            "--std", str(tmp_path / "train_set_std.npy")]
    assert convert_main(args) == 0, capsys.readouterr().err
    meta = checkpoint.read_meta(out)
    assert meta["architecture"] == "pointflow" and meta["config"]["solver"] == "dopri5"
    normalization = read_normalization(out)
    np.testing.assert_allclose(normalization.mean, [[0.1, -0.2, 0.3]], atol=1e-7)
    np.testing.assert_allclose(normalization.std, [[0.25]])
    with torch.no_grad():
        expected = reference.encode(*as_torch(x)).numpy()
    close(autoencoders.load(out).encode(x), expected)
    assert convert_main(args) == 1 and "exists" in capsys.readouterr().err  # no --overwrite
    assert convert_main(["pointflow", str(tmp_path / "missing.pt"), str(tmp_path / "x")]) == 1
    assert "missing.pt" in capsys.readouterr().err
