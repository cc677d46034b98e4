"""Maximum-likelihood training on a 2-D conditional toy whose true density is known."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FLOWS
from flax import nnx

from fpn_jax import ConditionalMAF, TrainConfig, classify, fit, one_hot

# Class k: an equal mixture of two isotropic Gaussians (std 0.5) on a circle of radius 3,
# at angles 2πk/3 ± 0.2: an elongated, skewed blob per class, well apart from the others.
ANGLES = 2 * np.pi * np.arange(3)[:, None] / 3 + np.array([-0.2, 0.2])[None, :]
MEANS = 3.0 * np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=-1)  # (class, component, 2)
STD = 0.5


def sample_toy(key, n):
    k_label, k_comp, k_noise = jax.random.split(key, 3)
    labels = jax.random.randint(k_label, (n,), 0, 3)
    comps = jax.random.randint(k_comp, (n,), 0, 2)
    z = jnp.asarray(MEANS)[labels, comps] + STD * jax.random.normal(k_noise, (n, 2))
    return z, labels


def true_class_log_likelihoods(z):
    """log p(z | k) for every class, (N, 3)."""
    diff = z[:, None, None, :] - jnp.asarray(MEANS)[None]
    log_comp = jax.scipy.stats.norm.logpdf(diff, scale=STD).sum(-1) + jnp.log(0.5)
    return jax.nn.logsumexp(log_comp, axis=2)


@pytest.mark.parametrize("kind", ["maf", "rnvp"])
def test_fit_reaches_true_nll_and_bayes_accuracy(kind):
    z, y = sample_toy(jax.random.key(0), 6000)
    z_val, y_val = sample_toy(jax.random.key(1), 2000)
    z_test, y_test = sample_toy(jax.random.key(2), 3000)
    flow = FLOWS[kind](2, 3, hidden_features=32, num_layers=5, num_blocks=2, rngs=nnx.Rngs(0))
    config = TrainConfig(learning_rate=3e-3, batch_size=256, max_epochs=40, patience=8)
    history = fit(flow, z, one_hot(y, 3), key=jax.random.key(3), config=config,
                  validation=(z_val, one_hot(y_val, 3)), progress=False)

    assert history.train_loss[-1] < history.train_loss[0]
    true_ll = true_class_log_likelihoods(z_test)
    true_nll = -float(jnp.mean(true_ll[jnp.arange(3000), y_test]))
    model_nll = -float(jnp.mean(flow.log_prob(z_test, one_hot(y_test, 3))))
    assert model_nll == pytest.approx(true_nll, abs=0.1), (model_nll, true_nll)

    predictions, log_posterior = classify(flow, z_test)
    accuracy = float(jnp.mean(predictions == y_test))
    bayes_accuracy = float(jnp.mean(jnp.argmax(true_ll, 1) == y_test))
    assert accuracy > 0.95 and accuracy >= bayes_accuracy - 0.01, (accuracy, bayes_accuracy)
    np.testing.assert_allclose(jnp.exp(log_posterior).sum(1), 1.0, atol=1e-5)


def test_fit_keeps_the_best_epoch_and_moves_only_parameters():
    z, y = sample_toy(jax.random.key(0), 512)
    flow = FLOWS["maf"](2, 3, hidden_features=8, num_layers=2, batch_norm_between=True, rngs=nnx.Rngs(0))
    before = jax.tree.map(jnp.copy, nnx.state(flow, ...))
    history = fit(flow, z, one_hot(y, 3), key=jax.random.key(1),
                  config=TrainConfig(max_epochs=4, batch_size=128, patience=None),
                  validation=(z, one_hot(y, 3)), progress=False)
    assert len(history.val_loss) == 4
    assert history.best_epoch == int(np.argmin(history.val_loss))
    assert not is_training_mode(flow)
    after = jax.tree.map(jnp.copy, nnx.state(flow, ...))
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)
    for path, changed in jax.tree.flatten_with_path(moved)[0]:
        name = jax.tree_util.keystr(path)
        if "parity" in name:  # constants never move
            assert not changed, name
        else:
            assert changed, name  # parameters and batch statistics do


def is_training_mode(flow):
    from fpn_jax.nn.mode import is_training

    return is_training(flow)


def test_fit_stops_loudly_on_nan():
    z, y = sample_toy(jax.random.key(0), 256)
    flow = FLOWS["rnvp"](2, 3, hidden_features=8, num_layers=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="`z` must hold finite values; row 5 of 256 has NaN"):
        fit(flow, z.at[5, 0].set(jnp.nan), one_hot(y, 3), key=jax.random.key(1), progress=False)
    # Finite but extreme latents: the NLL overflows to inf in the first epoch.
    with pytest.raises(FloatingPointError, match="epoch 1"):
        fit(flow, z.at[5, 0].set(1e30), one_hot(y, 3), key=jax.random.key(1), config=TrainConfig(max_epochs=3),
            progress=False)


# --------------------------------------------------------------------------- the one train step


def _adam_first_step(params, grads, lr):
    """Adam's first update from zero moments: m̂ = g, v̂ = g², so θ' = θ - lr g / (|g| + 1e-8)."""
    return jax.tree.map(lambda p, g: p - lr * g / (jnp.abs(g) + 1e-8), params, grads)


def test_make_train_step_is_one_adam_step_on_the_batch_loss():
    """``make_train_step`` (what fit_model, the judge, the base models and the benchmark run): the
    loss of the batch in training mode, its gradient, Adam, and the batch-norm statistics."""
    from fpn_jax.train import make_train_step
    from fpn_jax.train.maximum_likelihood import batch_nll
    from fpn_jax.train.step import split

    z, y = sample_toy(jax.random.key(0), 64)
    c = one_hot(y, 3)
    lr = 1e-2
    # Without batch norm: parameters right before a training-mode batch norm have a zero
    # gradient up to rounding, which Adam's first step turns into full steps of size lr.
    flow = FLOWS["maf"](2, 3, hidden_features=8, num_layers=2, rngs=nnx.Rngs(0))
    optimizer = TrainConfig(learning_rate=lr).optimizer(steps_per_epoch=1)
    parts, state = split(flow, optimizer)
    step = jax.jit(make_train_step(parts, batch_nll, optimizer))
    new, (loss, finite) = step(state, (z, c), jax.random.key(1))
    assert bool(finite) and not is_training_mode(flow)

    graph, params, rest = nnx.split(flow, nnx.Param, ...)

    def reference_loss(params):
        model = nnx.merge(graph, params, rest)
        model.train()
        return -jnp.mean(model.log_prob(z, c))

    value, grads = jax.value_and_grad(reference_loss)(params)
    assert float(loss) == pytest.approx(float(value), rel=1e-5)
    expected = _adam_first_step(params, grads, lr)
    leaves = zip(jax.tree.leaves(new.params), jax.tree.leaves(expected), jax.tree.leaves(grads), strict=True)
    for got, want, g in leaves:
        steady = np.abs(np.asarray(g)) > 1e-4  # where g / |g| is not a ratio of rounding errors
        np.testing.assert_allclose(np.asarray(got)[steady], np.asarray(want)[steady], rtol=1e-5, atol=1e-6)
        assert np.all(np.abs(np.asarray(got) - np.asarray(want)) <= 2 * lr + 1e-6)
    pairs = zip(jax.tree.leaves(new.params), jax.tree.leaves(params), strict=True)
    moved = [float(jnp.max(jnp.abs(a - b))) for a, b in pairs]
    assert max(moved) == pytest.approx(lr, rel=1e-3)

    # With batch norm between layers: the step returns the running statistics that the batch moved.
    bn_flow = FLOWS["maf"](2, 3, hidden_features=8, num_layers=2, batch_norm_between=True, rngs=nnx.Rngs(0))
    parts, state = split(bn_flow, optimizer)
    new, _ = jax.jit(make_train_step(parts, batch_nll, optimizer))(state, (z, c), jax.random.key(1))
    trained = nnx.clone(bn_flow)
    trained.train()
    trained.log_prob(z, c)  # one training-mode pass: r <- 0.9 r + 0.1 batch
    for got, want, before in zip(jax.tree.leaves(new.stats), jax.tree.leaves(nnx.state(trained, nnx.BatchStat)),
                                 jax.tree.leaves(state.stats), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
        assert not np.allclose(np.asarray(got), np.asarray(before))


def test_a_nonfinite_step_is_skipped_only_when_asked():
    from fpn_jax.train import make_train_step
    from fpn_jax.train.maximum_likelihood import batch_nll
    from fpn_jax.train.step import split

    z, y = sample_toy(jax.random.key(0), 32)
    z = z.at[3, 0].set(1e30)  # finite, but the NLL overflows
    optimizer = TrainConfig().optimizer(steps_per_epoch=1)
    flow = FLOWS["rnvp"](2, 3, hidden_features=8, num_layers=2, rngs=nnx.Rngs(0))
    parts, state = split(flow, optimizer)
    for skip in (True, False):
        new, (loss, finite) = jax.jit(make_train_step(parts, batch_nll, optimizer, skip_nonfinite=skip))(
            state, (z, one_hot(y, 3)), jax.random.key(1)
        )
        assert not bool(finite) and not np.isfinite(float(loss))
        pairs = zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True)
        same = all(np.array_equal(a, b, equal_nan=True) for a, b in pairs)
        assert same == skip


def _updates(config: TrainConfig, grads: list[np.ndarray], steps_per_epoch: int) -> list[np.ndarray]:
    optimizer = config.optimizer(steps_per_epoch)
    params = {"w": jnp.zeros(2)}
    opt_state = optimizer.init(params)
    out = []
    for g in grads:
        updates, opt_state = optimizer.update({"w": jnp.asarray(g, jnp.float32)}, opt_state, params)
        out.append(np.asarray(updates["w"]))
    return out


def test_the_step_size_schedule_is_constant_or_a_cosine_over_all_steps():
    ones = [np.ones(2)] * 6  # Adam on a constant gradient: every update is -lr_k (m̂ = g, v̂ = g²)
    constant = _updates(TrainConfig(learning_rate=0.1, max_epochs=2), ones, steps_per_epoch=3)
    np.testing.assert_allclose(constant, -0.1 * np.ones((6, 2)), rtol=1e-4)  # float32 bias corrections
    cosine = _updates(TrainConfig(learning_rate=0.1, max_epochs=2, schedule="cosine"), ones, steps_per_epoch=3)
    k = np.arange(6)[:, None]  # 2 epochs x 3 steps: the cosine spans all 6
    np.testing.assert_allclose(cosine, -0.1 * 0.5 * (1 + np.cos(np.pi * k / 6)) * np.ones((6, 2)), rtol=1e-4, atol=1e-9)


def test_max_grad_norm_clips_the_gradient_before_adam():
    grads = [np.array([3.0, 4.0]), np.array([0.3, 0.0])]  # |g1| = 5, clipped to 1: (0.6, 0.8)
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8

    def adam(gs):
        m = v = np.zeros(2)
        out = []
        for t, g in enumerate(gs, start=1):
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
            out.append(-lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
        return out

    clipped = _updates(TrainConfig(learning_rate=lr, max_grad_norm=1.0), grads, steps_per_epoch=1)
    np.testing.assert_allclose(clipped, adam([grads[0] / 5.0, grads[1]]), rtol=1e-4)
    plain = _updates(TrainConfig(learning_rate=lr), grads, steps_per_epoch=1)
    np.testing.assert_allclose(plain, adam(grads), rtol=1e-4)
    assert not np.allclose(clipped[1], plain[1], rtol=1e-2)  # the clipping shows in the second step
    with pytest.raises(ValueError, match="`max_grad_norm` must be > 0 or None"):
        TrainConfig(max_grad_norm=0.0)
    with pytest.raises(ValueError, match="`schedule` must be 'constant' or 'cosine'"):
        TrainConfig(schedule="linear")


def test_latent_noise_perturbs_training_batches_only_uniformly_in_zero_epsilon():
    from fpn_jax.train.maximum_likelihood import batch_nll

    flow = ConditionalMAF(3, 2, hidden_features=8, num_layers=2, rngs=nnx.Rngs(0))
    flow.eval()
    z = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    context = one_hot(np.arange(16) % 2, 2)
    key = jax.random.key(7)
    # The same draw the loss makes: u ~ U[0, ε) from the second half of split(key).
    u = jax.random.uniform(jax.random.split(key)[1], z.shape, jnp.float32, 0.0, 0.5)
    assert 0 <= float(u.min()) and float(u.max()) < 0.5
    expected = -jnp.mean(flow.log_prob(z + u, context))
    np.testing.assert_allclose(batch_nll(flow, (z, context), key, noise=0.5), expected, rtol=1e-6)
    assert not np.isclose(batch_nll(flow, (z, context), key, noise=0.5), batch_nll(flow, (z, context), key))
    with pytest.raises(ValueError, match="`noise`"):
        fit(flow, z, context, key=key, noise=-0.1, progress=False)
    # Training with noise runs; the validation NLL is of the clean latents.
    history = fit(flow, z, context, key=key, noise=0.01, config=TrainConfig(max_epochs=2, batch_size=8),
                  validation=(z, context), progress=False)
    np.testing.assert_allclose(history.val_loss[history.best_epoch], -np.mean(flow.log_prob(z, context)), rtol=1e-5)


@pytest.mark.parametrize("nonfinite", ["stop", "skip"])
def test_per_step_and_scanned_epochs_train_the_same(nonfinite):
    """``fit_model(per_step=True)`` (one jitted call per step, for XLA:CPU's convolutions) and
    the scanned epoch see the same batches and keys and make the same updates."""
    from fpn_jax.train import fit_model
    from fpn_jax.train.maximum_likelihood import batch_nll

    z, y = sample_toy(jax.random.key(0), 300)
    context = one_hot(y, 3)
    config = TrainConfig(max_epochs=3, batch_size=64, patience=None, nonfinite=nonfinite)
    results = []
    for per_step in (False, True):
        flow = FLOWS["maf"](2, 3, hidden_features=8, num_layers=2, batch_norm_between=True, dropout=0.1,
                            rngs=nnx.Rngs(0))
        history = fit_model(flow, batch_nll, (z, context), key=jax.random.key(1), config=config, progress=False,
                            per_step=per_step)
        results.append((history.train_loss, nnx.state(flow, ...)))
    (loss_scan, state_scan), (loss_step, state_step) = results
    np.testing.assert_allclose(loss_step, loss_scan, rtol=1e-5)
    assert loss_step[-1] < loss_step[0]
    for a, b in zip(jax.tree.leaves(state_step), jax.tree.leaves(state_scan), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-5)


def test_models_with_xla_convolutions_train_per_step_on_cpu():
    from fpn_jax.runtime.compiler import prefers_stepping

    conv = nnx.Sequential(nnx.Conv(1, 2, (3, 3), rngs=nnx.Rngs(0)))
    flow = FLOWS["rnvp"](2, 3, hidden_features=8, num_layers=2, rngs=nnx.Rngs(0))
    assert prefers_stepping(conv) == (jax.default_backend() == "cpu")
    assert not prefers_stepping(flow)


@pytest.mark.parametrize("per_step", [False, True])
def test_the_epoch_function_compiles_once(caplog, per_step):
    """The training state goes in committed to the devices, as it comes back from the step, so
    the epoch (or step) function is not compiled a second time for the second epoch."""
    import logging

    from fpn_jax.train import fit_model
    from fpn_jax.train.maximum_likelihood import batch_nll

    z, y = sample_toy(jax.random.key(0), 256)
    flow = FLOWS["maf"](2, 3, hidden_features=8, num_layers=2, batch_norm_between=True, rngs=nnx.Rngs(0))
    previous = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            fit_model(flow, batch_nll, (z, one_hot(y, 3)), key=jax.random.key(1), progress=False,
                      config=TrainConfig(max_epochs=3, batch_size=64, patience=None), per_step=per_step)
    finally:
        jax.config.update("jax_log_compiles", previous)
    name = "step_at" if per_step else "scanned_epoch"
    compiles = [r for r in caplog.records if f"Compiling jit({name})" in r.getMessage()]
    assert len(compiles) == 1, [r.getMessage()[:200] for r in compiles]
