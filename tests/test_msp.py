"""MSP's VAE in Flax: parity with the original (torch), the converter, the full-size layout, MSP's edit, training.

The torch reference (``torch_msp``) is the original ``CnnVae`` with random weights and
random batch-norm affine maps and running statistics, in eval mode, run in float64 with
float32-representable weights (what a file holds); it is saved with ``torch.save`` and
converted. Sizes are small (image 32 with nf 8: two batch-norm blocks; image 64 with nf 4:
three) so that the file stays fast; the layer rules do not depend on them. The full 256-px
model is checked by shapes only (``jax.eval_shape``, torch's ``meta`` device).

Tolerances: float32 1e-5 absolute (measured ≤ 1.1e-6); float64 (``jax.enable_x64``) 1e-10.
Tests that need torch skip without it.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fpn_jax import TrainConfig, autoencoders, checkpoint
from fpn_jax.autoencoders.msp import MSP, default_msp_config, fit_msp
from fpn_jax.checkpoint import CheckpointError
from fpn_jax.convert.__main__ import main as convert_main
from fpn_jax.convert.msp import convert_msp, msp_config, msp_from_state_dict, torch_shapes

A, B = 5, 3
CONFIGS = [(32, 8), (64, 4)]  # (image_size, nf)


def _spec_256() -> dict[str, tuple[int, ...]]:
    """``MSP_CelebA.tch``'s keys and shapes, written from the table of docs (msp.md), not from code."""
    spec = {"M": (40, 2048), "encoder.main.0.weight": (64, 3, 4, 4)}
    for index, (a, b) in zip((2, 5, 8, 11, 14), [(64, 128), (128, 256), (256, 512), (512, 1024), (1024, 2048)],
                             strict=True):
        spec[f"encoder.main.{index}.weight"] = (b, a, 4, 4)
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            spec[f"encoder.main.{index + 1}.{leaf}"] = (b,)
    spec["encoder.main.17.weight"] = (2048, 2048, 4, 4)
    decoder = [(2048, 2048), (2048, 1024), (1024, 512), (512, 256), (256, 128), (128, 64)]
    for index, (a, b) in zip((0, 3, 6, 9, 12, 15), decoder, strict=True):
        spec[f"decoder.main.{index}.weight"] = (a, b, 4, 4)  # ConvTranspose2d: (in, out, kh, kw)
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            spec[f"decoder.main.{index + 1}.{leaf}"] = (b,)
    spec["decoder.main.18.weight"] = (64, 3, 4, 4)
    for fc in ("fc1", "fc2"):
        spec[f"{fc}.weight"], spec[f"{fc}.bias"] = (2048, 2048), (2048,)
    return spec


# -- the torch reference ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch(one_torch_thread):
    return one_torch_thread


@pytest.fixture(scope="module")
def ref(torch):
    return importlib.import_module("torch_msp")


@pytest.fixture(scope="module")
def references(torch, ref):
    """(image_size, nf) → the torch CnnVae in float64 (eval mode, float32-representable weights)."""
    out = {}
    for seed, (size, nf) in enumerate(CONFIGS):
        torch.manual_seed(seed)
        out[size, nf] = ref.perturbed(ref.CnnVae(size, A, nf), seed=seed).double()
    return out


def state_of(model) -> dict[str, np.ndarray]:
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def converted(references):
    return {key: msp_from_state_dict(state_of(model), source=f"{key}") for key, model in references.items()}


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, 3, size, size) float64 in [-1, 1]: NCHW for torch (ours take the transpose)."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, 3, size, size))


def nhwc(x) -> np.ndarray:
    return np.asarray(x, np.float32).transpose(0, 2, 3, 1)


def close(actual, expected, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), atol=atol, rtol=0)


def tiny_model(seed: int = 0) -> MSP:
    return MSP(image_size=16, nf=4, num_attributes=3, rngs=nnx.Rngs(seed))


