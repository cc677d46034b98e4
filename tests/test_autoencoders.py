"""The MNIST base models: architecture, maths of the losses, training, checkpoints, freezing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fpn_jax import autoencoders, checkpoint, latents
from fpn_jax.autoencoders import training
from fpn_jax.nn import ConvTranspose
from fpn_jax.train import TrainConfig


def _images(n: int, seed: int = 0) -> np.ndarray:
    """Blurry random blobs in [0, 1], (n, 28, 28, 1): structured enough to learn a little."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    centres = rng.uniform(6, 22, size=(n, 2, 1, 1))
    blobs = np.exp(-((yy - centres[:, 0]) ** 2 + (xx - centres[:, 1]) ** 2) / 18.0)
    return blobs[..., None].astype(np.float32)


@pytest.mark.parametrize("name", ["conv_vae", "conv_ae"])
def test_shapes_follow_the_paper(name):
    model = autoencoders.create(name)
    x = jnp.asarray(_images(3))
    h = model.enc.norm_1(model.enc.conv_1(x))
    assert h.shape == (3, 13, 13, 16)
    assert model.enc(x).shape == (3, 64)
    z = model.encode(x)
    assert z.shape == (3, 40)
    zz = z.reshape(3, 1, 1, 40)
    sizes = []
    for i in range(1, 5):
        zz = getattr(model.dec, f"deconv_{i}")(zz)
        sizes.append(zz.shape[1:])
    assert sizes == [(3, 3, 256), (6, 6, 128), (13, 13, 64), (28, 28, 1)]
    out = model.decode(z)
    assert out.shape == (3, 28, 28, 1) and float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("k,s,h", [(3, 2, 1), (4, 1, 3), (3, 2, 6), (4, 2, 13)])
def test_conv_transpose_is_the_scatter_of_the_kernel(k, s, h):
    layer = ConvTranspose(3, 5, k, s, rngs=nnx.Rngs(0))
    layer.bias[...] = jnp.arange(5.0)
    x = jax.random.normal(jax.random.key(1), (2, h, h, 3))
    y = layer(x)
    # Reference: y[s i + a, s j + b] += x[i, j] @ W[a, b], by explicit loops.
    ref = np.zeros(((h - 1) * s + k,) * 2 + (5,))
    ref = np.broadcast_to(ref, (2, *ref.shape)).copy()
    w, xn = np.asarray(layer.kernel[...]), np.asarray(x)
    for i in range(h):
        for j in range(h):
            for a in range(k):
                for b in range(k):
                    ref[:, s * i + a, s * j + b] += xn[:, i, j] @ w[a, b]
    np.testing.assert_allclose(np.asarray(y), ref + np.arange(5.0), atol=1e-5)


def test_vae_loss_is_bce_plus_kl():
    model = autoencoders.create("conv_vae")
    x = jnp.asarray(_images(4))
    key = jax.random.key(3)
    loss, parts = model.loss(x, key)
    mu, logvar = model.posterior(x)
    kl = distrax.MultivariateNormalDiag(mu, jnp.exp(0.5 * logvar)).kl_divergence(
        distrax.MultivariateNormalDiag(jnp.zeros_like(mu), jnp.ones_like(mu))
    )
    np.testing.assert_allclose(parts["kl"], kl, rtol=1e-4)
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape)
    p = model.decode(z)
    bce = -jnp.sum(x * jnp.log(p) + (1 - x) * jnp.log1p(-p), axis=(1, 2, 3))
    np.testing.assert_allclose(parts["bce"], bce, rtol=1e-4)
    np.testing.assert_allclose(loss, bce + kl, rtol=1e-4)


