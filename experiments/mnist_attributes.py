"""Attribute manipulation on MNIST, measured with Morpho-MNIST attributes: FPN against MSP's linear edit.

    python experiments/mnist_attributes.py --data-dir ../shared/data/mnist           # full run
    python experiments/mnist_attributes.py --data-dir ../shared/data/mnist --quick   # a few minutes' check

Writes metrics.json, report.md and edits_<base>.png to --out (default runs/mnist_attributes).
The ConvVAE, ConvAE and judge CNN are shared with experiments/mnist.py through the model
cache (see --cache-dir); measurements, latents, plugins and evaluations are kept in --out,
so a second or interrupted run only computes what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from fpn_jax.data import DatasetUnavailableError, IDXFormatError
from fpn_jax.data.morpho import ATTRIBUTES
from fpn_jax.experiments import mnist_attributes as experiment


def parse(argv: list[str] | None = None) -> experiment.Config:
    """The command line as a ``Config``: the defaults, the quick overlay with --quick, then the flags."""
    full, fast = experiment.Config(), experiment.quick()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder with the four MNIST IDX files (default: tensorflow-datasets)")
    p.add_argument("--out", help=f"run folder (default {full.out}, or {fast.out} with --quick)")
    p.add_argument("--base", choices=experiment.BASES, action="append", help="only this base model (repeatable)")
    p.add_argument("--plugin", choices=experiment.PLUGINS, help="only this plugin")
    p.add_argument("--attributes", nargs="+", choices=tuple(ATTRIBUTES), metavar="NAME",
                   help=f"binary attributes, from {', '.join(ATTRIBUTES)} (default {' '.join(full.attributes)})")
    p.add_argument("--seed", type=int, help=f"one seed for data split, training and sampling (default {full.seed})")
    p.add_argument("--quick", action="store_true", help="small subset, short training: checks the pipeline")
    p.add_argument("--cache-dir", help="where trained base models and the judge are kept")
    p.add_argument("--edit-images", type=int,
                   help=f"test images edited (default {full.edit_images}, or {fast.edit_images} with --quick)")
    p.add_argument("--base-epochs", type=int, help=f"ConvVAE / ConvAE epochs (default {full.base_epochs})")
    p.add_argument("--msp-epochs", type=int, help=f"MSP epochs (default {full.msp_epochs})")
    p.add_argument("--plugin-epochs", type=int, help=f"default {full.plugin_epochs}")
    a = p.parse_args(argv)
    flags = {
        "data_dir": a.data_dir, "out": a.out, "bases": tuple(a.base) if a.base else None,
        "plugins": (a.plugin,) if a.plugin else None, "attributes": tuple(a.attributes) if a.attributes else None,
        "seed": a.seed, "cache_dir": a.cache_dir, "edit_images": a.edit_images, "base_epochs": a.base_epochs,
        "msp_epochs": a.msp_epochs, "plugin_epochs": a.plugin_epochs,
    }
    config = fast if a.quick else full
    return dataclasses.replace(config, **{name: value for name, value in flags.items() if value is not None})


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    try:
        results = experiment.train_and_evaluate(config, config.out)
    except (DatasetUnavailableError, IDXFormatError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\nwrote {config.out}/report.md and metrics.json\n")
    for base, result in results["results"].items():
        for method, scores in result.get("methods", {}).items():
            mean = scores["mean"]
            print(f"{base:9s} {experiment.METHOD_NAMES[method]:14s} success {mean['success']:.3f}  others kept "
                  f"{mean['others_kept']:.3f}  digit kept {mean['class_kept']:.3f}  "
                  f"pixel RMSE {mean['pixel_rmse']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