def tiny_data(n: int = 8):
    rng = np.random.default_rng(0)
    x = np.tanh(rng.normal(size=(n, 16, 16, 3))).astype(np.float32)
    y = np.where(rng.uniform(size=(n, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
    return x, y


# -- parity ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, nf", CONFIGS)
def test_posterior_images_and_every_block_match_torch(size, nf, torch, ref, references, converted):
    reference, ours = references[size, nf], converted[size, nf]
    assert ours.config == {"image_size": size, "nf": nf, "num_attributes": A, "nc": 3,
                           "latent_features": nf * size // 8}
    x = images(B, size)
    z = np.random.default_rng(size).normal(size=(B, ours.latent_features)).astype(np.float32)
    with torch.no_grad():
        tx, tz = torch.from_numpy(x), torch.from_numpy(z.astype(np.float64))
        mu, logvar = reference.encode(tx)
        encoder_blocks = ref.activations(reference.encoder.main, tx)
        decoder_blocks = ref.activations(reference.decoder.main, tz[:, :, None, None])
        decoded = reference.decoder(tz)
    mu_ours, logvar_ours = ours.posterior(jnp.asarray(nhwc(x)))
    close(ours.encode(nhwc(x)), mu.numpy())
    close(logvar_ours, logvar.numpy())
    close(mu_ours, mu.numpy())
    out = ours.decode(z)
    assert out.shape == (B, size, size, 3) and decoded.numpy().std() > 0.03  # non-trivial images
    close(out, decoded.numpy().transpose(0, 2, 3, 1))
    blocks = ours.encoder.activations(jnp.asarray(nhwc(x)))
    assert len(blocks) == len(encoder_blocks) == len(ours.encoder.norms) + 2
    for k, (a, b) in enumerate(zip(blocks, encoder_blocks, strict=True)):
        assert a.shape == b.numpy().transpose(0, 2, 3, 1).shape, k
        close(a, b.numpy().transpose(0, 2, 3, 1))
    blocks = ours.decoder.activations(jnp.asarray(z))
    assert len(blocks) == len(decoder_blocks) == len(ours.decoder.norms) + 1
    for k, (a, b) in enumerate(zip(blocks, decoder_blocks, strict=True)):
        assert a.shape == b.numpy().transpose(0, 2, 3, 1).shape, k
        close(a, b.numpy().transpose(0, 2, 3, 1))


def test_float64_parity(torch, references, converted):
    reference = references[CONFIGS[0]]
    x = images(B, CONFIGS[0][0], seed=1)
    with torch.no_grad():
        mu, logvar = reference.encode(torch.from_numpy(x))
        decoded = reference.decoder(mu).numpy().transpose(0, 2, 3, 1)
    with jax.enable_x64(True):
        model = nnx.clone(converted[CONFIGS[0]])
        nnx.update(model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), nnx.state(model)))
        mu_ours, logvar_ours = model.posterior(jnp.asarray(x.transpose(0, 2, 3, 1)))
        out = model.decoder(jnp.asarray(mu.numpy()))
        assert mu_ours.dtype == out.dtype == jnp.float64
        close(mu_ours, mu.numpy(), atol=1e-10)
        close(logvar_ours, logvar.numpy(), atol=1e-10)
        close(out, decoded, atol=1e-10)


def test_training_loss_and_statistics_match_the_original(torch, ref, references, converted):
    """Training mode (batch statistics): the same ε gives the original's loss and running means."""
    size, nf = CONFIGS[0]
    reference = ref.CnnVae(size, A, nf).double()
    reference.load_state_dict(references[size, nf].state_dict())
    reference.train()
    ours = nnx.clone(converted[size, nf])
    ours.train()
    x = images(4, size, seed=2)
    labels = np.where(np.random.default_rng(2).uniform(size=(4, A)) < 0.5, -1.0, 1.0)
    key = jax.random.key(3)
    eps = np.asarray(jax.random.normal(key, (4, ours.latent_features)), np.float64)
    with torch.no_grad():
        tx, ty = torch.from_numpy(x), torch.from_numpy(labels)
        mu, logvar = reference.encode(tx)
        z = mu + torch.from_numpy(eps) * torch.exp(0.5 * logvar)
        total, rec, kl, msp = reference.loss(reference.decoder(z), tx, ty, z, mu, logvar)
    loss, parts = ours.loss_with_labels(nhwc(x), labels.astype(np.float32), key)
    assert loss.shape == (4,)
    close(jnp.sum(parts["reconstruction"]), rec, atol=1e-3)
    close(jnp.sum(parts["kl"]), kl, atol=1e-4)
    close(jnp.sum(parts["msp"]), msp, atol=1e-4)
    close(jnp.sum(loss), total.item(), atol=1e-2 + 1e-6 * abs(total.item()))
    assert ours.msp_weight == size * size * 3 / (A + ours.latent_features)
    for j, norm in enumerate(ours.decoder.norms):  # running means: torch momentum 0.1 = Flax 0.9
        close(norm.mean[...], reference.decoder.main[3 * j + 1].running_mean.numpy(), atol=1e-6)
    for k, norm in enumerate(ours.encoder.norms, start=1):
        close(norm.mean[...], reference.encoder.main[3 * k].running_mean.numpy(), atol=1e-6)


def test_sampled_encoding_is_the_reparameterisation(converted):
    model = converted[CONFIGS[0]]
    x = nhwc(images(B, CONFIGS[0][0]))
    key = jax.random.key(5)
    mu, logvar = model.posterior(jnp.asarray(x))
    expected = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape)
    close(model.encode(x, key=key), expected, atol=1e-6)


def test_predict_matches_the_original(torch, references, converted):
    size, nf = CONFIGS[1]
    reference, ours = references[size, nf], converted[size, nf]
    x = images(B, size, seed=4)
    with torch.no_grad():
        plain = reference.predict(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
        edited = reference.predict(torch.from_numpy(x), [(1, 2.0), (3, -1.5)], weight=0.7).numpy()
    close(ours.predict(nhwc(x)), plain)
    close(ours.predict(nhwc(x), {1: 2.0, 3: -1.5}, weight=0.7), edited.transpose(0, 2, 3, 1))
    close(ours.predict(nhwc(x), [(1, 2.0), (3, -1.5)], weight=0.7), edited.transpose(0, 2, 3, 1))


# -- MSP's edit --------------------------------------------------------------------------------
def test_edit_sets_the_scores_exactly_with_orthonormal_m():
    model = tiny_model()  # L = 8, A = 3
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 3)))
    model.M[...] = jnp.asarray(q.T, jnp.float32)  # orthonormal rows
    z = np.random.default_rng(1).normal(size=(6, 8)).astype(np.float32)
    per_row = np.linspace(-2.0, 2.0, 6).astype(np.float32)
    before = np.asarray(model.attribute_scores(z))
    after = np.asarray(model.attribute_scores(model.edit_latents(z, {0: 1.0, 2: per_row}, weight=1.5)))
    close(after[:, 0], np.full(6, 1.5), atol=1e-5)
    close(after[:, 2], 1.5 * per_row, atol=1e-5)
    close(after[:, 1], before[:, 1], atol=1e-5)
    # the component of z outside the attribute subspace is untouched
    edited = np.asarray(model.edit_latents(z, [(1, -1.0)]))
    projector = np.eye(8) - q @ q.T
    close(edited @ projector, z @ projector, atol=1e-5)


