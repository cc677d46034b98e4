"""Runs the same work on 1 device and on all devices of this process and prints a JSON report.

Run by tests/test_parallel.py in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``: each comparison trains (or infers)
from the same initial state and seed under ``use_devices(1)`` and under all devices, and
reports the largest absolute difference and the number of devices the results lived on.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax import (
    ConditionalMAF,
    ConditionalRealNVP,
    TrainConfig,
    autoencoders,
    classify,
    fit,
    latents,
    one_hot,
    parallel,
)

FLOWS = {"maf": ConditionalMAF, "rnvp": ConditionalRealNVP}


def max_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max((float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs), default=0.0)


def spread(tree) -> int:
    """How many devices the (first) array of ``tree`` lives on."""
    return len(jax.tree.leaves(tree)[0].sharding.device_set)


def toy(n: int, d: int, classes: int, seed: int):
    kz, ky = jax.random.split(jax.random.key(seed))
    y = jax.random.randint(ky, (n,), 0, classes)
    z = jax.random.normal(kz, (n, d)) + 2.0 * jax.nn.one_hot(y, d)[:, :d]
    return z, one_hot(y, classes)


def training_diffs(one: dict, all_: dict, initial) -> dict:
    """How far apart two runs from ``initial`` ended: losses, and parameters relative to how far they moved."""
    moved = np.sqrt(sum(float(np.sum((np.asarray(a) - np.asarray(b)) ** 2))
                        for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(initial), strict=True)))
    apart = np.sqrt(sum(float(np.sum((np.asarray(a) - np.asarray(b)) ** 2))
                        for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(all_["params"]), strict=True)))
    return {
        "devices": [one["devices"], all_["devices"]],
        "train_loss": max_diff(one["train_loss"], all_["train_loss"]),
        "val_loss": max_diff(one["val_loss"], all_["val_loss"]),
        "loss_scale": float(np.max(np.abs(np.asarray(one["train_loss"])))),
        "params_max": max_diff(one["params"], all_["params"]),
        "params_relative": apart / moved,
        "stats": max_diff(one["stats"], all_["stats"]),
    }


def compare(make, train, infer) -> dict:
    """Trains ``make()`` with ``train`` on 1 device and on all, from the same initial state, then
    runs ``infer`` on the 1-device result on 1 device and on all; reports the differences."""
    initial = jax.tree.map(np.asarray, nnx.state(make(), nnx.Param))
    counts = (("one", 1), ("all", len(jax.devices())))
    runs, models, inferred = {}, {}, {}
    for label, count in counts:
        with parallel.use_devices(count):
            model = models[label] = make()
            history = train(model)
            runs[label] = dict(params=nnx.state(model, nnx.Param), stats=nnx.state(model, nnx.BatchStat),
                               train_loss=history.train_loss, val_loss=history.val_loss,
                               devices=spread(nnx.state(model, nnx.Param)))
    report = training_diffs(runs["one"], runs["all"], initial)
    for label, count in counts:
        with parallel.use_devices(count):
            inferred[label] = infer(models["one"])
            inferred[label]["devices"] = spread(nnx.state(models["one"]))
    report["inference_devices"] = [inferred["one"].pop("devices"), inferred["all"].pop("devices")]
    for name in inferred["one"]:
        report[name] = max_diff(inferred["one"][name], inferred["all"][name])
    return report


def flow_case(kind: str, batch_norm: bool) -> dict:
    z, c = toy(512, 6, 3, seed=0)
    z_val, c_val = toy(128, 6, 3, seed=1)
    config = TrainConfig(learning_rate=1e-3, batch_size=128, max_epochs=2, patience=None)

    def infer(flow) -> dict:
        predictions, log_posterior = classify(flow, z[:101])  # 101 rows: padded to a multiple of 4
        return dict(samples=flow.sample(jax.random.key(2), c[:37]), log_prob=flow.log_prob(z[:37], c[:37]),
                    predictions=predictions, log_posterior=log_posterior, noise=flow.to_noise(z[:37], c[:37]))

    return compare(
        lambda: FLOWS[kind](6, 3, hidden_features=16, num_layers=2, batch_norm_within=batch_norm,
                            batch_norm_between=batch_norm, rngs=nnx.Rngs(0)),
        lambda flow: fit(flow, z, c, key=jax.random.key(1), config=config, validation=(z_val, c_val), progress=False),
        infer,
    )


def autoencoder_case() -> dict:
    images = jax.random.uniform(jax.random.key(3), (64, 28, 28, 1))
    config = TrainConfig(learning_rate=1e-3, batch_size=32, max_epochs=2, patience=None)
    return compare(
        lambda: autoencoders.create("conv_vae", seed=0),
        lambda model: autoencoders.fit(model, images, key=jax.random.key(4), config=config, progress=False),
        lambda model: dict(
            mean=latents.encode(model, images[:13]), sampled=latents.encode(model, images[:13], key=jax.random.key(5)),
            decoded=latents.decode(model, jnp.ones((13, 40))),
        ),
    )


def errors() -> dict:
    z, c = toy(64, 6, 3, seed=0)
    flow = ConditionalMAF(6, 3, hidden_features=8, num_layers=1, rngs=nnx.Rngs(0))
    try:
        fit(flow, z, c, key=jax.random.key(0), config=TrainConfig(batch_size=30, max_epochs=1), progress=False)
    except ValueError as error:
        return {"batch_size": str(error)}
    return {"batch_size": None}


if __name__ == "__main__":
    report = {"device_count": len(jax.devices())}
    report["maf"] = flow_case("maf", batch_norm=False)
    report["maf_bn"] = flow_case("maf", batch_norm=True)
    report["rnvp_bn"] = flow_case("rnvp", batch_norm=True)
    report["autoencoder"] = autoencoder_case()
    report["errors"] = errors()
    print(json.dumps(report))