def test_vae_encode_mean_or_sample():
    model = autoencoders.freeze(autoencoders.create("conv_vae"))
    x = jnp.asarray(_images(5))
    mean = model.encode(x)
    np.testing.assert_allclose(mean, model.posterior(x)[0])
    a, b = model.encode(x, key=jax.random.key(0)), model.encode(x, key=jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(a - mean))) > 1e-3


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 28, 28)), "shape"),
        (np.zeros((2, 28, 28, 1), np.uint8), "dtype"),
        (np.full((2, 28, 28, 1), 2.0, np.float32), "row 0"),
        (
            np.where(np.arange(2)[:, None, None, None] == 1, np.nan, 0.5).astype(np.float32)
            * np.ones((2, 28, 28, 1), np.float32),
            "row 1",
        ),
    ],
)
def test_bad_images_are_named(bad, message):
    model = autoencoders.create("conv_ae")
    with pytest.raises(ValueError, match=message) as info:
        model.encode(bad)
    assert "`x`" in str(info.value)


def test_latents_need_a_frozen_model_and_do_not_depend_on_chunking():
    model = autoencoders.create("conv_ae")
    x = _images(10)
    with pytest.raises(RuntimeError, match="training mode"):
        latents.encode(model, x)
    autoencoders.freeze(model)
    z = latents.encode(model, x, batch_size=4)
    np.testing.assert_allclose(z, latents.encode(model, x, batch_size=10), atol=1e-6)
    np.testing.assert_allclose(latents.decode(model, z, batch_size=3), np.asarray(model.decode(z)), atol=1e-6)
    with pytest.raises(ValueError, match="row 2"):
        latents.decode(model, np.where(np.arange(10)[:, None] == 2, np.inf, z))


def test_frozen_base_gets_no_gradient():
    model = autoencoders.freeze(autoencoders.create("conv_ae"))
    graphdef, state = nnx.split(model)
    x = jnp.asarray(_images(3))

    def f(state):
        return jnp.sum(latents._encode(graphdef, state, x, None) ** 2)

    grads = jax.grad(f)(state)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))