# -- the full-size model -----------------------------------------------------------------------
def test_full_size_model_by_shapes():
    spec = _spec_256()
    abstract = nnx.eval_shape(lambda: MSP(rngs=nnx.Rngs(0)))
    assert abstract.config == {"image_size": 256, "nf": 64, "num_attributes": 40, "nc": 3, "latent_features": 2048}
    assert abstract.data_shape == (256, 256, 3) and abstract.data_range == (-1.0, 1.0)
    assert torch_shapes(abstract) == spec
    assert msp_config({k: np.broadcast_to(np.float32(0), s) for k, s in spec.items()}) == abstract.config
    parameters = sum(int(np.prod(s)) for k, s in spec.items() if "running" not in k)
    assert round(parameters / 1e6, 1) == 232.1
    graph, state = nnx.split(abstract)
    x = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)

    def run(state, x):
        model = nnx.merge(graph, state)
        mu, logvar = model.posterior(x)
        return mu, logvar, model.encoder.activations(x), model.decoder.activations(mu)

    mu, logvar, encoder_blocks, decoder_blocks = jax.eval_shape(run, state, x)
    assert mu.shape == logvar.shape == (2, 2048)
    assert [b.shape for b in encoder_blocks] == [(2, s, s, c) for s, c in [
        (128, 64), (64, 128), (32, 256), (16, 512), (8, 1024), (4, 2048), (1, 2048)]]
    assert [b.shape for b in decoder_blocks] == [(2, s, s, c) for s, c in [
        (4, 2048), (8, 1024), (16, 512), (32, 256), (64, 128), (128, 64), (256, 3)]]


def test_full_size_torch_reference_has_the_same_keys(torch, ref):
    with torch.device("meta"):
        reference = ref.CnnVae(256, 40, 64)
    shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    counters = {k for k in shapes if k.endswith("num_batches_tracked")}
    assert len(counters) == 11
    assert {k: v for k, v in shapes.items() if k not in counters} == _spec_256()
    assert sum(p.numel() for p in reference.parameters()) == 232_105_600


