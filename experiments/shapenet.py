"""The paper's ShapeNet experiment (Table 2): PointFlow's auto-encoder × C-MAF and C-RealNVP plugins.

    python experiments/shapenet.py --data-dir ShapeNetCore.v2.PC15k --checkpoint pointflow_ae_all   # Table 2
    python experiments/shapenet.py --synthetic                    # offline, generated shapes (~20 min CPU)
    python experiments/shapenet.py --synthetic --tiny             # seconds: checks the pipeline

Writes metrics.json, report.md and figures to --out (default runs/shapenet). Latents, a base
model trained here (--train-base) and the plugins' training are kept in the run folder, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from fpn_jax.errors import CheckpointError, UsageError
from fpn_jax.evaluation.report import shapenet_table
from fpn_jax.experiments import shapenet


def parse(argv: list[str] | None = None) -> shapenet.Config:
    """The command line as a ``shapenet.Config``: the defaults or an overlay (--synthetic, --tiny), then the flags."""
    full, offline = shapenet.Config(), shapenet.synthetic()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="ShapeNetCore.v2.PC15k folder (with --synthetic: where the stand-in is written)")
    p.add_argument("--checkpoint", help="converted PointFlow checkpoint folder (python -m fpn_jax.convert pointflow)")
    p.add_argument("--train-base", action="store_true", default=None, help="train the PointFlow base model here")
    p.add_argument("--synthetic", action="store_true", help="generated stand-in, small PointFlow trained here")
    p.add_argument("--tiny", action="store_true", help="with --synthetic: a seconds-long check of the pipeline")
    p.add_argument("--out", help=f"run folder (default {full.out}, or {offline.out} with --synthetic)")
    p.add_argument("--categories", help="comma-separated synset ids or names (default: every folder present)")
    p.add_argument("--plugin", choices=shapenet.PLUGINS, help="only this plugin")
    p.add_argument("--seed", type=int, help=f"one seed for point subsets, training and sampling (default {full.seed})")
    p.add_argument("--base-epochs", type=int, help=f"with --train-base (default {full.base_epochs})")
    p.add_argument("--plugin-epochs", type=int, help=f"default {full.plugin_epochs}")
    p.add_argument("--generation-samples", type=int, help=f"clouds per class (default {full.generation_samples})")
    p.add_argument("--generation-classes", type=int, help="score only the classes with most test clouds")
    p.add_argument("--decode-solver", choices=("dopri5", "rk4"), help="the point CNF's solver when decoding")
    p.add_argument("--grid-search", action="store_true", default=None,
                   help="the paper's 5-fold grid search for the baselines")
    a = p.parse_args(argv)
    if a.tiny and not a.synthetic:
        p.error("--tiny goes with --synthetic")
    if a.synthetic and a.checkpoint:
        p.error("--synthetic trains its own base model; it does not take --checkpoint")
    config = shapenet.tiny() if a.tiny else offline if a.synthetic else full
    flags = {
        "data_dir": a.data_dir, "checkpoint": a.checkpoint, "train_base": a.train_base, "out": a.out,
        "categories": tuple(c.strip() for c in a.categories.split(",")) if a.categories else None,
        "plugins": (a.plugin,) if a.plugin else None, "seed": a.seed, "base_epochs": a.base_epochs,
        "plugin_epochs": a.plugin_epochs, "generation_samples": a.generation_samples,
        "generation_classes": a.generation_classes, "decode_solver": a.decode_solver, "grid_search": a.grid_search,
    }
    return dataclasses.replace(config, **{name: value for name, value in flags.items() if value is not None})


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    try:
        results = shapenet.train_and_evaluate(config, config.out)
    except (CheckpointError, UsageError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\nwrote {config.out}/report.md and metrics.json\n")
    print(shapenet_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
