"""``python -m fpn_jax.convert``: PyTorch checkpoints → fpn-jax orbax checkpoints.

    python -m fpn_jax.convert autoencoder MODEL.pt OUT_DIR [--architecture conv_vae]
    python -m fpn_jax.convert flow --kind maf FLOW.pt OUT_DIR [--scale-function sigmoid]

``MODEL.pt``: a torch ``state_dict`` (``.pt``/``.pth``) or a PyTorch Lightning ``.ckpt``.
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
    args = parser.parse_args(argv)

    try:
        if args.command == "autoencoder":
            from fpn_jax.convert.autoencoders import convert_autoencoder

            path = convert_autoencoder(args.source, args.destination, architecture=args.architecture,
                                       overwrite=args.overwrite)
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
