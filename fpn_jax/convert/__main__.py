"""``python -m fpn_jax.convert``: PyTorch checkpoints → fpn-jax orbax checkpoints.

    python -m fpn_jax.convert autoencoder SOURCE OUT_DIR [--architecture {conv_vae,conv_ae}] [--overwrite]
    python -m fpn_jax.convert flow SOURCE OUT_DIR [--kind {maf,rnvp}] [--overwrite]
    python -m fpn_jax.convert pointflow CHECKPOINT OUT_DIR [--mean MEAN.npy --std STD.npy]
        [--allow-single-category] [--overwrite]
    python -m fpn_jax.convert msp MSP_CelebA.tch OUT_DIR [--overwrite]

``SOURCE``: a torch ``state_dict`` (``.pt``/``.pth``), a PyTorch Lightning ``.ckpt`` (old ones
whose callback states are keyed by class objects too), or the original FPN code's whole
pickled model (``run.py``'s ``version_N/checkpoints/model.pkt``, with ``version_N/config.yaml``).
Files are read with torch's restricted unpickler and inert stand-ins for the classes they
name: no code from them runs, and neither the original repository, nflows nor Lightning is
needed. The flow's kind (MAF or RealNVP), sizes, activation and dropout are read from the file
(``--kind`` is checked when given); a RealNVP gets nflows' sigmoid scale, a MAF nflows 0.14's
softplus. ``MSP_CelebA.tch``: MSP's CelebA VAE (lissomx/MSP ``CnnVae``, Flow Plugin Networks'
CelebA base model), a plain state dict; its sizes are read from the shapes. ``OUT_DIR`` is then
loadable with ``fpn_jax.autoencoders.load`` / ``fpn_jax.checkpoint.load``. Nothing is written
unless the conversion succeeds; errors name the file, the keys, and options as typed here.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from fpn_jax.checkpoint import CheckpointError

SOURCE_HELP = ("torch state dict (.pt/.pth), Lightning .ckpt, or the original code's pickled model.pkt "
               "(read without running it)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, list[argparse.Action]]]:
    """The command line's parser, and each subcommand's options (for ``as_typed``)."""
    parser = argparse.ArgumentParser(prog="python -m fpn_jax.convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    options: dict[str, list[argparse.Action]] = {}

    def command(name: str, help: str, source: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("source", help=source)
        sub.add_argument("destination", help="output checkpoint folder")
        options[name] = []
        return sub

    def option(sub: argparse.ArgumentParser, name: str, flag: str, **kwargs) -> None:
        options[name].append(sub.add_argument(flag, **kwargs))

    ae = command("autoencoder", "the original ConvVAE / ConvAE", SOURCE_HELP)
    option(ae, "autoencoder", "--architecture", choices=["conv_vae", "conv_ae"],
           help="default: read from the file (pickled class, config.yaml, keys); checked when given")
    flow = command("flow", "an nflows 0.14 Flow (the original C-MAF / C-RealNVP)", SOURCE_HELP)
    option(flow, "flow", "--kind", choices=["maf", "rnvp"],
           help="default: read from the file (its keys); checked when given")
    pointflow = command("pointflow", "PointFlow's all-category auto-encoder (ae/all/checkpoint.pt)",
                        "PointFlow's checkpoint.pt (a state dict or {'epoch', 'model', ...})")
    option(pointflow, "pointflow", "--mean", help="train_set_mean.npy, stored with the model (give --std too)")
    option(pointflow, "pointflow", "--std", help="train_set_std.npy, stored with the model (give --mean too)")
    option(pointflow, "pointflow", "--allow-single-category", action="store_true",
           help="convert a file whose folder is named after one ShapeNet category")
    msp = command("msp", "MSP's CelebA VAE (lissomx/MSP CnnVae, MSP_CelebA.tch)",
                  "MSP_CelebA.tch: the CnnVae state dict")
    for name, sub in (("autoencoder", ae), ("flow", flow), ("pointflow", pointflow), ("msp", msp)):
        option(sub, name, "--overwrite", action="store_true", help="replace an existing destination")
    return parser, options


def as_typed(message: str, options: list[argparse.Action]) -> str:
    """Rewrites the Python spelling of options in an error message as typed on the command line.

    ``overwrite=True`` becomes ``--overwrite`` and ``kind='maf'`` becomes ``--kind maf``, for
    every option in ``options``.

    Args:
      message: the error message (written for Python callers).
      options: a subcommand's options (``build_parser``).

    Returns:
      The message as a command-line user reads it.
    """
    for action in options:
        flag, dest = action.option_strings[0], re.escape(action.dest)
        if action.nargs == 0:  # a switch such as --overwrite
            message = re.sub(rf"\b{dest}=True\b", flag, message)
        else:
            message = re.sub(rf"\b{dest}=(['\"])([^'\"]*)\1", rf"{flag} \2", message)
    return message


def main(argv: list[str] | None = None) -> int:
    """Runs the command line: converts the file named in ``argv`` and reports the result.

    Args:
      argv: the command-line arguments after the program name; ``None`` reads ``sys.argv``.

    Returns:
      The exit status: 0 once the checkpoint is written, 1 (with the error on stderr) when the
      conversion fails.
    """
    parser, options = build_parser()
    args = parser.parse_args(argv)
    if args.command == "pointflow" and (args.mean is None) != (args.std is None):
        parser.error("pointflow: give both --mean and --std (train_set_mean.npy, train_set_std.npy) or neither")

    try:
        if Path(args.destination).exists() and not args.overwrite:  # before reading a large file
            raise FileExistsError(f"{Path(args.destination).absolute()} exists; pass overwrite=True to replace it.")
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
        print(f"error: {as_typed(str(error), options[args.command])}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
