"""Benchmark: size and training speed of the paper's CelebA plugins (2048-d latents of MSP, 40 attributes).

For the C-MAF of FPN's ``configs/celeba/flow/maf.yaml`` (2048 features, hidden 1024, 10
layers x 10 residual blocks, batch norm within and between the layers, a linear context
embedding 40 → 512; batch 512) and the C-RealNVP of ``rnvp.yaml`` (hidden 1000, 5 layers x 2
blocks; batch 1024) it prints

* the parameter count P and the float32 memory of the parameters (4 P bytes) and of the
  parameters with Adam's two moment estimates (12 P bytes; a training step holds a gradient
  too, 16 P bytes in all), counted on the abstract model (``nnx.eval_shape``, nothing
  allocated);
* seconds per training step (the library's step, ``fpn_jax.train.make_train_step``, jitted as
  ``fit_model`` compiles it, on random latents and multi-hot contexts), the median of
  ``--steps`` timed steps after one compiling step, and the epoch time it implies for
  CelebA's 162,770 training latents: ``ceil(162770 / batch) x step``.

Usage::

    python benchmarks/celeba_flow.py                  # CPU, 2 timed steps per plugin
    python benchmarks/celeba_flow.py --device gpu --steps 10
    python benchmarks/celeba_flow.py --steps 0        # sizes only

Memory: timing the C-MAF holds about 16 P bytes (5.3 GB) plus activations.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fpn_jax import train
from fpn_jax.flows import ConditionalMAF, ConditionalRealNVP
from fpn_jax.runtime import compiler

FEATURES, CONTEXT, TRAIN_ROWS = 2048, 40, 162_770
PLUGINS = {
    "maf": dict(name="C-MAF", batch=512, build=lambda rngs: ConditionalMAF(
        FEATURES, CONTEXT, hidden_features=1024, num_layers=10, num_blocks=10, batch_norm_within=True,
        batch_norm_between=True, embedding_features=512, rngs=rngs)),
    "rnvp": dict(name="C-RealNVP", batch=1024, build=lambda rngs: ConditionalRealNVP(
        FEATURES, CONTEXT, hidden_features=1000, num_layers=5, num_blocks=2, rngs=rngs)),
}


def parameter_count(plugin: str) -> int:
    """P, the trainable parameters of the paper's plugin, counted without allocating them."""
    abstract = nnx.eval_shape(lambda: PLUGINS[plugin]["build"](nnx.Rngs(0)))
    return int(sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(abstract, nnx.Param))))


def time_steps(plugin: str, steps: int, device: Any, seed: int = 0) -> dict[str, float]:
    """Compile time and the median seconds of ``steps`` training steps on ``device``."""
    batch = PLUGINS[plugin]["batch"]
    with jax.default_device(device):
        flow = PLUGINS[plugin]["build"](nnx.Rngs(seed))
        optimizer = train.TrainConfig(learning_rate=1e-3, batch_size=batch).optimizer(steps_per_epoch=1)
        parts, state = train.step.split(flow, optimizer)
        del flow
        library_step = train.make_train_step(parts, train.maximum_likelihood.batch_nll, optimizer)

        @compiler.jit
        def step(state, z, context, key):
            state, (loss, _) = library_step(state, (z, context), key)
            return state, loss

        rng = np.random.default_rng(seed)
        z = jnp.asarray(rng.standard_normal((batch, FEATURES), dtype=np.float32))
        context = jnp.asarray((rng.random((batch, CONTEXT)) < 0.3).astype(np.float32))
        key = jax.random.key(seed)
        start = time.perf_counter()
        state, loss = step(state, z, context, key)
        loss.block_until_ready()
        first = time.perf_counter() - start
        seconds = []
        for i in range(steps):
            start = time.perf_counter()
            state, loss = step(state, z, context, jax.random.fold_in(key, i))
            loss.block_until_ready()
            seconds.append(time.perf_counter() - start)
    per_step = statistics.median(seconds)
    return {"compile_and_first_step_s": first, "step_s": per_step, "steps_timed": steps,
            "epoch_s": math.ceil(TRAIN_ROWS / batch) * per_step, "loss": float(loss)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--steps", type=int, default=2, help="timed steps after the compiling one (0: sizes only)")
    p.add_argument("--plugin", choices=tuple(PLUGINS), action="append", help="only this plugin (repeatable)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    if a.steps < 0:
        p.error("--steps must be >= 0")
    try:
        device = jax.devices(a.device)[0]
    except RuntimeError as error:
        print(f"error: no {a.device} device: {error}", file=sys.stderr)
        return 2
    rows = []
    for plugin in a.plugin or tuple(PLUGINS):
        count = parameter_count(plugin)
        row: dict[str, Any] = {"plugin": PLUGINS[plugin]["name"], "batch": PLUGINS[plugin]["batch"],
                               "parameters": count, "params_gb": 4 * count / 1e9, "with_adam_gb": 12 * count / 1e9}
        if a.steps:
            print(f"timing {row['plugin']} on {device} ...", file=sys.stderr, flush=True)
            row |= time_steps(plugin, a.steps, device)
        rows.append(row)
    header = ["plugin", "parameters", "float32 params", "+ Adam state", "batch", "s / step", "epoch (162,770)",
              "compile + 1st step"]
    print(f"device: {device.device_kind} ({device.platform}); jax {jax.__version__}\n")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        timing = [f"{r['step_s']:.3f}", f"{r['epoch_s'] / 60:.1f} min", f"{r['compile_and_first_step_s']:.1f} s"] \
            if "step_s" in r else ["–", "–", "–"]
        print("| " + " | ".join([r["plugin"], f"{r['parameters'] / 1e6:.1f} M", f"{r['params_gb']:.2f} GB",
                                 f"{r['with_adam_gb']:.2f} GB", str(r["batch"]), *timing]) + " |")
    if a.json:
        with open(a.json, "w") as handle:
            json.dump({"device": str(device), "jax": jax.__version__, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
