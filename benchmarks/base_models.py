"""Benchmark: training throughput of the base models, fpn-jax against the original PyTorch models.

Rows (``--models``): the paper's MNIST ``conv_vae`` and ``conv_ae`` (28x28x1 images in [0, 1],
40-d latents) and a small ``msp`` (MSP's VAE at 32x32x1 in [-1, 1], nf = 16, 13 attributes,
64-d latents). Every side trains the same way for ``--steps`` optimiser steps on ``--steps``
batches of ``--batch-size`` random images (one "call"), and reports images per second:

* ``per-step``: ``fpn_jax.train.make_train_step`` on the loss ``fpn_jax.autoencoders.fit``
  (MSP: ``fit_msp``) minimises, with its default optimiser (``default_config`` /
  ``default_msp_config``), one jitted call per step, the batch gathered from the data on
  the device by row indices: what ``fpn_jax.train.fit_model`` does on CPU for models with
  XLA convolutions (``per_step=None``, ``runtime.compiler.prefers_stepping``);
* ``scanned``: the same steps as one jitted ``lax.scan`` over the call's steps, what
  ``fit_model`` did before (and still does with ``per_step=False``);
* ``torch`` (when torch is installed): the original PyTorch model (``tests/torch_autoencoders.py``,
  ``tests/torch_msp.py``), ``torch.optim.Adam`` with the same learning rate, batch and loss
  formula (see ``torch_loss``), ``torch.set_num_threads`` = the CPUs XLA uses.

Median of ``--repeats`` timed repeats after warm-up (fpn-jax: three calls, the first two
compile; torch: two), the sides interleaved in alternating order so that machine drift
cancels in the ratios; the 1-minute load average is recorded after every repeat.

Usage::

    python benchmarks/base_models.py                      # conv_vae, conv_ae, msp; batch 1024
    python benchmarks/base_models.py --models conv_vae --repeats 7
    python benchmarks/base_models.py --quick              # tiny: batch 64, 2 repeats (tests)

Writes ``<out>/base_models[-quick].json`` and ``.md`` (``--out``, default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fpn_jax import autoencoders, train
from fpn_jax.autoencoders import msp as msp_lib
from fpn_jax.autoencoders import training as ae_training
from fpn_jax.runtime import compiler, mesh

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py, also when loaded by a test
from timing import Side, interleaved_repeats, machine, versions  # noqa: E402
from timing import write as write_files  # noqa: E402

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
MODELS = ("conv_vae", "conv_ae", "msp")
SIDES = ("per-step", "scanned", "torch")
MSP_SETTINGS = dict(image_size=32, nf=16, num_attributes=13, nc=1)


def _load(name: str, path: Path):
    """A module from a file (the tests' torch references of the original models)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


# --------------------------------------------------------------------------- data
def data(name: str, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 images, NHWC, in the model's range (MSP: also labels in {-1, +1})."""
    rng = np.random.default_rng(seed)
    if name == "msp":
        s, a = MSP_SETTINGS["image_size"], MSP_SETTINGS["num_attributes"]
        images = rng.uniform(-1.0, 1.0, (n, s, s, 1)).astype(np.float32)
        return {"images": images, "labels": rng.choice(np.float32([-1.0, 1.0]), (n, a))}
    return {"images": rng.uniform(0.0, 1.0, (n, 28, 28, 1)).astype(np.float32)}


# --------------------------------------------------------------------------- fpn-jax
def fpn_model(name: str, seed: int = 0):
    if name == "msp":
        from flax import nnx

        return msp_lib.MSP(**MSP_SETTINGS, rngs=nnx.Rngs(seed))
    return autoencoders.create(name, seed=seed)


def fpn_setup(name: str, model, batch_size: int):
    """(batch loss, TrainConfig): what ``fit`` / ``fit_msp`` train ``model`` with."""
    if name == "msp":
        return msp_lib._batch_loss, msp_lib.default_msp_config(batch_size=batch_size)
    return ae_training._batch_loss, ae_training.default_config(model, batch_size=batch_size)


def fpn_arrays(name: str, arrays: dict[str, np.ndarray]) -> tuple[jax.Array, ...]:
    return tuple(jnp.asarray(arrays[k]) for k in (("images", "labels") if name == "msp" else ("images",)))


def fpn_trainer(name: str, arrays: dict[str, np.ndarray], batch_size: int, steps: int, *, seed: int = 0, key=None):
    """The library's training step on ``steps`` batches of the data, both ways.

    Returns ``(per_step, scanned, state, plan, config)``: ``per_step(state, data, rows, key)`` one step
    (jitted) on the rows ``rows`` of ``data``; ``scanned(state, data, order, keys)`` the
    ``steps`` steps (``order`` (steps, batch) rows, ``keys`` (steps,)) as one jitted
    ``lax.scan``; both return ``(state, losses)``. ``plan`` is ``(data, order, keys)`` on the
    device: a fixed permutation of the rows and per-step keys, drawn from ``key`` (default
    ``key(seed)``) as ``fit_model`` draws an epoch's from its ``fold_in(key, epoch)``;
    ``config`` the ``TrainConfig``. The model is ``fpn_model(name, seed)``.
    """
    model = fpn_model(name, seed)
    loss, config = fpn_setup(name, model, batch_size)
    optimizer = config.optimizer(steps)
    parts, state = train.step.split(model, optimizer)
    data_arrays = fpn_arrays(name, arrays)
    parts, state, data_arrays = mesh.replicate((parts, state, data_arrays))
    step = train.make_train_step(parts, loss, optimizer, skip_nonfinite=config.nonfinite == "skip")

    def step_at(state, data, rows, key):  # as fit_model's
        state, (value, _) = step(state, mesh.constrain_rows(tuple(a[rows] for a in data)), key)
        return state, value

    @compiler.jit
    def scanned(state, data, order, keys):
        return jax.lax.scan(lambda s, xs: step_at(s, data, *xs), state, (order, keys))

    perm_key, step_key = jax.random.split(jax.random.key(seed) if key is None else key)
    n = data_arrays[0].shape[0]
    order = jnp.resize(jax.random.permutation(perm_key, n), (steps, batch_size))
    plan = (data_arrays, order, jax.random.split(step_key, steps))
    return compiler.jit(step_at), scanned, state, plan, config


def fpn_operations(name: str, arrays, batch_size: int, steps: int):
    """No-argument callables that train ``steps`` steps (one pass over the data) and return the
    losses, by name (``per-step``, ``scanned``), and the ``TrainConfig``."""
    per_step, scanned, state, (data_arrays, order, keys), config = fpn_trainer(name, arrays, batch_size, steps)
    boxes = {"per-step": {"state": state}, "scanned": {"state": state}}

    def run_per_step():
        box, losses = boxes["per-step"], []
        for i in range(steps):
            box["state"], value = per_step(box["state"], data_arrays, order[i], keys[i])
            losses.append(value)
        return jnp.stack(losses)

    def run_scanned():
        box = boxes["scanned"]
        box["state"], losses = scanned(box["state"], data_arrays, order, keys)
        return losses

    return {"per-step": run_per_step, "scanned": run_scanned}, config


# --------------------------------------------------------------------------- torch
def torch_model(name: str, seed: int = 0):
    """The original PyTorch model, in training mode."""
    import torch

    torch.manual_seed(seed)
    if name == "msp":
        ref = _load("torch_msp", TESTS / "torch_msp.py")
        s, nf, a = MSP_SETTINGS["image_size"], MSP_SETTINGS["nf"], MSP_SETTINGS["num_attributes"]
        model = ref.CnnVae(s, a, nf)
        # The original CnnVae does not pass nc on (always 3 channels): give it the 1-channel halves.
        model.encoder = ref.Encoder(s, nf, nc=MSP_SETTINGS["nc"])
        model.decoder = ref.Decoder(s, nf, nc=MSP_SETTINGS["nc"])
        return model.train()
    ref = _load("torch_autoencoders", TESTS / "torch_autoencoders.py")
    return (ref.TorchConvVAE() if name == "conv_vae" else ref.TorchConvAE()).train()


def torch_loss(name: str, model, batch, eps=None):
    """The mean loss of a batch in torch: the same formula as fpn-jax's for ``name``.

    ``conv_vae``: per image, BCE of the decoder's sigmoid output summed over pixels + KL
    (``F.binary_cross_entropy`` on probabilities, as the original; fpn-jax computes it from the
    logits); ``conv_ae``: the pixel-mean squared error; ``msp``: the original ``CnnVae.loss``
    (without its PatchGAN term), which sums over the batch, divided by the batch size.
    ``eps``: the reparameterisation noise (default ``torch.randn``).
    """
    import torch
    from torch.nn import functional as F  # noqa: N812

    x = batch[0]
    if name == "conv_ae":
        return F.mse_loss(model.dec(model.bottleneck(model.enc(x))), x)
    if name == "conv_vae":
        h = model.enc(x)
        mu, logvar = model.fc_mu(h), model.fc_logvar(h)
        eps = torch.randn_like(mu) if eps is None else eps
        recon = model.dec(mu + torch.exp(0.5 * logvar) * eps)
        bce = F.binary_cross_entropy(recon, x, reduction="none").sum((1, 2, 3))
        kl = 0.5 * (logvar.exp() + mu**2 - 1.0 - logvar).sum(1)
        return (bce + kl).mean()
    mu, logvar = model.encode(x)
    eps = torch.randn_like(mu) if eps is None else eps
    z = mu + torch.exp(0.5 * logvar) * eps
    return model.loss(model.decoder(z), x, batch[1], z, mu, logvar)[0] / x.shape[0]


def torch_operation(name: str, arrays, batch_size: int, steps: int, config: train.TrainConfig) -> Callable[[], Any]:
    """``steps`` Adam steps of the original model on the same batches (indexed as fpn-jax's), with
    ``config``'s learning rate and gradient clipping."""
    import torch

    model = torch_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    tensors = [torch.from_numpy(np.ascontiguousarray(arrays["images"].transpose(0, 3, 1, 2)))]
    if name == "msp":
        tensors.append(torch.from_numpy(arrays["labels"]))
    generator = torch.Generator().manual_seed(0)
    n = tensors[0].shape[0]
    order = torch.randperm(n, generator=generator).repeat(-(-steps * batch_size // n))[: steps * batch_size]
    order = order.view(steps, batch_size)

    def run():
        losses = []
        for i in range(steps):
            optimizer.zero_grad()
            loss = torch_loss(name, model, [t[order[i]] for t in tensors])
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            losses.append(loss.detach())
        return torch.stack(losses)

    return run


# --------------------------------------------------------------------------- timing
# --------------------------------------------------------------------------- measurement
def measure(name: str, args) -> dict[str, Any]:
    n = args.batch_size * args.steps
    arrays = data(name, n)
    operations, config = fpn_operations(name, arrays, args.batch_size, args.steps)
    sides = {k: Side(fn, n) for k, fn in operations.items()}
    if args.torch:
        sides["torch"] = Side(torch_operation(name, arrays, args.batch_size, args.steps, config), n)
    for side_name, side in sides.items():
        side.warm_up(args.min_seconds, calls=2 if side_name == "torch" else 3)
    load = interleaved_repeats(sides.values(), args.repeats)
    row: dict[str, Any] = {
        "model": name, "batch_size": args.batch_size, "steps_per_call": args.steps, "images_per_call": n,
        "loadavg_1min": [round(x, 2) for x in load],
    }
    for side_name, side in sides.items():
        seconds = statistics.median(side.seconds)
        row[side_name] = {
            "images_per_s": side.rate(),
            "seconds_per_step": seconds / args.steps,
            "seconds_per_call": seconds,
            "seconds_all_repeats": side.seconds,
            "calls_per_repeat": side.inner,
            "warm_up_calls_s": side.warm_up_s,
        }
        if side_name != "torch":
            row[side_name]["compile_s"] = side.compile_s()
    rate = {k: row[k]["images_per_s"] for k in sides}
    row["ratio_per_step_vs_scanned"] = rate["per-step"] / rate["scanned"]
    if "torch" in rate:
        row["ratio_per_step_vs_torch"] = rate["per-step"] / rate["torch"]
        row["ratio_scanned_vs_torch"] = rate["scanned"] / rate["torch"]
    return row


# --------------------------------------------------------------------------- report
def markdown(result: dict[str, Any]) -> str:
    vs = result["torch"]
    head = ["model", "batch", "per-step img/s", "scanned img/s", "per-step / scanned", "compile s (step, scan)"]
    if vs:
        head += ["torch img/s", "per-step / torch", "scanned / torch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        step, scan = row["per-step"], row["scanned"]
        cells = [row["model"], str(row["batch_size"]), f"{step['images_per_s']:,.0f}", f"{scan['images_per_s']:,.0f}",
                 f"{row['ratio_per_step_vs_scanned']:.2f}x", f"{step['compile_s']:.1f}, {scan['compile_s']:.1f}"]
        if vs:
            cells += [f"{row['torch']['images_per_s']:,.0f}", f"{row['ratio_per_step_vs_torch']:.2f}x",
                      f"{row['ratio_scanned_vs_torch']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    machine = result["machine"]
    lines += [
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}; "
        f"XLA/torch threads {result['threads']}  ",
        f"Load average (1 min) during the run: min {result['loadavg_min']:.2f}, max {result['loadavg_max']:.2f}  ",
        f"{result['steps']} steps per call on {result['steps']} batches of random images; median of "
        f"{result['repeats']} repeats after warm-up; total {result['seconds']:.0f} s.",
    ]
    if not vs:
        lines.append(f"  \ntorch column skipped: {result['torch_note']}")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 1024; --quick 64)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed call (default 4; --quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; --quick 2)")
    p.add_argument("--min-seconds", type=float, default=0.3, help="least time of one repeat (calls are looped)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    p.add_argument("--quick", action="store_true", help="tiny sizes (batch 64, 2 steps, 2 repeats): for the tests")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    args.batch_size = args.batch_size or (64 if args.quick else 1024)
    args.steps = args.steps or (2 if args.quick else 4)
    args.repeats = args.repeats or (2 if args.quick else 5)
    if min(args.batch_size, args.steps, args.repeats) < 1:
        p.error("--batch-size, --steps and --repeats must be >= 1")
    args.torch_note = ""
    if args.no_torch:
        args.torch_note = "--no-torch"
    elif not torch_available():
        args.torch_note = "torch is not installed"
    args.torch = not args.torch_note
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    start = time.perf_counter()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.torch:
        import torch

        torch.set_num_threads(threads)
    elif args.torch_note:
        print(f"torch column skipped: {args.torch_note}", flush=True)
    rows = []
    for name in args.models:
        rows.append(measure(name, args))
        write(args, result(args, argv, threads, rows, start))
        row = rows[-1]
        extra = f"  torch {row['torch']['images_per_s']:,.0f}/s" if args.torch else ""
        print(f"{name:9s} per-step {row['per-step']['images_per_s']:,.0f}/s  "
              f"scanned {row['scanned']['images_per_s']:,.0f}/s{extra}", flush=True)
    final = result(args, argv, threads, rows, start)
    write(args, final)
    print(markdown(final))
    return final


PACKAGES = ("jax", "jaxlib", "flax", "optax", "fpn-jax", "torch")


def result(args, argv, threads, rows, start) -> dict[str, Any]:
    loads = [x for row in rows for x in row["loadavg_1min"]]
    return {
        "command": "python benchmarks/base_models.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "versions": versions(PACKAGES), "device": str(jax.devices()[0]), "threads": threads,
        "quick": args.quick, "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
        "torch": args.torch, "torch_note": args.torch_note,
        "loadavg_min": min(loads), "loadavg_max": max(loads), "rows": rows,
        "seconds": time.perf_counter() - start,
    }


def write(args, result: dict[str, Any]) -> None:
    write_files(args.out, "base_models-quick" if args.quick else "base_models", result, markdown(result))


if __name__ == "__main__":
    main()
