"""A training run that tests/test_reliability.py kills with SIGKILL and starts again.

    python interrupted_training.py flow|autoencoder CHECKPOINT_DIR OUT.npz EPOCHS

Trains on fixed synthetic data with ``checkpoint_dir=CHECKPOINT_DIR`` (resuming whatever is
there) and writes the final parameters and batch statistics to OUT.npz.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from flax import nnx

from fpn_jax import ConditionalMAF, TrainConfig, autoencoders, fit, one_hot


def main(kind: str, directory: str, out: str, epochs: int) -> None:
    config = TrainConfig(learning_rate=1e-3, batch_size=64, max_epochs=epochs, patience=None)
    if kind == "flow":
        kz, ky = jax.random.split(jax.random.key(0))
        labels = jax.random.randint(ky, (512,), 0, 3)
        z = jax.random.normal(kz, (512, 4)) + one_hot(labels, 4)
        model = ConditionalMAF(4, 3, hidden_features=16, num_layers=2, batch_norm_within=True,
                               batch_norm_between=True, dropout=0.1, rngs=nnx.Rngs(0))
        fit(model, z, one_hot(labels, 3), key=jax.random.key(1), config=config,
            validation=(z[:64], one_hot(labels[:64], 3)), progress=False, checkpoint_dir=directory)
    else:
        images = jax.random.uniform(jax.random.key(0), (128, 28, 28, 1))
        model = autoencoders.create("conv_vae", seed=0)
        autoencoders.fit(model, images, key=jax.random.key(1), config=config, validation=images[:32],
                         progress=False, checkpoint_dir=directory)
    leaves = jax.tree.leaves(nnx.state(model, (nnx.Param, nnx.BatchStat)))
    np.savez(out, *[np.asarray(x) for x in leaves])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
