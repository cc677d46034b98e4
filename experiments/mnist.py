"""The paper's MNIST experiments: ConvVAE and ConvAE bases × C-MAF and C-RealNVP plugins.

    python experiments/mnist.py --data-dir ../shared/data/mnist           # full run
    python experiments/mnist.py --data-dir ../shared/data/mnist --quick   # ~1 minute check
    python experiments/mnist.py --dataset fashion_mnist --quick           # Fashion-MNIST, downloaded once

Without --data-dir the four IDX files are read from $FPN_JAX_HOME/data/<dataset> (default
~/.cache/fpn_jax), downloaded there on first use. Writes metrics.json, report.md and figures
to --out (default runs/<dataset>). Base models and the judge CNN are cached (see --cache-dir),
so a second run only trains the plugins.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from fpn_jax.data import DatasetUnavailableError, IDXFormatError
from fpn_jax.evaluation.report import headline_table
from fpn_jax.experiments import mnist


def parse(argv: list[str] | None = None) -> mnist.Config:
    """The command line as a ``mnist.Config``: the defaults, the quick overlay with --quick, then the flags."""
    full, fast = mnist.Config(), mnist.quick()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder with the four IDX files (default: downloaded once into "
                   "$FPN_JAX_HOME/data/<dataset>)")
    p.add_argument("--dataset", choices=mnist.DATASETS, help=f"the data set (default {full.dataset})")
    p.add_argument("--out", help=f"run folder (default {full.out}, or {fast.out} with --quick; "
                   "runs/<dataset>[-quick] for another dataset)")
    p.add_argument("--base", choices=mnist.BASES, help="only this base model")
    p.add_argument("--plugin", choices=mnist.PLUGINS, help="only this plugin")
    p.add_argument("--seed", type=int, help=f"one seed for data split, training and sampling (default {full.seed})")
    p.add_argument("--quick", action="store_true", help="small subset, short training: checks the pipeline")
    p.add_argument("--cache-dir", help="where trained base models and the judge are kept")
    p.add_argument("--base-epochs", type=int, help=f"default {full.base_epochs}, or {fast.base_epochs} with --quick")
    p.add_argument("--plugin-epochs", type=int,
                   help=f"default {full.plugin_epochs}, or {fast.plugin_epochs} with --quick")
    p.add_argument("--plugin-patience", type=mnist.parse_patience, metavar="paper|none|N", default=argparse.SUPPRESS,
                   help="early-stopping patience of the plugins: the original code's per-combination values "
                   "(paper, the default: 50 epochs, 100 for ConvAE + C-RealNVP), none, or N epochs for all")
    p.add_argument("--vae-sample-latents", action="store_true", default=None,
                   help="encode z ~ q(z|x) (the original code) not the mean")
    p.add_argument("--grid-search", action="store_true", default=None,
                   help="the paper's 5-fold grid search for the baselines")
    a = p.parse_args(argv)
    flags = {
        "data_dir": a.data_dir, "dataset": a.dataset, "out": a.out, "bases": (a.base,) if a.base else None,
        "plugins": (a.plugin,) if a.plugin else None, "seed": a.seed, "cache_dir": a.cache_dir,
        "base_epochs": a.base_epochs, "plugin_epochs": a.plugin_epochs,
        "vae_sample_latents": a.vae_sample_latents, "grid_search": a.grid_search,
    }
    config = fast if a.quick else full
    flags = {name: value for name, value in flags.items() if value is not None}
    if "plugin_patience" in vars(a):  # given (None: --plugin-patience none)
        flags["plugin_patience"] = a.plugin_patience
    return dataclasses.replace(config, **flags)


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    try:
        results = mnist.train_and_evaluate(config, config.out)
    except (DatasetUnavailableError, IDXFormatError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\nwrote {config.out}/report.md and metrics.json\n")
    print(headline_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
