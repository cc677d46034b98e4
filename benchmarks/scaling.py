"""Throughput against device count: fpn-jax's data parallelism (``fpn_jax.parallel``), measured.

For each device count d it times, through the public API, on synthetic data:

* ``train``: ``fpn_jax.fit`` epochs of the paper's MNIST-VAE C-MAF (D=40, hidden 40, 5 layers ×
  2 blocks, context 10, batch 1024), examples per second of training: the median epoch
  after the first (which includes compilation), from ``History.epoch_seconds``;
* ``log_prob``, ``sample``, ``classify``: the same flow on 10,000 rows (classification
  scores every row against all 10 classes);
* ``encode``: ``fpn_jax.latents.encode`` of 10,000 28×28 images by a ConvVAE.

On CPU the devices are XLA host devices (``--xla_force_host_platform_device_count=d``),
one subprocess per d: they share the machine's cores, so this measures the overhead of
splitting, not extra compute. On GPU/TPU one process uses the first d devices
(``fpn_jax.parallel.use_devices``). Medians of ``--repeats`` runs; the table goes to stdout and,
with the JSON, to ``--out``.

    python benchmarks/scaling.py                      # CPU: d = 1, 2, 4, 8 host devices
    python benchmarks/scaling.py --platform gpu       # all GPUs: d = 1, 2, 4, ... up to their number
    python benchmarks/scaling.py --quick              # small sizes, d = 1, 2 (seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Sizes:
    train_rows: int = 50_000
    train_epochs: int = 3
    rows: int = 10_000
    images: int = 10_000
    repeats: int = 5


QUICK = Sizes(train_rows=4096, train_epochs=2, rows=2048, images=512, repeats=3)


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(count: int, sizes: Sizes) -> dict[str, float]:
    """Examples per second of each task on the first ``count`` devices of this process."""
    import jax
    from flax import nnx

    from fpn_jax import ConditionalMAF, TrainConfig, autoencoders, classify, fit, latents, parallel

    def block(x):
        return jax.block_until_ready(x)

    key = jax.random.key(0)
    z = jax.random.normal(key, (sizes.train_rows, 40))
    labels = jax.random.randint(key, (sizes.train_rows,), 0, 10)
    context = jax.nn.one_hot(labels, 10)

    def new_flow():
        return ConditionalMAF(40, 10, hidden_features=40, num_layers=5, num_blocks=2, rngs=nnx.Rngs(0))

    results = {}
    with parallel.use_devices(count):
        history = fit(new_flow(), z, context, key=key, progress=False,
                      config=TrainConfig(batch_size=1024, max_epochs=1 + sizes.train_epochs, patience=None))
        # epoch 0 includes compilation
        results["train"] = sizes.train_rows / statistics.median(history.epoch_seconds[1:])

        flow = new_flow()
        flow.eval()
        zq, cq = z[: sizes.rows], context[: sizes.rows]
        results["log_prob"] = sizes.rows / _median_time(lambda: block(flow.log_prob(zq, cq)), sizes.repeats)
        results["sample"] = sizes.rows / _median_time(lambda: block(flow.sample(key, cq)), sizes.repeats)
        results["classify"] = sizes.rows / _median_time(lambda: block(classify(flow, zq)[0]), sizes.repeats)

        model = autoencoders.freeze(autoencoders.create("conv_vae", seed=0))
        images = jax.random.uniform(key, (sizes.images, 28, 28, 1))
        results["encode"] = sizes.images / _median_time(
            lambda: latents.encode(model, images, batch_size=2048), sizes.repeats
        )
    results["devices"] = count
    results["platform"] = jax.default_backend()
    return results


def _worker(args: argparse.Namespace) -> None:
    sizes = QUICK if args.quick else Sizes(repeats=args.repeats)
    print(json.dumps([measure(c, sizes) for c in args.counts]))


def _run_cpu(counts: list[int], args: argparse.Namespace) -> list[dict]:
    rows = []
    for count in counts:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}", JAX_PLATFORMS="cpu")
        command = [sys.executable, __file__, "--worker", "--counts", str(count), "--repeats", str(args.repeats)]
        command += ["--quick"] if args.quick else []
        out = subprocess.run(command, env=env, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"scaling: the worker for {count} devices failed:\n{out.stderr[-3000:]}")
        rows += json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  measured d = {count}", file=sys.stderr)
    return rows


def table(rows: list[dict]) -> str:
    tasks = ["train", "log_prob", "sample", "classify", "encode"]
    base = rows[0]
    lines = [
        "| devices | " + " | ".join(f"{t} (ex/s)" for t in tasks) + " | " + " | ".join(f"{t} ×" for t in tasks) + " |",
        "|---" * (1 + 2 * len(tasks)) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['devices']} | " + " | ".join(f"{r[t]:,.0f}" for t in tasks) + " | "
            + " | ".join(f"{r[t] / base[t]:.2f}" for t in tasks) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", choices=["cpu", "gpu", "tpu"], default="cpu")
    parser.add_argument(
        "--counts", type=int, nargs="+", help="device counts (default 1 2 4 8 on CPU; powers of 2 otherwise)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes and d = 1, 2")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for scaling_<platform>.{json,md}")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)

    if args.platform == "cpu":
        rows = _run_cpu(args.counts or ([1, 2] if args.quick else [1, 2, 4, 8]), args)
    else:
        import jax

        available = len(jax.devices(args.platform))
        counts = args.counts or [2**i for i in range(available.bit_length()) if 2**i <= available]
        sizes = QUICK if args.quick else Sizes(repeats=args.repeats)
        rows = [measure(c, sizes) for c in counts]
    text = table(rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"scaling_{args.platform}{'_quick' if args.quick else ''}"
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu_count": os.cpu_count(),
            "loadavg": os.getloadavg(), "rows": rows}
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    stem.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