def test_training_improves_and_checkpoint_reloads_in_a_new_process(tmp_path):
    model = autoencoders.create("conv_ae")
    x, x_val = _images(256, 0), _images(64, 1)
    config = TrainConfig(learning_rate=5e-3, batch_size=64, max_epochs=3, patience=None)
    history = autoencoders.fit(model, x, key=jax.random.key(0), config=config, validation=x_val,
                               checkpoint_dir=tmp_path / "run", progress=False)
    assert history.val_loss[-1] < history.val_loss[0]
    assert history.best_epoch == int(np.argmin(history.val_loss))
    reloaded = autoencoders.load(tmp_path / "run" / "best")
    probe = _images(8, 2)
    expected = np.asarray(model.decode(model.encode(probe)))
    np.testing.assert_array_equal(np.asarray(reloaded.decode(reloaded.encode(probe))), expected)
    np.save(tmp_path / "probe.npy", probe)
    code = textwrap.dedent(f"""
        import numpy as np
        from fpn_jax import autoencoders
        m = autoencoders.load({str(tmp_path / "run" / "best")!r})
        x = np.load({str(tmp_path / "probe.npy")!r})
        np.save({str(tmp_path / "out.npy")!r}, np.asarray(m.decode(m.encode(x))))
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_resume_continues_the_same_run(tmp_path):
    x = _images(128, 0)
    config = dict(learning_rate=5e-3, batch_size=32, patience=None)
    straight = autoencoders.create("conv_ae")
    autoencoders.fit(straight, x, key=jax.random.key(1), config=TrainConfig(max_epochs=3, **config), progress=False)
    resumed = autoencoders.create("conv_ae")
    autoencoders.fit(resumed, x, key=jax.random.key(1), config=TrainConfig(max_epochs=2, **config),
                     checkpoint_dir=tmp_path, progress=False)
    again = autoencoders.create("conv_ae")  # a new process would start from scratch like this
    history = autoencoders.fit(again, x, key=jax.random.key(1), config=TrainConfig(max_epochs=3, **config),
                               checkpoint_dir=tmp_path, progress=False)
    assert len(history.train_loss) == 3
    for a, b in zip(jax.tree.leaves(nnx.state(straight)), jax.tree.leaves(nnx.state(again)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="other settings"):
        autoencoders.fit(autoencoders.create("conv_ae"), x, key=jax.random.key(1),
                         config=TrainConfig(max_epochs=3, learning_rate=1e-3, batch_size=32),
                         checkpoint_dir=tmp_path, progress=False)


def test_load_by_name_uses_the_model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FPN_JAX_HOME", str(tmp_path))
    assert {"conv_vae", "conv_ae"} <= set(autoencoders.available())
    with pytest.raises(FileNotFoundError, match="experiments/mnist.py"):
        autoencoders.load("conv_vae")
    model = autoencoders.freeze(autoencoders.create("conv_vae", seed=4))
    checkpoint.save(autoencoders.cache_dir() / "conv_vae", model)
    loaded = autoencoders.load("conv_vae")
    x = _images(2)
    np.testing.assert_array_equal(np.asarray(loaded.encode(x)), np.asarray(model.encode(x)))
    with pytest.raises(FileNotFoundError, match="neither"):
        autoencoders.load(tmp_path / "nowhere")


def test_damaged_checkpoints_are_named(tmp_path):
    model = autoencoders.freeze(autoencoders.create("conv_ae"))
    path = checkpoint.save(tmp_path / "ae", model)
    (path / "meta" / "metadata").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="metadata"):
        autoencoders.load(path)
    with pytest.raises(checkpoint.CheckpointError, match="not an fpn-jax checkpoint"):
        autoencoders.load(tmp_path)


def test_sampled_latents_use_one_key_per_example_whatever_the_chunking():
    model = autoencoders.freeze(autoencoders.create("conv_vae"))
    x = _images(7)
    key = jax.random.key(5)
    z = latents.encode(model, x, key=key, batch_size=3)
    np.testing.assert_allclose(z, latents.encode(model, x, key=key, batch_size=7), atol=1e-6)
    keys = jax.random.split(key, 7)
    np.testing.assert_allclose(z[4], np.asarray(model.encode(x[4:5], key=keys[4]))[0], atol=1e-5)
    assert np.abs(z - latents.encode(model, x)).max() > 1e-2


def test_loss_and_training_check_their_arguments():
    model = autoencoders.create("conv_ae")
    with pytest.raises(ValueError, match=r"ConvAE.loss: argument `x` must hold values in \[0, 1\]; row 1 of 2"):
        model.loss(np.stack([np.zeros((28, 28, 1)), np.full((28, 28, 1), 3.0)]).astype(np.float32), jax.random.key(0))
    with pytest.raises(ValueError, match=r"ConvAE.loss: argument `key`"):
        model.loss(np.zeros((2, 28, 28, 1), np.float32), 0)
    with pytest.raises(ValueError, match=r"argument `images` has no rows"):
        autoencoders.fit(model, np.zeros((0, 28, 28, 1), np.float32), key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match=r"batch norm, which needs batches of at least 2 rows"):
        autoencoders.fit(model, np.zeros((1, 28, 28, 1), np.float32), key=jax.random.key(0), progress=False)
    empty = latents.encode(autoencoders.freeze(model), np.zeros((0, 28, 28, 1), np.float32))
    assert empty.shape == (0, 40) and empty.dtype == np.float32
    assert latents.decode(model, np.zeros((0, 40), np.float32)).shape == (0, 28, 28, 1)


class _TanhPoints(autoencoders.Autoencoder):
    """A frozen-only base model outside MNIST's contract: (4, 3) "clouds" in [-1, 1], a tanh
    decoder that is stochastic given a key and takes an option; no training loss."""

    def __init__(self, *, data_range=(-1.0, 1.0), rngs: nnx.Rngs):
        super().__init__(2, data_shape=(4, 3), data_range=data_range)
        self.enc = nnx.Linear(12, 2, rngs=rngs)
        self.dec = nnx.Linear(2, 12, rngs=rngs)

    def _encode(self, x, key):
        return self.enc(x.reshape(x.shape[0], -1))

    def _decode(self, z, key, *, scale=1.0):
        out = jnp.tanh(self.dec(z)).reshape(z.shape[0], 4, 3) * scale
        if key is not None:
            out = out + 0.01 * jax.random.normal(key, out.shape)
        return out


def test_base_models_declare_their_data_range_and_training_is_separate():
    assert autoencoders.create("conv_vae").data_range == (0.0, 1.0)
    assert autoencoders.create("conv_ae").data_range == (0.0, 1.0)
    assert isinstance(autoencoders.create("conv_ae"), autoencoders.TrainableAutoencoder)
    assert training.train is autoencoders.fit  # the deprecated name, kept for one release
    model = autoencoders.freeze(_TanhPoints(rngs=nnx.Rngs(0)))
    assert not isinstance(model, autoencoders.TrainableAutoencoder)
    x = np.linspace(-1.0, 1.0, 2 * 12, dtype=np.float32).reshape(2, 4, 3)  # in [-1, 1]: accepted
    z = model.encode(x)
    np.testing.assert_allclose(np.asarray(z), np.asarray(model.enc(jnp.asarray(x).reshape(2, 12))), atol=1e-6)
    with pytest.raises(ValueError, match=r"_TanhPoints.encode: argument `x` must hold values in \[-1, 1\]; row 1 of 2"):
        model.encode(x * np.array([1.0, 1.5], np.float32)[:, None, None])
    with pytest.raises(ValueError, match=r"values in \[-1, 1\]; got dtype int32"):
        model.encode(np.zeros((2, 4, 3), np.int32))
    with pytest.raises(ValueError, match=r"must have shape \(N, 4, 3\)"):
        model.encode(np.zeros((2, 12), np.float32))
    with pytest.raises(TypeError, match="trainable base model"):
        autoencoders.fit(model, x, key=jax.random.key(0), progress=False)
    with pytest.raises(NotImplementedError):
        autoencoders.Autoencoder(2, data_shape=(4, 3)).encode(x)
    # Unbounded data (point coordinates): any finite value, but no NaN.
    free = autoencoders.freeze(_TanhPoints(data_range=None, rngs=nnx.Rngs(0)))
    assert free.data_range is None
    expected = np.asarray(free.enc(jnp.asarray(x * 100).reshape(2, 12)))
    np.testing.assert_allclose(np.asarray(free.encode(x * 100)), expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="`x`"):
        free.encode(np.where(np.arange(2)[:, None, None] == 1, np.nan, x).astype(np.float32))


def test_decode_takes_a_key_and_options_and_latents_pass_them_on():
    model = autoencoders.freeze(_TanhPoints(rngs=nnx.Rngs(1)))
    z = jax.random.normal(jax.random.key(2), (5, 2))
    mean = np.tanh(np.asarray(model.dec(z))).reshape(5, 4, 3)
    np.testing.assert_allclose(np.asarray(model.decode(z)), mean, atol=1e-6)
    np.testing.assert_allclose(np.asarray(model.decode(z, scale=0.5)), 0.5 * mean, atol=1e-6)
    np.testing.assert_allclose(latents.decode(model, z, batch_size=2, scale=0.5), 0.5 * mean, atol=1e-6)
    key = jax.random.key(3)
    drawn = latents.decode(model, z, key=key, batch_size=2, scale=2.0)
    np.testing.assert_allclose(drawn, latents.decode(model, z, key=key, batch_size=5, scale=2.0), atol=1e-6)
    keys = jax.random.split(key, 5)
    for n in (0, 3):  # latent n is decoded with the n-th key split from `key`
        alone = np.asarray(model.decode(z[n : n + 1], key=keys[n], scale=2.0))[0]
        np.testing.assert_allclose(drawn[n], alone, atol=1e-6)
    assert 1e-3 < np.abs(drawn - 2.0 * mean).max() < 0.1
    with pytest.raises(ValueError, match="`key`"):
        model.decode(z, key=0)


def test_data_check_inside_a_traced_function_on_a_closed_over_array():
    """A concrete batch closed over by a jitted function: shape and dtype are checked, its values
    cannot be read while tracing (they were a TracerArrayConversionError before)."""
    from fpn_jax.autoencoders.base import check_data

    x = jnp.full((2, 3, 3, 1), 0.5)
    out = jax.jit(lambda: check_data(x, (3, 3, 1), name="x", where="test") * 2)()
    np.testing.assert_allclose(np.asarray(out), 1.0)
    with pytest.raises(ValueError, match=r"must have shape \(N, 4, 4, 1\)"):
        jax.jit(lambda: check_data(x, (4, 4, 1), name="x", where="test"))()
