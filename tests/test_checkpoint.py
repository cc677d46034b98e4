"""Orbax checkpoints of flows and base models: exact round trips, atomic overwrite, clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FLOWS, make_flow
from flax import nnx

import fpn_jax
from fpn_jax import checkpoint


@pytest.mark.parametrize("kind", sorted(FLOWS))
def test_flow_round_trip_keeps_parameters_and_statistics(tmp_path, kind):
    flow = make_flow(kind, features=3, context_features=2, batch_norm=True)
    z = jax.random.normal(jax.random.key(0), (64, 3))
    context = fpn_jax.one_hot(jnp.arange(64) % 2, 2)
    config = fpn_jax.TrainConfig(max_epochs=2, batch_size=16)
    fpn_jax.fit(flow, z, context, key=jax.random.key(1), config=config, progress=False)
    loaded = checkpoint.load(checkpoint.save(tmp_path / "flow", flow))
    assert type(loaded) is type(flow) and loaded.config == flow.config
    loaded.eval()
    np.testing.assert_array_equal(np.asarray(loaded.log_prob(z, context)), np.asarray(flow.log_prob(z, context)))


def test_overwrite_is_explicit_and_leaves_no_temporary_folders(tmp_path):
    first = fpn_jax.ConditionalMAF(2, 2, hidden_features=4, rngs=nnx.Rngs(0))
    second = fpn_jax.ConditionalMAF(2, 2, hidden_features=4, rngs=nnx.Rngs(1))
    checkpoint.save(tmp_path / "m", first)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        checkpoint.save(tmp_path / "m", second)
    checkpoint.save(tmp_path / "m", second, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    z, c = jnp.ones((1, 2)), jnp.ones((1, 2))
    assert float(checkpoint.load(tmp_path / "m").log_prob(z, c)[0]) == float(second.log_prob(z, c)[0])


def test_custom_activation_cannot_be_saved(tmp_path):
    flow = fpn_jax.ConditionalMAF(2, 2, hidden_features=4, activation=lambda x: x, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="activation"):
        checkpoint.save(tmp_path / "m", flow)
    assert not (tmp_path / "m").exists()


def test_architecture_mismatch_lists_parameters(tmp_path):
    import json

    path = checkpoint.save(tmp_path / "m", fpn_jax.ConditionalRealNVP(4, 2, hidden_features=8, rngs=nnx.Rngs(0)))
    meta = json.loads((path / "meta" / "metadata").read_text())
    meta["config"]["hidden_features"] = 6
    (path / "meta" / "metadata").write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match=r"expected \(5, 6\), got \(5, 8\)") as info:
        checkpoint.load(path)
    assert "initial_layer" in str(info.value) or "linear" in str(info.value)


def test_fit_resumes_to_the_same_parameters(tmp_path):
    z = jax.random.normal(jax.random.key(0), (96, 2))
    context = fpn_jax.one_hot(jnp.arange(96) % 3, 3)
    settings = dict(batch_size=32, patience=None)

    def fresh():
        return fpn_jax.ConditionalRealNVP(2, 3, hidden_features=8, rngs=nnx.Rngs(0))

    straight = fresh()
    fpn_jax.fit(straight, z, context, key=jax.random.key(2), config=fpn_jax.TrainConfig(max_epochs=4, **settings),
                progress=False)
    first = fresh()
    part = fpn_jax.fit(first, z, context, key=jax.random.key(2), config=fpn_jax.TrainConfig(max_epochs=2, **settings),
                       checkpoint_dir=tmp_path, progress=False)
    resumed = fresh()
    history = fpn_jax.fit(resumed, z, context, key=jax.random.key(2),
                          config=fpn_jax.TrainConfig(max_epochs=4, **settings), checkpoint_dir=tmp_path, progress=False)
    assert len(history.train_loss) == 4
    # The wall time goes on from the first part's (saved with its last epoch), not from zero.
    assert history.seconds >= sum(history.epoch_seconds) and history.seconds >= sum(part.epoch_seconds)
    again = fpn_jax.fit(fresh(), z, context, key=jax.random.key(2),
                        config=fpn_jax.TrainConfig(max_epochs=4, **settings), checkpoint_dir=tmp_path, progress=False)
    assert len(again.train_loss) == 4 and again.seconds >= history.seconds * 0.9  # a finished run: nothing to add
    for a, b in zip(jax.tree.leaves(nnx.state(straight)), jax.tree.leaves(nnx.state(resumed)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def _edit_meta(path, edit):
    import json

    file = path / "meta" / "metadata"
    meta = json.loads(file.read_text())
    edit(meta)
    file.write_text(json.dumps(meta))


def _flip_a_data_byte(path):
    data = sorted(p for p in (path / "state" / "d").iterdir())[0]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _edit_meta(p, lambda m: m.pop("architecture")),
         r"meta/metadata: corrupt checkpoint metadata: `architecture` is missing"),
        (lambda p: _edit_meta(p, lambda m: m.__setitem__("config", [4])), r"`config` must be a dict, got list"),
        (lambda p: _edit_meta(p, lambda m: m["config"].__setitem__("depth", 3)),
         r"does not build a conditional_realnvp \(TypeError: .*'depth'"),
        (lambda p: _edit_meta(p, lambda m: m["config"].__setitem__("features", 0)),
         r"does not build a conditional_realnvp \(ValueError: .*`features`"),
        (lambda p: _edit_meta(p, lambda m: m.__setitem__("architecture", "maf9")), r"unknown architecture 'maf9'"),
        (_flip_a_data_byte, r"corrupt or incomplete"),
        (lambda p: __import__("shutil").rmtree(p / "state"), r"corrupt or incomplete|no stored state"),
    ],
    ids=["no-architecture", "config-not-dict", "unknown-config-key", "invalid-config-value", "unknown-architecture",
         "flipped-data-byte", "state-removed"],
)
def test_corrupt_checkpoints_name_the_folder_and_the_problem(tmp_path, damage, message):
    flow = fpn_jax.ConditionalRealNVP(4, 2, hidden_features=8, num_layers=2, rngs=nnx.Rngs(0))
    path = checkpoint.save(tmp_path / "m", flow)
    damage(path)
    with pytest.raises(checkpoint.CheckpointError, match=message) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)


def test_non_finite_parameters_are_refused_by_name(tmp_path):
    flow = fpn_jax.ConditionalMAF(2, 2, hidden_features=4, num_layers=2, rngs=nnx.Rngs(0))
    layer = flow.transform.layers.bijectors[1].made.final_layer
    layer.bias[...] = layer.bias[...].at[0, 0].set(jnp.nan)
    path = checkpoint.save(tmp_path / "diverged", flow)
    expected = r"diverged: the stored arrays hold NaN or infinite values .* 1 parameter\(s\): .*final_layer.bias"
    with pytest.raises(checkpoint.CheckpointError, match=expected):
        checkpoint.load(path)


def test_register_accepts_a_redefined_class_but_not_a_different_one():
    def define(base):
        @checkpoint.register("test_redefined_module")
        class Model(base):
            pass

        return Model

    first = define(nnx.Module)
    second = define(nnx.Module)  # a notebook cell run again: same module and name
    assert second is not first and checkpoint.architectures()["test_redefined_module"] is second

    with pytest.raises(ValueError, match="'test_redefined_module' is taken"):
        @checkpoint.register("test_redefined_module")
        class Other(nnx.Module):
            pass


@pytest.mark.parametrize("features, batch_norm", [(5, True), (4, False)])
def test_realnvp_checkpoints_of_the_full_width_couplings_still_load(tmp_path, features, batch_norm):
    """Before the couplings' nets computed only the used halves they were full width: inputs
    ``[y ⊙ (1 - m), c]`` (D + C rows, the transformed rows unused) and (t, a) for all D positions
    (2D columns, the identity columns unused). Such a checkpoint loads into the same function."""
    d, c = features, 3
    flow = fpn_jax.ConditionalRealNVP(d, c, hidden_features=8, num_layers=3, batch_norm_between=batch_norm,
                                      rngs=nnx.Rngs(0))
    net = flow.transform.layers.bijectors[0].net
    rng = np.random.default_rng(0)
    for var in (net.initial_layer.kernel, net.final_layer.kernel, net.final_layer.bias):  # away from identity init
        var[...] = jnp.asarray(rng.normal(size=var.shape) * 0.3, jnp.float32)
    z = jax.random.normal(jax.random.key(0), (32, d))
    context = fpn_jax.one_hot(jnp.arange(32) % c, c)
    want = np.asarray(flow.log_prob(z, context))

    half, layers = (d + 1) // 2, 3
    kernel, final, bias = (np.asarray(v[...]) for v in (net.initial_layer.kernel, net.final_layer.kernel,
                                                         net.final_layer.bias))
    old_kernel = rng.normal(size=(layers, d + c, 8)).astype(np.float32)  # unused rows: noise
    old_final = rng.normal(size=(layers, 8, 2 * d)).astype(np.float32)  # unused columns: noise
    old_bias = rng.normal(size=(layers, 2 * d)).astype(np.float32)
    old_kernel[:, d:] = kernel[:, half:]
    for layer in range(layers):
        p = layer % 2
        for j in range(half):
            if 2 * j + p < d:
                old_kernel[layer, 2 * j + p] = kernel[layer, j]
            if 2 * j + 1 - p < d:
                for k in (0, 1):
                    old_final[layer, :, k * d + 2 * j + 1 - p] = final[layer, :, k * half + j]
                    old_bias[layer, k * d + 2 * j + 1 - p] = bias[layer, k * half + j]
    net.initial_layer.kernel.set_value(jnp.asarray(old_kernel))
    net.final_layer.kernel.set_value(jnp.asarray(old_final))
    net.final_layer.bias.set_value(jnp.asarray(old_bias))
    loaded = checkpoint.load(checkpoint.save(tmp_path / "legacy", flow))
    np.testing.assert_allclose(np.asarray(loaded.log_prob(z, context)), want, rtol=1e-5, atol=1e-5)
    loaded_net = loaded.transform.layers.bijectors[0].net
    assert loaded_net.initial_layer.kernel.shape == (layers, half + c, 8)

    # Other shape mismatches are still refused by name.
    net.final_layer.bias.set_value(jnp.asarray(old_bias[:, :-1]))
    with pytest.raises(fpn_jax.errors.CheckpointError, match="final_layer.bias"):
        checkpoint.load(checkpoint.save(tmp_path / "broken", flow))
