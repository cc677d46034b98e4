"""One process of a multi-process fpn-jax run (or the one-process reference), for tests/test_distributed.py.

Started once per process with ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID`` in the environment (or none of them: the one-process reference), one CPU
device each; ``fpn_jax.runtime.distributed.initialize()`` reads them. Every process runs the
same script, SPMD: it passes only its own share of the training rows
(``distributed.process_share``) and the whole validation set, trains a small C-MAF without
batch norm for 3 epochs (several processes: 2 epochs, then a fresh model resumed from the
checkpoint for the third; the reference: in one go), evaluates, and writes
``<out>/process_<i>.npz`` (parameters, histories, inference results) and
``<out>/process_<i>.json`` (scalars, checks).

Usage: ``python tests/distributed_worker.py OUT_DIR``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fpn_jax.runtime import distributed

START = time.perf_counter()
MULTI = distributed.initialize()  # before anything touches JAX's devices

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from fpn_jax import ConditionalMAF, TrainConfig, checkpoint, classify, fit, one_hot  # noqa: E402

N, N_VAL, FEATURES, CLASSES = 251, 64, 4, 3  # 251: uneven shares (126 + 125, 63 + 63 + 63 + 62)
CONFIG = {"learning_rate": 3e-3, "batch_size": 40, "patience": None}


def toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same (n, FEATURES) latents and one-hot contexts in every process (numpy, from a seed)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    z = rng.normal(size=(n, FEATURES)).astype(np.float32) + 2.0 * np.eye(FEATURES, dtype=np.float32)[y]
    return z, np.asarray(one_hot(y, CLASSES))


def make_flow() -> ConditionalMAF:
    return ConditionalMAF(FEATURES, CLASSES, hidden_features=16, num_layers=2, batch_norm_within=False,
                          batch_norm_between=False, rngs=nnx.Rngs(0))


def params(flow) -> dict[str, np.ndarray]:
    pure = nnx.to_pure_dict(nnx.state(flow, nnx.Param))
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(pure)}


def main(out: Path) -> None:
    index, count = jax.process_index(), jax.process_count()
    z_all, c_all = toy(N, seed=0)
    z_val, c_val = toy(N_VAL, seed=1)
    z, c = distributed.process_share(z_all, c_all)  # this process's rows only
    key = jax.random.key(1)
    report: dict = {"index": index, "count": count, "multi": MULTI, "devices": len(jax.devices()),
                    "local_devices": len(jax.local_devices()), "rows": int(z.shape[0])}
    arrays: dict[str, np.ndarray] = {}

    # The reference trains 3 epochs in one go; the processes of a multi-process run train 2,
    # then a fresh model resumes from the checkpoint for a third.
    flow = make_flow()
    t = time.perf_counter()
    for epochs in (3,) if not MULTI else (2, 3):
        if epochs == 3 and MULTI:
            flow = make_flow()
        history = fit(flow, z, c, key=key, config=TrainConfig(max_epochs=epochs, **CONFIG),
                      validation=(z_val, c_val), progress=False, checkpoint_dir=out / "run")
    report["fit_seconds"] = time.perf_counter() - t
    report["param_devices"] = len(jax.tree.leaves(nnx.state(flow, nnx.Param))[0].sharding.device_set)
    arrays |= {f"params/{k}": v for k, v in params(flow).items()}
    arrays |= {"train_loss": np.array(history.train_loss), "val_loss": np.array(history.val_loss)}
    report["best_epoch"] = history.best_epoch

    # Inference on the global mesh: the same inputs everywhere, the whole result everywhere.
    arrays["log_prob"] = np.asarray(flow.log_prob(z_val, c_val))
    predictions, log_posterior = classify(flow, z_val)
    arrays["predictions"], arrays["log_posterior"] = np.asarray(predictions), np.asarray(log_posterior)
    arrays["best_log_prob"] = np.asarray(checkpoint.load(out / "run" / "best").log_prob(z_val, c_val))
    # Per-process inference on the process's own devices: its own rows.
    with distributed.local_devices():
        arrays["local_log_prob"] = np.asarray(flow.log_prob(z, c))
    # Different inputs on the global mesh are refused, not mixed.
    try:
        flow.log_prob(z_val[index:], c_val[index:])
        report["different_inputs"] = None
    except ValueError as error:
        report["different_inputs"] = str(error)
    report["seconds"] = time.perf_counter() - START
    np.savez(out / f"process_{index}.npz", **arrays)
    (out / f"process_{index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