# -- the converter -----------------------------------------------------------------------------
def test_cli_round_trip(torch, references, tmp_path, capsys):
    size, nf = CONFIGS[1]
    reference = references[size, nf]
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in reference.state_dict().items()},
               tmp_path / "MSP_small.tch")
    out = tmp_path / "msp"
    assert convert_main(["msp", str(tmp_path / "MSP_small.tch"), str(out)]) == 0, capsys.readouterr().err
    meta = checkpoint.read_meta(out)
    assert meta["architecture"] == "msp" and meta["config"]["image_size"] == size and meta["config"]["nf"] == nf
    model = autoencoders.load(out)
    assert isinstance(model, MSP)
    x = images(2, size, seed=6)
    with torch.no_grad():
        mu, _ = reference.encode(torch.from_numpy(x))
        decoded = reference.decoder(mu).numpy().transpose(0, 2, 3, 1)
    close(model.encode(nhwc(x)), mu.numpy())
    close(model.decode(mu.numpy().astype(np.float32)), decoded)
    close(model.M[...], reference.M.detach().numpy(), atol=0)
    args = ["msp", str(tmp_path / "MSP_small.tch"), str(out)]
    assert convert_main(args) == 1 and "exists" in capsys.readouterr().err
    assert convert_main([*args, "--overwrite"]) == 0
    assert convert_main(["msp", str(tmp_path / "missing.tch"), str(tmp_path / "x")]) == 1
    assert "missing.tch" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"image_size: expected 256, the file has 64"):
        convert_msp(tmp_path / "MSP_small.tch", tmp_path / "y", image_size=256)
    assert not (tmp_path / "y").exists()


def test_every_key_is_mapped_or_named(references):
    state = state_of(references[CONFIGS[0]])
    assert sum(k.endswith("num_batches_tracked") for k in state) == 2 + 3
    missing = dict(state)
    del missing["decoder.main.4.running_var"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\):\s+decoder.main.4.running_var"):
        msp_from_state_dict(missing, source="bad.tch")
    with pytest.raises(CheckpointError) as info:
        msp_from_state_dict(dict(state, **{"encoder.main.99.weight": np.zeros(3, np.float32),
                                           "discriminator.x": np.zeros(1, np.float32)}), source="bad.tch")
    assert "unexpected keys (2)" in str(info.value) and "encoder.main.99.weight" in str(info.value)
    stray = dict(state, **{"decoder.main.2.num_batches_tracked": np.zeros((), np.int64)})  # a ReLU
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): decoder.main.2.num_batches_tracked"):
        msp_from_state_dict(stray, source="bad.tch")
    misshapen = dict(state, **{"fc1.bias": np.zeros(5, np.float32)})
    with pytest.raises(CheckpointError, match=r"fc1.bias: expected \(32,\), got \(5,\)"):
        msp_from_state_dict(misshapen, source="bad.tch")
    with pytest.raises(CheckpointError, match="not an MSP"):
        msp_from_state_dict({"fc_mu.weight": np.zeros((4, 4), np.float32)}, source="vae.pt")
    with pytest.raises(CheckpointError, match="M has shape"):
        msp_from_state_dict(dict(state, M=np.zeros((A, 7), np.float32)), source="bad.tch")
    with pytest.raises(CheckpointError, match="nf: expected 16, the file has 8"):
        msp_from_state_dict(state, nf=16)
    # a DataParallel prefix is removed; consume=True empties the dict as it goes, False leaves it whole
    wrapped = {f"module.{k}": v for k, v in state.items()}
    model = msp_from_state_dict(wrapped, consume=True)
    assert not wrapped and model.config["image_size"] == CONFIGS[0][0]
    kept = dict(state)
    msp_from_state_dict(kept)
    assert kept.keys() == state.keys()


