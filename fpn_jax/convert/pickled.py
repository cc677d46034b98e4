"""Reading torch files without running their code: pickled modules and old Lightning checkpoints.

The original FPN code saves every trained model as a whole pickled module
(``torch.save(runner.model.model, ".../checkpoints/model.pkt")``), and old PyTorch Lightning
checkpoints key their callback states by the callback's class. ``torch.load(weights_only=True)``
refuses both, and ``weights_only=False`` would import and run whatever the pickle names. This
module loads them with torch's own restricted unpickler (``weights_only=True``: torch's zip and
legacy formats, its storages and tensor rebuild functions) and lets every other name the pickle
refers to through as an inert stand-in, registered with ``torch.serialization.safe_globals``:

* the module classes of nflows, torch.nn and the original FPN code (``FPN_CLASSES``), and a
  few plain data types (``DATA_CLASSES``: NumPy scalars, ``argparse.Namespace``), become
  ``PickledObject`` instances that only collect the pickled state (``_parameters``,
  ``_buffers``, ``_modules`` and attributes); ``PickledObject.state_dict`` returns what
  ``Module.state_dict()`` would;
* any other name becomes a ``Reference``: it may be referred to (a class used as a dictionary
  key, as Lightning did with callbacks; a function stored as an attribute, like nflows'
  ``activation``) but creating or calling it stops the load with ``UnknownClassError``. A
  pickle whose ``__reduce__`` would call ``exec`` or ``os.system`` is refused there, before
  anything runs.

Nothing from the file is imported or executed: stand-ins are classes of this module. torch
is imported lazily (``pip install "fpn-jax[torch]"``).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from fpn_jax.errors import CheckpointError

#: The first bytes of torch's legacy (pre-1.6, non-zip) format: protocol 2, then its magic number.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
ZIP_MAGIC = b"PK\x03\x04"

#: Module classes of the original FPN code (github.com/pfilo8/Flow-Plugin-Network-for-conditional-
#: generation), under the module paths its pickles record, current and earlier layouts.
FPN_CLASSES = frozenset({
    "models.flows.autoregressive.MaskedAutoregressiveFlow",
    "models.flows.realnvp.SimpleRealNVP",
    "flows.autoregressive.MaskedAutoregressiveFlow",
    "flows.realnvp.SimpleRealNVP",
    "flows.base.Flow",
    "models.vae.base.BaseVAE",
    "models.vae.conv_vae.ConvVAE",
    "models.vae.conv_vae.Encoder",
    "models.vae.conv_vae.Decoder",
    "models.vae.conv_ae.ConvAE",
    "models.vae.conv_ae.Encoder",
    "models.vae.conv_ae.Decoder",
    "models.vae.msp.MSP",
    "models.vae.msp.Encoder",
    "models.vae.msp.Decoder",
})
#: Packages whose classes are module classes (nflows' are all ``torch.nn.Module`` subclasses).
MODULE_PACKAGES = ("nflows.", "torch.nn.modules.")
#: Plain data that Lightning checkpoints may hold beside the weights (NumPy scalars and arrays in
#: callback states, ``argparse.Namespace`` hyperparameters): created inertly too, never used.
DATA_CLASSES = frozenset({
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.dtype",
    "numpy.ndarray",
    "argparse.Namespace",
})
#: Modules whose globals torch's restricted unpickler refuses before any allowlist.
BLOCKED_MODULES = ("os", "sys", "posix", "nt")


class TorchFileError(CheckpointError):
    """A torch file that cannot be read; subclasses say why."""


class NotATorchFileError(TorchFileError):
    """The file is not in torch's zip or legacy format (or is a TorchScript archive)."""


class TruncatedFileError(TorchFileError):
    """The file starts as a torch file but its end is missing or it is corrupt."""


class UnknownClassError(TorchFileError):
    """The pickle creates an object of a class (or calls a function) that fpn-jax does not know.

    Attributes:
      name: the class or function, as ``module.qualified_name``.
    """

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


