"""A class-conditional image flow trained on pixels against Flow Plugin Networks on the same data.

    python experiments/image_flow.py --data-dir ../shared/data/mnist --plugins-from runs/mnist  # 26 min, 2 cores
    python experiments/image_flow.py --data-dir ../shared/data/mnist            # plugins trained here too (~1 h)
    python experiments/image_flow.py --data-dir ../shared/data/mnist --quick    # tiny end-to-end check
    python experiments/image_flow.py --dataset fashion_mnist --quick            # Fashion-MNIST

Compares generation accuracy (judge CNN, per class, τ = 1.0 and 0.7), Bayes-rule accuracy,
test bits/dim of the pixel flow and the compute each approach needed; also trains the
tutorial's image-conditioned flow p(x | x). Writes metrics.json, report.md and sample grids
to --out (default runs/image_flow/<dataset>[-quick]). The base models and the judge come from
the MNIST experiment's model cache (see --cache-dir); --quick keeps its models in the run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from fpn_jax.data import DatasetUnavailableError, IDXFormatError
from fpn_jax.experiments import image_flow, mnist


def parse(argv: list[str] | None = None) -> image_flow.Config:
    """The command line as a ``Config``: the defaults, the quick overlay with --quick, then the flags."""
    full, fast = image_flow.Config(), image_flow.quick()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder with the four IDX files (default: $FPN_JAX_HOME/data/<dataset>)")
    p.add_argument("--dataset", choices=mnist.DATASETS, help=f"the data set (default {full.dataset})")
    p.add_argument("--out", help="run folder (default runs/image_flow/<dataset>, …-quick with --quick)")
    p.add_argument("--seed", type=int, help=f"one seed for split, training and sampling (default {full.seed})")
    p.add_argument("--quick", action="store_true", help="tiny subsets, one epoch: checks the pipeline")
    p.add_argument("--epochs", type=int, help=f"epoch cap of the pixel flow (default {full.flow_epochs}, "
                   f"or {fast.flow_epochs} with --quick)")
    p.add_argument("--cache-dir", help="where the base models and the judge are kept")
    p.add_argument("--hidden-channels", type=int, help=f"channels of the pixel flow's conditioner CNNs "
                   f"(default {full.hidden_channels})")
    p.add_argument("--steps-per-scale", type=int, help=f"coupling steps per scale (default {full.steps_per_scale})")
    p.add_argument("--num-blocks", type=int, help=f"residual blocks per conditioner (default {full.num_blocks})")
    p.add_argument("--self-conditioned-epochs", type=int,
                   help=f"epochs of the image-conditioned flow p(x | x) (default {full.self_conditioned_epochs})")
    p.add_argument("--plugin-epochs", type=int, help=f"epoch cap of the plugins (default {full.plugin_epochs})")
    p.add_argument("--plugin-patience", type=mnist.parse_patience, metavar="paper|none|N", default=argparse.SUPPRESS,
                   help="early-stopping patience of the plugins (default paper: the MNIST experiment's)")
    p.add_argument("--plugins-from", metavar="RUN", help="use the plugins a MNIST run trained (e.g. runs/mnist; "
                   "same settings, data and base models) instead of training them again")
    p.add_argument("--bayes-test-size", type=int, help="test images classified in pixel space (default: all)")
    a = p.parse_args(argv)
    first = {"data_dir": a.data_dir, "dataset": a.dataset, "seed": a.seed}
    config = image_flow.Config(**{k: v for k, v in first.items() if v is not None})
    if a.quick:
        config = image_flow.quick(config)
    flags = {"out": a.out, "flow_epochs": a.epochs, "cache_dir": a.cache_dir, "hidden_channels": a.hidden_channels,
             "steps_per_scale": a.steps_per_scale, "num_blocks": a.num_blocks,
             "self_conditioned_epochs": a.self_conditioned_epochs, "plugin_epochs": a.plugin_epochs,
             "bayes_test_size": a.bayes_test_size, "plugins_from": a.plugins_from}
    flags = {k: v for k, v in flags.items() if v is not None}
    if "plugin_patience" in vars(a):  # given (None: --plugin-patience none)
        flags["plugin_patience"] = a.plugin_patience
    return dataclasses.replace(config, **flags)


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    try:
        record = image_flow.train_and_evaluate(config, config.out)
    except (DatasetUnavailableError, IDXFormatError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\nwrote {config.out}/report.md and metrics.json (total {record['timings']['total']:.1f} s)\n")
    report = (config.out and open(f"{config.out}/report.md").read()) or ""
    print(report.split("## Generation accuracy per class")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
