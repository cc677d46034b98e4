"""Maximum-likelihood training on a 2-D conditional toy whose true density is known."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import FLOWS
from fpn_jax import TrainConfig, classify, fit, one_hot

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
    from fpn_jax.flows.stack import is_training

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