class _Refused(Exception):
    """Raised by a ``Reference`` when the unpickler tries to create or call it."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class StandIn:
    """Base of the inert stand-ins; ``qualified_name`` is the global the pickle names."""

    qualified_name: ClassVar[str] = ""

    @classmethod
    def short_name(cls) -> str:
        """The class name without its module: ``MaskedAutoregressiveFlow``."""
        return cls.qualified_name.rpartition(".")[2]


class PickledObject(StandIn):
    """An inert object of a known class: holds the arguments and state the pickle gave it.

    Attributes:
      args: the constructor arguments of a ``REDUCE``/``NEWOBJ`` (usually empty for modules).
      attributes: the pickled ``__dict__`` (for a module: ``_parameters``, ``_buffers``,
        ``_modules``, ``training`` and its own attributes such as ``features`` or ``p``).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        """Creates the inert object (what ``NEWOBJ`` and ``REDUCE`` call), keeping ``args``."""
        self = object.__new__(cls)
        self.args, self.attributes = args, {}
        return self

    def __init__(self, *args: Any, **kwargs: Any):
        pass  # __new__ keeps the arguments; nothing of the real class runs

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], Mapping):
            state = {**(state[0] or {}), **state[1]}  # (__dict__, slots)
        self.attributes = dict(state) if isinstance(state, Mapping) else {"state": state}

    def __repr__(self) -> str:
        return f"<pickled {self.qualified_name}>"

    @property
    def is_module(self) -> bool:
        """Whether this was a ``torch.nn.Module`` (its state has ``_modules`` and ``_parameters``)."""
        return isinstance(self.attributes.get("_modules"), Mapping) and "_parameters" in self.attributes

    def children(self) -> dict[str, PickledObject]:
        """The submodules by name (``_modules``), ``None`` entries left out."""
        return {str(k): m for k, m in (self.attributes.get("_modules") or {}).items() if m is not None}

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, PickledObject]]:
        """``(dotted name, module)`` of this module and every submodule, as ``Module.named_modules``."""
        yield prefix, self
        for name, child in self.children().items():
            if isinstance(child, PickledObject) and child.is_module:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def state_dict(self) -> dict[str, Any]:
        """What ``Module.state_dict()`` returns: parameters, persistent buffers, recursively."""
        out: dict[str, Any] = {}
        for prefix, module in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            skip = set(module.attributes.get("_non_persistent_buffers_set") or ())
            for name, value in (module.attributes.get("_parameters") or {}).items():
                if value is not None:
                    out[f"{dot}{name}"] = value
            for name, value in (module.attributes.get("_buffers") or {}).items():
                if value is not None and name not in skip:
                    out[f"{dot}{name}"] = value
        return out

    def get(self, dotted: str) -> Any:
        """A submodule or attribute by dotted path (``_transform._transforms.1``), else ``None``."""
        target: Any = self
        for part in dotted.split("."):
            if not isinstance(target, PickledObject):
                return None
            children = target.children()
            target = children[part] if part in children else target.attributes.get(part)
        return target


class Reference(StandIn):
    """A global the pickle names but fpn-jax does not know: usable as a value, never created."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Reference:
        """Refuses: the pickle would create an object of (or call) something fpn-jax does not know."""
        raise _Refused(cls.qualified_name)


def is_known_class(name: str) -> bool:
    """Whether the unpickler may create objects of ``name`` (as inert ``PickledObject`` s)."""
    return name in FPN_CLASSES or name in DATA_CLASSES or name.startswith(MODULE_PACKAGES)


def stand_in(name: str) -> type[StandIn]:
    """A fresh stand-in class for the global ``name`` (``module.qualified_name``)."""
    base = PickledObject if is_known_class(name) else Reference
    short = name.rpartition(".")[2] or name
    return type(short, (base,), {"qualified_name": name, "__module__": __name__, "__qualname__": short})


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            'Reading PyTorch checkpoints needs torch: pip install "fpn-jax[torch]" (the CPU build is enough).'
        ) from e
    return torch


def _what_it_looks_like(head: bytes) -> str:
    """A guess at a non-torch file's format from its first bytes, for the message."""
    if not head:
        return "it is empty"
    if head.startswith(b"\x93NUMPY"):
        return "it is a NumPy .npy array"
    if head.startswith(b"\x89HDF"):
        return "it is an HDF5 file (Keras?)"
    if head.startswith(b"\x80") and len(head) > 1 and head[1] <= 5:
        return "it is a plain pickle, not one written by torch.save"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "it looks like a safetensors file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if not text or not all(c.isprintable() or c.isspace() for c in text):
        return "its first bytes match neither torch's zip format nor its legacy format"
    return f"it is text starting {text!r}"