def test_a_latent_width_other_than_the_default(torch, ref):
    """The original's ``hidden_size``: the last encoder conv and the first decoder conv change width."""
    torch.manual_seed(7)
    reference = ref.perturbed(ref.CnnVae(16, 3, 4, hidden_size=6), seed=7).double()
    ours = msp_from_state_dict(state_of(reference))
    assert ours.config == {"image_size": 16, "nf": 4, "num_attributes": 3, "nc": 3, "latent_features": 6}
    x = images(2, 16, seed=7)
    z = np.random.default_rng(7).normal(size=(2, 6))
    with torch.no_grad():
        mu, _ = reference.encode(torch.from_numpy(x))
        decoded = reference.decoder(torch.from_numpy(z)).numpy().transpose(0, 2, 3, 1)
    close(ours.encode(nhwc(x)), mu.numpy())
    close(ours.decode(z.astype(np.float32)), decoded)


# -- training ----------------------------------------------------------------------------------
def test_gradient_reaches_every_parameter():
    model = tiny_model()
    model.train()
    x, y = tiny_data(4)
    grads = nnx.jit(nnx.grad(lambda m: jnp.mean(m.loss_with_labels(x, y, jax.random.key(1))[0])))(model)
    norms = {jax.tree_util.keystr(p): float(jnp.abs(g).max())
             for p, g in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grads))}
    assert len(norms) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert any("'M'" in k for k in norms) and any("deconvs" in k for k in norms)
    zero = [name for name, norm in norms.items() if not norm > 0]
    assert not zero, f"no gradient reaches {zero}"


def test_fit_msp_lowers_the_loss():
    model = tiny_model()
    x, y = tiny_data()
    before = float(jnp.mean(nnx.clone(model).loss_with_labels(x, y, jax.random.key(0))[0]))
    config = default_msp_config(learning_rate=3e-3, batch_size=4, max_epochs=4)
    assert config.max_grad_norm == 0.25
    history = fit_msp(model, x, y, key=jax.random.key(0), config=config, validation=(x[:4], y[:4]), progress=False)
    after = float(jnp.mean(model.loss_with_labels(x, y, jax.random.key(0))[0]))
    assert history.train_loss[-1] < history.train_loss[0] and len(history.val_loss) == 4
    assert after < before, (before, after)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"`image_size` must be a power of two >= 8.*got 48"):
        MSP(image_size=48, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="`nf` must be an integer >= 1"):
        MSP(image_size=8, nf=0, rngs=nnx.Rngs(0))
    model = tiny_model()
    x, y = tiny_data(2)
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, 16, 16, 3\)"):
        model.encode(x[:, :8])
    with pytest.raises(ValueError, match=r"values in \[-1, 1\]"):
        model.encode(x * 3)
    with pytest.raises(ValueError, match=r"`z` must have shape \(N, 8\)"):
        model.decode(np.zeros((2, 7), np.float32))
    with pytest.raises(TypeError, match="takes no options"):
        model.decode(np.zeros((2, 8), np.float32), num_points=3)
    z = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match=r"index must be an integer in \[0, 3\); got 3"):
        model.edit_latents(z, {3: 1.0})
    with pytest.raises(ValueError, match="given twice"):
        model.edit_latents(z, [(1, 1.0), (1, -1.0)])
    with pytest.raises(ValueError, match=r"one per row, shape \(2,\); got shape \(3,\)"):
        model.edit_latents(z, {0: np.ones(3)})
    with pytest.raises(ValueError, match="must be finite"):
        model.edit_latents(z, {0: float("nan")})
    with pytest.raises(ValueError, match="is empty"):
        model.predict(x, {})
    with pytest.raises(ValueError, match="`weight` must be a finite number"):
        model.edit_latents(z, {0: 1.0}, weight=float("inf"))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"row 0 of 2 has \[0.0\].*2 \* labels - 1"):
        model.loss_with_labels(x, (y + 1) / 2, key)
    with pytest.raises(ValueError, match="got booleans"):
        model.loss_with_labels(x, y > 0, key)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(N, 3\)"):
        model.loss_with_labels(x, y[:, :2], key)
    with pytest.raises(ValueError, match="same number of rows"):
        model.loss_with_labels(x, y[:1], key)
    model.loss_with_labels(x, y.astype(np.int8), key)  # integer ±1 labels are fine
    with pytest.raises(TypeError, match="needs the attribute labels"):
        model.loss(x, key)
    with pytest.raises(TypeError, match="must be an MSP"):
        fit_msp(autoencoders.create("conv_ae"), x, y, key=key)
    with pytest.raises(ValueError, match="same number of rows"):
        fit_msp(model, x, y[:1], key=key, config=TrainConfig(batch_size=2))
    with pytest.raises(ValueError, match="must be a pair"):
        fit_msp(model, x, y, key=key, validation=x)
