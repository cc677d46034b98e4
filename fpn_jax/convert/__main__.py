"""``python -m fpn_jax.convert``: PyTorch checkpoints → fpn-jax orbax checkpoints.

    python -m fpn_jax.convert autoencoder MODEL.pt OUT_DIR [--architecture conv_vae]
    python -m fpn_jax.convert flow --kind maf FLOW.pt OUT_DIR [--scale-function sigmoid]
    python -m fpn_jax.convert pointflow CHECKPOINT OUT_DIR [--mean train_set_mean.npy --std train_set_std.npy]
    python -m fpn_jax.convert msp MSP_CelebA.tch OUT_DIR [--overwrite]

``MODEL.pt``: a torch ``state_dict`` (``.pt``/``.pth``) or a PyTorch Lightning ``.ckpt``.
``MSP_CelebA.tch``: MSP's CelebA VAE (lissomx/MSP ``CnnVae``, Flow Plugin Networks' CelebA
base model), a plain state dict; its sizes are read from the shapes.
``OUT_DIR`` is then loadable with ``fpn_jax.autoencoders.load`` / ``fpn_jax.checkpoint.load``.
Nothing is written unless the conversion succeeds; errors name the file and the keys.
"""

from __future__ import annotations

import argparse
import sys

from fpn_jax.checkpoint import CheckpointError


def main(argv: list[str] | None = None) -> int:
    """Runs the command line: converts the file named in ``argv`` and reports the result.

    Args:
      argv: the command-line arguments after the program name; ``None`` reads ``sys.argv``.

    Returns:
      The exit status: 0 once the checkpoint is written, 1 (with the error on stderr) when the
      conversion fails.
    """
    parser = argparse.ArgumentParser(prog="python -m fpn_jax.convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ae = commands.add_parser("autoencoder", help="the original ConvVAE / ConvAE weights")
    ae.add_argument("source", help="torch .pt/.pth state dict or Lightning .ckpt")
    ae.add_argument("destination", help="output checkpoint folder")
    ae.add_argument("--architecture", choices=["conv_vae", "conv_ae"], help="default: guessed from the keys")
    ae.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    flow = commands.add_parser("flow", help="an nflows 0.14 Flow (the original C-MAF / C-RealNVP)")
    flow.add_argument("source", help="torch .pt/.pth state dict or Lightning .ckpt of the nflows Flow")
    flow.add_argument("destination", help="output checkpoint folder")
    flow.add_argument("--kind", choices=["maf", "rnvp"], required=True)
    flow.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    pointflow = commands.add_parser("pointflow", help="PointFlow's all-category auto-encoder (ae/all/checkpoint.pt)")
    pointflow.add_argument("source", help="PointFlow's checkpoint.pt (a state dict or {'epoch', 'model', ...})")
    pointflow.add_argument("destination", help="output checkpoint folder")
    pointflow.add_argument("--mean", help="train_set_mean.npy, stored with the model (give --std too)")
    pointflow.add_argument("--std", help="train_set_std.npy, stored with the model (give --mean too)")
    pointflow.add_argument("--allow-single-category", action="store_true",
                           help="convert a file whose folder is named after one ShapeNet category")
    pointflow.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    msp = commands.add_parser("msp", help="MSP's CelebA VAE (lissomx/MSP CnnVae, MSP_CelebA.tch)")
    msp.add_argument("source", help="MSP_CelebA.tch: the CnnVae state dict")
    msp.add_argument("destination", help="output checkpoint folder")
    msp.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    args = parser.parse_args(argv)
    if args.command == "pointflow" and (args.mean is None) != (args.std is None):
        parser.error("pointflow: give both --mean and --std (train_set_mean.npy, train_set_std.npy) or neither")

    try:
        if args.command == "autoencoder":
            from fpn_jax.convert.autoencoders import convert_autoencoder

            path = convert_autoencoder(args.source, args.destination, architecture=args.architecture,
                                       overwrite=args.overwrite)
        elif args.command == "msp":
            from fpn_jax.convert.msp import convert_msp

            path = convert_msp(args.source, args.destination, overwrite=args.overwrite)
        elif args.command == "pointflow":
            from fpn_jax.convert.pointflow import convert_pointflow

            path = convert_pointflow(args.source, args.destination, mean=args.mean, std=args.std,
                                     overwrite=args.overwrite, allow_single_category=args.allow_single_category)
        else:
            from fpn_jax.convert.nflows import convert_flow

            path = convert_flow(args.source, args.destination, kind=args.kind, overwrite=args.overwrite)
    except (CheckpointError, FileNotFoundError, FileExistsError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
