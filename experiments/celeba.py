"""The paper's CelebA experiment: MSP's VAE × C-MAF and C-RealNVP plugins over 40 attributes.

    python experiments/celeba.py --data-dir data --checkpoint runs/msp      # the paper's run (a GPU)
    python experiments/celeba.py --synthetic                    # offline, drawn faces, MSP trained here
    python experiments/celeba.py --synthetic --tiny             # about a minute: checks the pipeline

--data-dir holds celeba/ in torchvision's layout (img_align_celeba/, list_attr_celeba.txt,
list_eval_partition.txt); --checkpoint a converted MSP_CelebA.tch (python -m fpn_jax.convert
msp MSP_CelebA.tch runs/msp). Writes metrics.json, report.md and figures to --out (default
runs/celeba). Latent shards, the plugins' training, the probe, and (in the model cache) a
base model trained here and the attribute classifier are kept, so an interrupted run resumes
where it stopped and a second run only evaluates.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from fpn_jax.errors import CheckpointError, UsageError
from fpn_jax.evaluation.report_celeba import celeba_table
from fpn_jax.experiments import celeba


def parse(argv: list[str] | None = None) -> celeba.Config:
    """The command line as a ``celeba.Config``: the defaults or an overlay (--synthetic, --tiny), then the flags."""
    full, offline = celeba.Config(), celeba.synthetic()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder holding celeba/ (with --source tfds: tensorflow-datasets' data folder; "
                                      "with --synthetic: where the stand-in is written)")
    p.add_argument("--source", choices=("auto", "folder", "tfds"), help="where the images come from (default auto)")
    p.add_argument("--checkpoint", help="converted MSP checkpoint folder (python -m fpn_jax.convert msp ...)")
    p.add_argument("--train-base", action="store_true", default=None, help="train an MSP here (small images)")
    p.add_argument("--synthetic", action="store_true", help="generated stand-in, small MSP trained here")
    p.add_argument("--tiny", action="store_true", help="with --synthetic: a minute-long check of the pipeline")
    p.add_argument("--out", help=f"run folder (default {full.out}, or {offline.out} with --synthetic)")
    p.add_argument("--plugin", choices=celeba.PLUGINS, help="only this plugin")
    p.add_argument("--seed", type=int, help=f"one seed for training, encoding and sampling (default {full.seed})")
    p.add_argument("--latents", choices=celeba.LATENTS,
                   help="z ~ q(z|x) as the original ('sample', the default) or the posterior mean")
    p.add_argument("--image-size", type=int, help=f"with --train-base: image side (default {full.image_size})")
    p.add_argument("--base-epochs", type=int, help=f"with --train-base (default {full.base_epochs})")
    p.add_argument("--maf-epochs", type=int, help=f"C-MAF's maximum epochs (default {full.maf_epochs})")
    p.add_argument("--rnvp-epochs", type=int, help=f"C-RealNVP's maximum epochs (default {full.rnvp_epochs})")
    p.add_argument("--classifier-epochs", type=int, help=f"the attribute CNN (default {full.classifier_epochs})")
    p.add_argument("--edit-images", type=int, help=f"test faces whose 40 edits are scored (default {full.edit_images})")
    a = p.parse_args(argv)
    if a.tiny and not a.synthetic:
        p.error("--tiny goes with --synthetic")
    if a.synthetic and a.checkpoint:
        p.error("--synthetic trains its own base model; it does not take --checkpoint")
    if a.checkpoint and a.train_base:
        p.error("give either --checkpoint (a converted MSP) or --train-base, not both")
    config = celeba.tiny() if a.tiny else offline if a.synthetic else full
    flags = {
        "data_dir": a.data_dir, "data_source": a.source, "checkpoint": a.checkpoint, "train_base": a.train_base,
        "out": a.out, "plugins": (a.plugin,) if a.plugin else None, "seed": a.seed, "latents": a.latents,
        "image_size": a.image_size, "base_epochs": a.base_epochs, "maf_epochs": a.maf_epochs,
        "rnvp_epochs": a.rnvp_epochs, "classifier_epochs": a.classifier_epochs, "edit_images": a.edit_images,
    }
    try:
        return dataclasses.replace(config, **{name: value for name, value in flags.items() if value is not None})
    except ValueError as error:  # a flag's value the Config refuses, e.g. --maf-epochs 0
        p.error(str(error))


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    try:
        results = celeba.train_and_evaluate(config, config.out)
    except (CheckpointError, UsageError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\nwrote {config.out}/report.md and metrics.json\n")
    print(celeba_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