def globals_in(path: Path) -> set[str]:
    """The globals (``module.name``) the file's pickle refers to that torch does not allow by default.

    Reads the pickle's opcodes only (torch's ``get_unsafe_globals_in_checkpoint`` for the zip
    format, its ``get_globals_in_pkl`` scanner for the legacy one); nothing is loaded.

    Raises:
      NotATorchFileError: the file is neither format, or is a TorchScript archive.
      TruncatedFileError: it starts as one but cannot be parsed (missing end, bad pickle).
    """
    torch = _import_torch()
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_MAGIC))
    source = repr(str(path))
    if head.startswith(ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise TruncatedFileError(
                f"{source} is truncated: it starts as a torch file (zip format) but its end, the "
                f"zip directory, is missing ({path.stat().st_size} bytes). Copy or download it again."
            )
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("/constants.pkl") for n in names) or any("/code/" in n for n in names):
            raise NotATorchFileError(
                f"{source} is a TorchScript archive (torch.jit.save), which holds code; fpn-jax reads "
                "checkpoints written by torch.save: save the model's state_dict() and convert that."
            )
        if not any(n.endswith("data.pkl") for n in names):
            raise NotATorchFileError(f"{source} is a zip file but not a torch checkpoint (no data.pkl in it).")
        try:
            return set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except (pickle.UnpicklingError, EOFError, ValueError, RuntimeError) as e:
            raise TruncatedFileError(f"{source} is a corrupt torch file ({type(e).__name__}: {e}).") from e
    if head == LEGACY_MAGIC:
        from torch._weights_only_unpickler import get_globals_in_pkl

        found: set[str] = set()
        try:
            with open(path, "rb") as f:
                for _ in range(4):  # magic number, protocol version, system info, the object
                    found |= get_globals_in_pkl(f)
        except (pickle.UnpicklingError, EOFError, ValueError, IndexError) as e:
            raise TruncatedFileError(
                f"{source} is truncated or corrupt: it starts as a torch file (legacy format) but its "
                f"pickle ends early or is malformed ({type(e).__name__}: {e})."
            ) from e
        allowed = torch._weights_only_unpickler._get_allowed_globals()
        return {name for name in found if name not in allowed}
    raise NotATorchFileError(
        f"{source} is not a torch file: {_what_it_looks_like(head)}. Expected a file written by "
        "torch.save (a state_dict .pt/.pth, a Lightning .ckpt or the original code's model.pkt)."
    )


def load(path: str | os.PathLike) -> Any:
    """Loads a ``torch.save`` file with torch's restricted unpickler and inert stand-ins.

    Tensors come back as CPU tensors; module classes of nflows, torch.nn and the original FPN
    code as ``PickledObject`` s; other named classes and functions as ``Reference`` classes.

    Args:
      path: the file.

    Returns:
      The unpickled object.

    Raises:
      ImportError: torch is not installed.
      NotATorchFileError, TruncatedFileError: see ``globals_in``.
      UnknownClassError: the pickle creates an object of (or calls) a class or function
        fpn-jax does not know; nothing of it was imported or run.
    """
    path = Path(path)
    torch = _import_torch()
    names = globals_in(path)
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    source = repr(str(path))
    safe = [(stand_in(name), name) for name in sorted(names)]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except _Refused as e:
        raise UnknownClassError(_unknown_message(source, e.name), e.name) from None
    except pickle.UnpicklingError as e:
        blocked = sorted(n for n in names if n.split(".")[0] in BLOCKED_MODULES)
        if blocked:
            raise UnknownClassError(_unknown_message(source, blocked[0]), blocked[0]) from None
        reason = e.__context__ or e
        if head != ZIP_MAGIC and "persistent_load" in str(reason):
            raise TorchFileError(
                f"{source} is a whole pickled module in torch's legacy format (torch < 1.6, or "
                "_use_new_zipfile_serialization=False), which embeds the modules' source code and cannot be "
                "read without running it. fpn-jax reads pickled modules in torch's zip format (torch >= 1.6, "
                "the original code's torch 1.6.0) and state dicts in either format: load it where it was "
                "made and save its state_dict()."
            ) from None
        raise TruncatedFileError(
            f"{source} is a torch file that cannot be unpickled; it may be truncated or corrupt "
            f"({type(reason).__name__}: {str(reason).splitlines()[0] if str(reason) else ''})."
        ) from e
    except (RuntimeError, EOFError, ValueError, KeyError, OSError) as e:
        raise TruncatedFileError(
            f"{source} is a torch file that cannot be read; it may be truncated or corrupt "
            f"({type(e).__name__}: {e})."
        ) from e


def _unknown_message(source: str, name: str) -> str:
    if name == "builtins.getattr":
        name += (" (torch's built-in functions, such as torch.tanh stored as a module's activation, are "
                 "pickled as getattr calls; torch.nn.functional's are not)")
    return (
        f"{source} holds a pickled {name} (an object of that class, or a call to that function), which "
        "fpn-jax does not know, so the file was not loaded and nothing in it was run. fpn-jax reads "
        "state dicts, Lightning checkpoints and pickled modules of the original FPN code, nflows and "
        "torch.nn. If it is a torch.nn.Module you trust, save its weights with "
        "torch.save(model.state_dict(), 'model.pt') and convert that file."
    )
