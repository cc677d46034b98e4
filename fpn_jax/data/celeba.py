"""CelebA (Liu et al., 2015): aligned 178x218 faces with 40 binary attributes, streamed from disk.

Two sources give the same splits, attributes and (up to order) images:

* **The torchvision layout** (``source="folder"``), ``<root>/celeba/`` or ``<root>/`` holding

  - ``img_align_celeba/<file>.jpg``: 202,599 aligned faces, 178 wide and 218 high;
  - ``list_attr_celeba.txt``: line 1 the number of images, line 2 the 40 attribute names
    (``CELEBA_ATTRIBUTES``), then one line ``<file> v_1 ... v_40`` per image, v in {-1, 1};
  - ``list_eval_partition.txt``: one line ``<file> <code>`` per image, code 0 / 1 / 2 =
    train / validation / test (162,770 / 19,867 / 19,962 images).

  Rows are matched by file name; a split's images are in file-name order (the order of the
  released lists, which is what torchvision's ``CelebA`` reads).
* **tensorflow-datasets' ``celeb_a``** (``source="tfds"``), already prepared under
  ``data_dir`` (it needs TensorFlow; nothing is downloaded here). Its boolean attributes are
  put in the same column order. tfds stores the original JPEG bytes, which are decoded here
  with Pillow exactly as the files are, but it shuffles the examples by a hash of the file
  name when it prepares the data set and keeps no file name: a split holds the same images
  and attribute rows as the folder's, in tfds' own (deterministic) order.

**Labels.** Attributes become float32 {0, 1}: a = (v + 1) / 2, as torchvision maps ±1 (MSP
itself trained on ±1; FPN's flows use {0, 1}). tfds' booleans map True -> 1.

**Preprocessing** (MSP / FPN's ``run_latent_space_celeba.py``): torchvision's
``CenterCrop(178)`` then ``Resize(image_size)`` (256 in the paper), ``ToTensor`` and
``Normalize(0.5, 0.5)``. The crop's corner is torchvision's

    top = int(round((H - 178) / 2)),   left = int(round((W - 178) / 2)),

i.e. rows 20..197 and all 178 columns of a 218x178 image. The resize is Pillow's bilinear
(antialiased when shrinking) on the uint8 image, with uint8 rounding, on the host, as
torchvision does for PIL images (``jax.image.resize`` only approximates it). Then
x = (u / 255 - 0.5) / 0.5 in float32, in [-1, 1], NHWC (image_size, image_size, 3).

**Streaming.** 200k images at 256x256x3 float32 are 160 GB, so a split is read lazily:
``CelebA(root).split("train")`` has ``len``, the (N, 40) ``attributes`` (read eagerly, small)
and ``batches(batch_size, start=...)``, which yields ``(images, attributes, indices)`` in
order while a thread pool decodes and resizes the next images in the background (Pillow
releases the GIL while it decodes and resizes). ``load_celeba_arrays`` reads (the first rows
of) each split into a ``Dataset`` for tests and small runs.

``write_synthetic_celeba`` writes an offline stand-in in exactly the torchvision layout
(drawn faces whose features follow some of the random attributes), for tests and runs
without the real data.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import importlib.util
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fpn_jax.data.base import Dataset, DatasetUnavailableError, Split

__all__ = [
    "CELEBA_ATTRIBUTES",
    "CELEBA_CROP",
    "CELEBA_FILES",
    "CELEBA_SPLITS",
    "CelebA",
    "CelebAFormatError",
    "CelebASplit",
    "center_crop_box",
    "find_celeba_folder",
    "load_celeba_arrays",
    "preprocess_celeba_image",
    "write_synthetic_celeba",
]

# list_attr_celeba.txt's header, in its order (also tfds' ATTR_HEADINGS and FPN's CLASSES).
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
# Split names in partition-code order: list_eval_partition.txt's 0, 1, 2 (tfds' split names).
CELEBA_SPLITS: tuple[str, ...] = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                  "test": "test"}
# The torchvision layout's files, by role.
CELEBA_FILES = {
    "images": "img_align_celeba",
    "attributes": "list_attr_celeba.txt",
    "partition": "list_eval_partition.txt",
}
CELEBA_CROP = 178  # MSP's CenterCrop(178): the full width of the aligned faces
_IMAGE_SIZE = (178, 218)  # (width, height) of img_align_celeba's faces
_TFDS_NAME = "celeb_a"
_WHERE = "CelebA"


class CelebAFormatError(ValueError):
    """A CelebA list file is malformed; the message names the file, the line and what was expected."""


# --------------------------------------------------------------------------- preprocessing


def center_crop_box(width: int, height: int, size: int = CELEBA_CROP) -> tuple[int, int, int, int]:
    """The box ``(left, top, right, bottom)`` of torchvision's ``center_crop`` to a ``size`` square.

    top = int(round((height - size) / 2)), left = int(round((width - size) / 2)) (Python's
    round, half to even, as torchvision). For CelebA's 178x218 faces: (0, 20, 178, 198).
    """
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def preprocess_celeba_image(image: Any, image_size: int = 256) -> np.ndarray:
    """MSP's CelebA preprocessing of one image: center crop 178, bilinear resize, to [-1, 1].

    Equals torchvision's ``Compose([CenterCrop(178), Resize(image_size), ToTensor(),
    Normalize(0.5, 0.5)])`` on a PIL image, transposed to HWC: the crop box is
    ``center_crop_box``, the resize Pillow's ``BILINEAR`` on the uint8 image, and
    x = (u / 255 - 0.5) / 0.5 computed in float32.

    Args:
      image: a PIL image, or a uint8 array (H, W, 3) (e.g. (218, 178, 3)); at least 178 x 178.
      image_size: side S of the output.

    Returns:
      (S, S, 3) float32 in [-1, 1].

    Raises:
      ValueError: ``image_size`` is not a positive integer, or the image is not RGB-like or
        smaller than 178 x 178.
    """
    image_size = _positive(image_size, "image_size", "preprocess_celeba_image")
    pil = _pil()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(
                "preprocess_celeba_image: argument `image` must be a PIL image or a uint8 array of shape "
                f"(H, W, 3); got dtype {image.dtype} and shape {image.shape}."
            )
        image = pil.Image.fromarray(image, mode="RGB")
    elif not isinstance(image, pil.Image.Image):
        raise ValueError(
            f"preprocess_celeba_image: argument `image` must be a PIL image or a uint8 (H, W, 3) array; "
            f"got {type(image).__name__}."
        )
    width, height = image.size
    if width < CELEBA_CROP or height < CELEBA_CROP:
        raise ValueError(
            f"preprocess_celeba_image: the image must be at least {CELEBA_CROP} x {CELEBA_CROP} pixels "
            f"(CelebA's aligned faces are 178 wide, 218 high); got {width} x {height}."
        )
    if image.mode != "RGB":
        image = image.convert("RGB")
    image = image.crop(center_crop_box(width, height))
    if image_size != CELEBA_CROP:
        image = image.resize((image_size, image_size), pil.Image.BILINEAR)
    x = np.asarray(image, dtype=np.float32) / np.float32(255)
    return (x - np.float32(0.5)) / np.float32(0.5)


# --------------------------------------------------------------------------- the data set


@dataclasses.dataclass(frozen=True)
class _Item:
    """One image to read: a description for messages and its file path or encoded bytes."""

    describe: str
    source: Path | bytes


class CelebASplit:
    """One CelebA split, read lazily (see the module docstring).

    Attributes:
      name: ``"train"``, ``"validation"`` or ``"test"``.
      image_size: side S of the images it yields.
      attributes: (N, 40) float32 {0, 1} attribute rows, columns in ``CELEBA_ATTRIBUTES`` order.
      files: the N image file names in row order (folder source), or None (tfds keeps none).
      source: ``"folder"`` or ``"tfds"``.
    """

    def __init__(
        self,
        name: str,
        attributes: np.ndarray,
        *,
        image_size: int,
        items: Callable[[int, int], Iterator[_Item]],
        files: tuple[str, ...] | None,
        source: str,
        workers: int,
    ):
        self.name = name
        self.attributes = attributes
        self.image_size = image_size
        self.files = files
        self.source = source
        self._items = items
        self._workers = workers

    def __len__(self) -> int:
        return int(self.attributes.shape[0])

    def __repr__(self) -> str:
        return f"CelebASplit({self.name!r}, {len(self)} images, image_size={self.image_size}, source={self.source!r})"

    def batches(
        self,
        batch_size: int,
        *,
        start: int = 0,
        stop: int | None = None,
        prefetch: int = 2,
        workers: int | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Rows ``start .. stop - 1`` in order, in batches, decoded ahead in the background.

        While a batch is being used, up to ``prefetch`` further batches are decoded and
        resized by a pool of ``workers`` threads. The result does not depend on
        ``prefetch`` or ``workers`` (``prefetch=0`` reads each batch in the calling thread).

        Args:
          batch_size: rows per batch; the last batch holds the remainder.
          start: first row, in [0, N].
          stop: one past the last row, in [start, N]; None: N.
          prefetch: batches decoded ahead (0: none, no threads).
          workers: decoding threads (default: the ``CelebA`` object's).

        Yields:
          ``(images, attributes, indices)``: (B, S, S, 3) float32 in [-1, 1], (B, 40) float32
          {0, 1} and (B,) int64 row indices into the split.

        Raises:
          ValueError: bad arguments; CelebAFormatError: an image that cannot be decoded;
          FileNotFoundError: an image file vanished since the split was opened.
        """
        where = f"{_WHERE}.split({self.name!r}).batches"
        batch_size = _positive(batch_size, "batch_size", where)
        n = len(self)
        start = _count(start, "start", where, maximum=n)
        stop = n if stop is None else _count(stop, "stop", where, maximum=n)
        if stop < start:
            raise ValueError(f"{where}: `stop` must be at least `start` = {start}; got {stop}.")
        prefetch = _count(prefetch, "prefetch", where)
        workers = self._workers if workers is None else _positive(workers, "workers", where)
        return self._batches(batch_size, start, stop, prefetch, workers)

    def _batches(
        self, batch_size: int, start: int, stop: int, prefetch: int, workers: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        size = self.image_size

        def load(item: _Item) -> np.ndarray:
            return _load_image(item, size)

        row = start
        loaded = _prefetched(self._items(start, stop), load, batch_size, prefetch * batch_size, workers)
        try:
            for images in loaded:
                rows = np.arange(row, row + len(images), dtype=np.int64)
                row += len(images)
                yield np.stack(images), self.attributes[rows], rows
        finally:
            loaded.close()  # stops the pool at once when the caller leaves early
        if row != stop:
            raise CelebAFormatError(
                f"{_WHERE}: the {self.source} source gave {row - start} images for rows {start}..{stop - 1} of the "
                f"{self.name!r} split; expected {stop - start}."
            )

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The images of the given rows, read one after another in the calling thread.

        Only for the folder source (tfds reads sequentially; use ``batches``).

        Args:
          indices: (B,) row indices in [0, N).

        Returns:
          (B, S, S, 3) float32 in [-1, 1].

        Raises:
          NotImplementedError: a tfds split; ValueError: bad ``indices``; FileNotFoundError /
          CelebAFormatError: an image that is missing or cannot be decoded.
        """
        where = f"{_WHERE}.split({self.name!r}).read"
        if self.files is None:
            raise NotImplementedError(f"{where}: random access needs the folder source; this split reads tfds, "
                                      "use batches(...) instead.")
        rows = np.asarray(indices)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or (
            rows.size and (rows.min() < 0 or rows.max() >= len(self))
        ):
            raise ValueError(f"{where}: `indices` must be a 1-D integer array of rows in [0, {len(self)}); "
                             f"got {rows.dtype} of shape {rows.shape}"
                             + (f" with values in [{rows.min()}, {rows.max()}]." if rows.size else "."))
        out = np.empty((rows.size, self.image_size, self.image_size, 3), dtype=np.float32)
        for slot, row in enumerate(rows):
            out[slot] = _load_image(next(self._items(int(row), int(row) + 1)), self.image_size)
        return out


class CelebA:
    """CelebA from the torchvision layout or from a prepared tfds ``celeb_a`` (module docstring).

    ``CelebA(root).split("train")`` opens a split for streaming. The folder source reads and
    checks both list files when constructed (and that every listed image file exists).

    Args:
      root: the torchvision root, holding ``celeba/`` (or the ``celeba`` folder itself).
      image_size: side S of the preprocessed images (256 as MSP; 32 or 64 for small models).
      source: ``"folder"`` (``root``), ``"tfds"`` (``data_dir``) or ``"auto"``: the folder
        when ``root`` holds any of the CelebA files, tfds otherwise.
      data_dir: tensorflow-datasets' data folder with ``celeb_a`` prepared (None: tfds' default).
      workers: decoding threads of ``batches`` (default min(8, CPU count)).
      check_images: with the folder source, check at once that every listed image exists.

    Attributes:
      folder: the folder holding the CelebA files (folder source) or None.
      source: ``"folder"`` or ``"tfds"``.
      image_size: S.

    Raises:
      FileNotFoundError: a file or folder of the layout is missing, or listed images are.
      CelebAFormatError: a list file is malformed (count, names, columns, values, codes).
      DatasetUnavailableError: tfds could not provide ``celeb_a``; the message says what to do.
      ValueError: bad arguments.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        image_size: int = 256,
        source: Literal["auto", "folder", "tfds"] = "auto",
        data_dir: str | os.PathLike | None = None,
        workers: int | None = None,
        check_images: bool = True,
    ):
        if source not in ("auto", "folder", "tfds"):
            raise ValueError(f"{_WHERE}: `source` must be 'auto', 'folder' or 'tfds'; got {source!r}.")
        self.image_size = _positive(image_size, "image_size", _WHERE)
        self._workers = min(8, os.cpu_count() or 1) if workers is None else _positive(workers, "workers", _WHERE)
        self.folder: Path | None = None
        self._tfds: Any = None
        if source == "folder" or (source == "auto" and root is not None and _has_any_file(Path(root))):
            if root is None:
                raise ValueError(f"{_WHERE}: source='folder' needs `root`, the folder holding celeba/; got None.")
            self.folder = find_celeba_folder(root)
            self.source = "folder"
            self._names, self._attributes, self._codes = _read_lists(self.folder, check_images=check_images)
        else:
            note = "source='tfds' was asked for." if source == "tfds" else _folder_note(root)
            self._tfds = _open_tfds(data_dir, note=note)
            self.source = "tfds"
        self._splits: dict[str, CelebASplit] = {}

    def __repr__(self) -> str:
        where = self.folder if self.source == "folder" else "tfds celeb_a"
        return f"CelebA({str(where)!r}, image_size={self.image_size})"

    def split(self, name: str) -> CelebASplit:
        """The split ``name`` (``"train"``, ``"validation"`` (or ``"valid"``, ``"val"``), ``"test"``)."""
        canonical = _SPLIT_ALIASES.get(name) if isinstance(name, str) else None
        if canonical is None:
            raise ValueError(
                f"{_WHERE}.split: `name` must be one of 'train', 'validation' ('valid', 'val'), 'test'; got {name!r}."
            )
        if canonical not in self._splits:
            self._splits[canonical] = self._open(canonical)
        return self._splits[canonical]

    def _open(self, name: str) -> CelebASplit:
        if self.source == "folder":
            rows = np.flatnonzero(self._codes == CELEBA_SPLITS.index(name))
            files = tuple(self._names[i] for i in rows)
            image_dir = self.folder / CELEBA_FILES["images"]

            def items(start: int, stop: int) -> Iterator[_Item]:
                for file in files[start:stop]:
                    yield _Item(f"{image_dir / file}", image_dir / file)

            attributes = self._attributes[rows]
        else:
            files = None
            attributes, items = _tfds_split(self._tfds, name)
        return CelebASplit(
            name, attributes, image_size=self.image_size, items=items, files=files, source=self.source,
            workers=self._workers,
        )


def find_celeba_folder(root: str | os.PathLike) -> Path:
    """The folder holding CelebA's files: ``<root>/celeba`` (torchvision's) or ``<root>`` itself.

    Raises:
      FileNotFoundError: neither holds all three of ``img_align_celeba/``,
        ``list_attr_celeba.txt`` and ``list_eval_partition.txt`` (the message names what is missing).
    """
    root = Path(root)
    candidates = [root / "celeba", root]
    for folder in candidates:
        if _missing(folder) == []:
            return folder
    folder = next((f for f in candidates if len(_missing(f)) < 3), None)
    layout = (f"<root>/celeba/ (or <root>/) with {CELEBA_FILES['images']}/*.jpg, {CELEBA_FILES['attributes']} "
              f"and {CELEBA_FILES['partition']} (torchvision's CelebA layout)")
    if folder is None:
        state = "" if root.is_dir() else (" (not a folder)" if root.exists() else " (it does not exist)")
        raise FileNotFoundError(f"{_WHERE}: no CelebA files under `root` {root}{state}; expected {layout}.")
    raise FileNotFoundError(
        f"{_WHERE}: {folder} is missing {', '.join(_missing(folder))}; expected {layout}."
    )


def _missing(folder: Path) -> list[str]:
    missing = [] if (folder / CELEBA_FILES["images"]).is_dir() else [CELEBA_FILES["images"] + "/"]
    return missing + [CELEBA_FILES[k] for k in ("attributes", "partition") if not (folder / CELEBA_FILES[k]).is_file()]


def _has_any_file(root: Path) -> bool:
    return any(len(_missing(f)) < 3 for f in (root / "celeba", root))


def _folder_note(root: str | os.PathLike | None) -> str:
    if root is None:
        return "No `root` was given, so there was no CelebA folder to read."
    where = Path(root)
    state = "" if where.is_dir() else " (the folder does not exist)"
    return f"No CelebA files under {where}{state}."


# --------------------------------------------------------------------------- list files


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CelebAFormatError(f"{_WHERE}: {path} is not a text file: {err}.") from None
    return [(k + 1, line.strip()) for k, line in enumerate(text.splitlines()) if line.strip()]


def _read_attributes(path: Path) -> tuple[list[str], np.ndarray]:
    """list_attr_celeba.txt: the file names and their (N, 40) int8 ±1 values."""
    lines = _read_lines(path)
    if len(lines) < 2:
        raise CelebAFormatError(
            f"{_WHERE}: {path} must start with the number of images and the 40 attribute names; "
            f"got {len(lines)} non-blank line(s)."
        )
    (count_line, count_text), (header_line, header_text) = lines[0], lines[1]
    if not re.fullmatch(r"\d+", count_text):
        raise CelebAFormatError(f"{_WHERE}: {path} line {count_line} must be the number of images; got {count_text!r}.")
    names = tuple(header_text.split())
    if names != CELEBA_ATTRIBUTES:
        pairs = zip(names, CELEBA_ATTRIBUTES, strict=False)
        diff = next((k for k, (a, b) in enumerate(pairs) if a != b), min(len(names), 40))
        found = names[diff] if diff < len(names) else "nothing"
        raise CelebAFormatError(
            f"{_WHERE}: {path} line {header_line} must list CelebA's 40 attribute names in order "
            f"(5_o_Clock_Shadow ... Young); got {len(names)} names, column {diff + 1} is {found!r} where "
            f"{CELEBA_ATTRIBUTES[diff] if diff < 40 else 'the line should end'!r} was expected."
        )
    files, values = [], []
    for number, line in lines[2:]:
        parts = line.split()
        if len(parts) != 41:
            raise CelebAFormatError(
                f"{_WHERE}: {path} line {number} must hold a file name and 40 values (41 columns); "
                f"got {len(parts)} columns: {line[:80]!r}."
            )
        files.append(parts[0])
        values.append(parts[1:])
    if int(count_text) != len(files):
        raise CelebAFormatError(
            f"{_WHERE}: {path} line {count_line} says {int(count_text)} images but {len(files)} rows follow."
        )
    # "U8" keeps enough of a bad value (longer ones are cut, never down to "1" or "-1").
    table = np.array(values, dtype="U8").reshape(len(files), 40)
    good = (table == "1") | (table == "-1")
    if not good.all():
        row, column = np.argwhere(~good)[0]
        raise CelebAFormatError(
            f"{_WHERE}: {path} line {lines[2 + row][0]} ({files[row]}): attribute values must be -1 or 1; "
            f"{CELEBA_ATTRIBUTES[column]} is {str(table[row, column])!r}."
        )
    _no_repeats(files, path)
    return files, np.where(table == "1", 1, -1).astype(np.int8)


def _read_partition(path: Path) -> tuple[list[str], np.ndarray]:
    """list_eval_partition.txt: the file names and their (N,) int8 codes 0 / 1 / 2."""
    files, codes = [], []
    for number, line in _read_lines(path):
        parts = line.split()
        if len(parts) != 2:
            raise CelebAFormatError(
                f"{_WHERE}: {path} line {number} must hold a file name and a partition code (2 columns); "
                f"got {len(parts)} columns: {line[:80]!r}."
            )
        if parts[1] not in ("0", "1", "2"):
            raise CelebAFormatError(
                f"{_WHERE}: {path} line {number} ({parts[0]}): the partition code must be 0 (train), 1 "
                f"(validation) or 2 (test); got {parts[1]!r}."
            )
        files.append(parts[0])
        codes.append(int(parts[1]))
    _no_repeats(files, path)
    return files, np.array(codes, dtype=np.int8)


def _no_repeats(files: list[str], path: Path) -> None:
    if len(set(files)) != len(files):
        seen: set[str] = set()
        for name in files:
            if name in seen:
                raise CelebAFormatError(f"{_WHERE}: {path} lists {name} more than once.")
            seen.add(name)


def _read_lists(folder: Path, *, check_images: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
    """All images in file-name order: names, (N, 40) float32 {0, 1} attributes, (N,) partition codes."""
    attr_path, part_path = folder / CELEBA_FILES["attributes"], folder / CELEBA_FILES["partition"]
    attr_files, values = _read_attributes(attr_path)
    part_files, codes = _read_partition(part_path)
    row_of = {name: k for k, name in enumerate(attr_files)}
    without = [name for name in part_files if name not in row_of]
    if without:
        raise CelebAFormatError(
            f"{_WHERE}: {len(without)} image(s) of {part_path.name} have no row in {attr_path.name}, e.g. "
            f"{', '.join(without[:5])}."
        )
    order = sorted(range(len(part_files)), key=part_files.__getitem__)
    names = [part_files[k] for k in order]
    if check_images:
        image_dir = folder / CELEBA_FILES["images"]
        present = set(os.listdir(image_dir))
        absent = [name for name in names if name not in present]
        if absent:
            raise FileNotFoundError(
                f"{_WHERE}: {len(absent)} image(s) listed in {part_path.name} are missing from {image_dir}, e.g. "
                f"{', '.join(absent[:5])}."
            )
    rows = np.array([row_of[name] for name in names], dtype=np.int64)
    attributes = ((values[rows].astype(np.float32) + 1) / 2) if rows.size else np.zeros((0, 40), np.float32)
    return names, attributes.astype(np.float32), codes[np.asarray(order, dtype=np.int64)]


# --------------------------------------------------------------------------- reading images


def _pil() -> Any:
    """The PIL package (imported on first use: Pillow is needed only to read images)."""
    try:
        import PIL.Image  # noqa: F401 - makes PIL.Image an attribute
        import PIL.ImageDraw  # noqa: F401
    except ImportError:
        raise ImportError(
            "fpn_jax.data.celeba needs Pillow to decode and resize images: pip install Pillow."
        ) from None
    import PIL

    return PIL


def _load_image(item: _Item, image_size: int) -> np.ndarray:
    """Decodes and preprocesses one image, with a message naming it on failure."""
    pil = _pil()
    try:
        handle = item.source if isinstance(item.source, Path) else io.BytesIO(item.source)
        with pil.Image.open(handle) as image:
            image.load()
            return preprocess_celeba_image(image, image_size)
    except FileNotFoundError:
        raise FileNotFoundError(f"{_WHERE}: image {item.describe} is listed but missing.") from None
    except (pil.UnidentifiedImageError, OSError, SyntaxError) as err:
        raise CelebAFormatError(f"{_WHERE}: cannot decode image {item.describe}: {err}.") from None
    except ValueError as err:
        raise CelebAFormatError(f"{_WHERE}: image {item.describe}: {err}") from None


def _prefetched(
    items: Iterator[_Item], load: Callable[[_Item], np.ndarray], batch_size: int, lookahead: int, workers: int
) -> Iterator[list[np.ndarray]]:
    """``load`` mapped over ``items`` in order, grouped in lists of ``batch_size``.

    With ``lookahead > 0`` up to that many items beyond the current batch are loaded by a
    pool of ``workers`` threads while the consumer works; closing the generator cancels
    them. With ``lookahead == 0`` every item is loaded in the calling thread.
    """
    if lookahead == 0:
        batch = []
        for item in items:
            batch.append(load(item))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    pending: collections.deque[concurrent.futures.Future] = collections.deque()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="celeba")
    try:
        exhausted = False
        batch = []
        while True:
            while not exhausted and len(pending) < batch_size - len(batch) + lookahead:
                item = next(items, None)
                if item is None:
                    exhausted = True
                else:
                    pending.append(pool.submit(load, item))
            if not pending:
                break
            batch.append(pending.popleft().result())
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- tensorflow-datasets


def _tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _import_tfds() -> Any:
    import tensorflow_datasets as tfds

    return tfds


def _how_to_fix() -> str:
    return (
        "To fix this, either pass `root` (--data-dir in the experiment scripts) pointing at torchvision's "
        f"CelebA layout <root>/celeba/{{{CELEBA_FILES['images']}/, {CELEBA_FILES['attributes']}, "
        f"{CELEBA_FILES['partition']}}} (write_synthetic_celeba(root) writes an offline stand-in), or install "
        "TensorFlow (pip install tensorflow-cpu) and prepare celeb_a with tensorflow-datasets first "
        "(tfds build celeb_a --data_dir DIR; it downloads 1.4 GB from Google Drive, whose quotas often refuse)."
    )


def _open_tfds(data_dir: str | os.PathLike | None, *, note: str) -> Any:
    """The prepared ``celeb_a`` builder of tfds; else a DatasetUnavailableError saying what to do."""

    def unavailable(reason: str) -> DatasetUnavailableError:
        return DatasetUnavailableError(
            f"{_WHERE}: could not load CelebA. {note} tensorflow-datasets could not provide it either: {reason} "
            f"{_how_to_fix()}"
        )

    if not _tensorflow_available():
        raise unavailable("TensorFlow is not installed (tensorflow-datasets needs it to read celeb_a).")
    try:
        tfds = _import_tfds()
        builder = tfds.builder(_TFDS_NAME, data_dir=None if data_dir is None else os.fspath(data_dir))
        prepared = builder.is_prepared()
    except Exception as err:  # noqa: BLE001 - any failure becomes the actionable message
        raise unavailable(f"{type(err).__name__}: {err}.") from err
    if not prepared:
        raise unavailable(f"celeb_a is not prepared in {builder.data_dir} (nothing is downloaded here).")
    return builder


def _tfds_split(builder: Any, name: str) -> tuple[np.ndarray, Callable[[int, int], Iterator[_Item]]]:
    """A tfds split's (N, 40) float32 attributes (read at once) and its image reader."""
    tfds = _import_tfds()
    skip = {"image": tfds.decode.SkipDecoding()}
    columns = []
    dataset = builder.as_dataset(split=name, shuffle_files=False, decoders=skip, batch_size=4096)
    for batch in tfds.as_numpy(dataset):
        found = batch["attributes"]
        absent = [a for a in CELEBA_ATTRIBUTES if a not in found]
        if absent:
            raise CelebAFormatError(
                f"{_WHERE}: tfds celeb_a's attributes lack {', '.join(absent[:5])}; found {sorted(found)[:5]}..."
            )
        columns.append(np.stack([np.asarray(found[a]) for a in CELEBA_ATTRIBUTES], axis=1).astype(bool))
    attributes = (np.concatenate(columns) if columns else np.zeros((0, 40), bool)).astype(np.float32)
    expected = builder.info.splits[name].num_examples
    if attributes.shape[0] != expected:
        raise CelebAFormatError(
            f"{_WHERE}: tfds celeb_a {name!r} gave {attributes.shape[0]} examples; its info says {expected}."
        )

    def items(start: int, stop: int) -> Iterator[_Item]:
        if start >= stop:
            return
        sliced = builder.as_dataset(split=f"{name}[{start}:{stop}]", shuffle_files=False, decoders=skip)
        for row, example in enumerate(tfds.as_numpy(sliced), start=start):
            yield _Item(f"tfds celeb_a {name}[{row}]", bytes(example["image"]))

    return attributes, items


# --------------------------------------------------------------------------- in memory


def load_celeba_arrays(
    root: str | os.PathLike | None = None,
    *,
    image_size: int = 64,
    limits: int | Mapping[str, int | None] | None = None,
    source: Literal["auto", "folder", "tfds"] = "auto",
    data_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> Dataset:
    """Reads (the first rows of) CelebA's three splits into memory, for tests and small runs.

    The whole of CelebA at 64x64 is 10 GB of float32 and at 256x256 160 GB: stream it with
    ``CelebA(...).split(name).batches(...)`` instead; ``limits`` keeps the first rows.

    Args:
      root: as ``CelebA``: torchvision's root, holding ``celeba/``.
      image_size: side S of the images.
      limits: rows kept per split (the first ones, in the split's order): one integer for
        every split, a mapping from split name (``"train"``, ``"validation"``, ``"test"``)
        to a count or None (all), or None for everything.
      source: as ``CelebA``: ``"auto"``, ``"folder"`` or ``"tfds"``.
      data_dir: as ``CelebA``: tensorflow-datasets' data folder.
      workers: as ``CelebA``: decoding threads.

    Returns:
      A ``Dataset`` whose splits hold inputs (N, S, S, 3) float32 in [-1, 1] and multi-hot
      contexts (N, 40) float32 {0, 1} (no labels); ``num_classes=None``,
      ``value_range=(-1, 1)``, ``context_names=CELEBA_ATTRIBUTES``.

    Raises:
      As ``CelebA``; ValueError: bad ``limits``.
    """
    where = "load_celeba_arrays"
    if limits is None or isinstance(limits, (int, np.integer)) and not isinstance(limits, bool):
        per_split = dict.fromkeys(CELEBA_SPLITS, None if limits is None else _count(limits, "limits", where))
    elif isinstance(limits, Mapping):
        unknown = [k for k in limits if _SPLIT_ALIASES.get(k) is None]
        if unknown:
            raise ValueError(f"{where}: `limits` keys must be 'train', 'validation' or 'test'; got {unknown}.")
        per_split = dict.fromkeys(CELEBA_SPLITS, None)
        for key, value in limits.items():
            per_split[_SPLIT_ALIASES[key]] = None if value is None else _count(value, f"limits[{key!r}]", where)
    else:
        raise ValueError(f"{where}: `limits` must be None, an integer or a mapping split -> count; got {limits!r}.")
    celeba = CelebA(root, image_size=image_size, source=source, data_dir=data_dir, workers=workers)
    splits = {}
    for name in CELEBA_SPLITS:
        split = celeba.split(name)
        n = len(split) if per_split[name] is None else min(per_split[name], len(split))
        inputs = np.empty((n, celeba.image_size, celeba.image_size, 3), dtype=np.float32)
        for images, _, rows in split.batches(256, stop=n):
            inputs[rows] = images
        splits[name] = Split(inputs=inputs, context=split.attributes[:n].copy())
    return Dataset(
        train=splits["train"], validation=splits["validation"], test=splits["test"], num_classes=None,
        value_range=(-1.0, 1.0), context_names=CELEBA_ATTRIBUTES,
    )


# --------------------------------------------------------------------------- the offline stand-in

_SYNTHETIC_MANIFEST = "synthetic_celeba.json"
_SYNTHETIC_FORMAT = "fpn_jax.synthetic_celeba"
_A = {name: k for k, name in enumerate(CELEBA_ATTRIBUTES)}


def write_synthetic_celeba(
    root: str | os.PathLike,
    num_images: int = 300,
    seed: int = 0,
    *,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    quality: int = 90,
    overwrite: bool = False,
) -> Path:
    """Writes an offline stand-in for CelebA in torchvision's layout under ``<root>/celeba``.

    Layout as the real data: ``img_align_celeba/000001.jpg ...`` (178 wide, 218 high, RGB
    JPEG), ``list_attr_celeba.txt`` (count, the 40 names, ``<file>`` and 40 values ±1 per
    line, formatted as the original) and ``list_eval_partition.txt`` (the first images train,
    then validation, then test, as CelebA's contiguous split), plus ``synthetic_celeba.json``
    recording the arguments. ``CelebA(root)`` reads it like the real data.

    Attributes are independent ±1 draws, attribute j positive with a probability drawn once per
    tree in [0.1, 0.6]. Each image is a drawn face (background, hair, face, eyes, mouth) whose
    look follows some attributes (Male: a wider jaw and darker background; Smiling /
    Mouth_Slightly_Open: the mouth; Eyeglasses; Wearing_Hat; Black / Blond / Brown / Gray_Hair;
    Bald; Pale_Skin; No_Beard; Mustache; Bangs; Young: no wrinkles), with random jitter.
    Everything is deterministic from ``seed`` (the rates draw from ``default_rng([seed, 1])``,
    image i from ``default_rng([seed, 0, i])``), so a larger tree extends a smaller one.
    The tree is written to a temporary sibling and renamed into place.

    Args:
      root: torchvision's root; the tree goes to ``<root>/celeba``.
      num_images: images in all, at least one per split of positive fraction.
      seed: the seed everything is drawn from (>= 0).
      splits: fractions (train, validation, test), normalised to sum 1.
      quality: JPEG quality (1..95).
      overwrite: replace an earlier stand-in written with other arguments.

    Returns:
      ``Path(root)``.

    Raises:
      ValueError: bad arguments.
      FileExistsError: ``<root>/celeba`` holds something other than a stand-in, or a stand-in
        with other arguments and ``overwrite`` is False.
    """
    where = "write_synthetic_celeba"
    root = Path(root)
    num_images = _positive(num_images, "num_images", where)
    seed = _count(seed, "seed", where)
    quality = _positive(quality, "quality", where)
    if quality > 95:
        raise ValueError(f"{where}: `quality` must be in 1..95; got {quality}.")
    fractions = np.asarray(splits, dtype=np.float64) if isinstance(splits, Sequence) else np.zeros(0)
    if fractions.shape != (3,) or not np.all(np.isfinite(fractions)) or fractions.min() < 0 or fractions.sum() <= 0:
        raise ValueError(f"{where}: `splits` must be three fractions (train, validation, test) >= 0 with a "
                         f"positive sum; got {splits!r}.")
    sizes = _allocate(num_images, fractions / fractions.sum(), where)
    config = {"num_images": num_images, "seed": seed, "splits": sizes, "quality": quality}
    target = root / "celeba"
    if target.exists():
        manifest = _synthetic_manifest(target)
        if manifest is None:
            raise FileExistsError(
                f"{where}: {target} exists and is not a synthetic CelebA tree (no {_SYNTHETIC_MANIFEST}); "
                "choose another `root`. (It is never replaced: it may be the real data.)"
            )
        if manifest.get("config") == config and len(os.listdir(target / CELEBA_FILES["images"])) == num_images:
            return root
        if not overwrite:
            raise FileExistsError(
                f"{where}: {target} holds a stand-in written with other arguments {manifest.get('config')}; pass "
                "overwrite=True to replace it or choose another `root`."
            )
        shutil.rmtree(target)

    pil = _pil()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".celeba.partial-", dir=root))
    try:
        (staging / CELEBA_FILES["images"]).mkdir()
        rates = np.random.default_rng([seed, 1]).uniform(0.1, 0.6, len(CELEBA_ATTRIBUTES))
        codes = np.repeat(np.arange(3), sizes)
        attr_lines = [f"{num_images}", " ".join(CELEBA_ATTRIBUTES) + " "]
        part_lines = []
        for index in range(num_images):
            rng = np.random.default_rng([seed, 0, index])
            values = np.where(rng.random(len(CELEBA_ATTRIBUTES)) < rates, 1, -1)
            name = f"{index + 1:06d}.jpg"
            image = _draw_face(pil, rng, values)
            image.save(staging / CELEBA_FILES["images"] / name, "JPEG", quality=quality)
            attr_lines.append(name + "".join(f" {v:2d}" for v in values))
            part_lines.append(f"{name} {codes[index]}")
        (staging / CELEBA_FILES["attributes"]).write_text("\n".join(attr_lines) + "\n")
        (staging / CELEBA_FILES["partition"]).write_text("\n".join(part_lines) + "\n")
        (staging / _SYNTHETIC_MANIFEST).write_text(json.dumps({"format": _SYNTHETIC_FORMAT, "config": config}))
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _synthetic_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / _SYNTHETIC_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == _SYNTHETIC_FORMAT else None


def _allocate(n: int, fractions: np.ndarray, where: str) -> list[int]:
    """The count n split by largest remainder, at least one per positive fraction."""
    positive = fractions > 0
    if n < positive.sum():
        raise ValueError(f"{where}: `num_images` must be at least {int(positive.sum())} (one per split); got {n}.")
    sizes = np.floor(fractions * n).astype(int)
    sizes[positive & (sizes == 0)] = 1
    while sizes.sum() > n:
        sizes[np.argmax(sizes)] -= 1
    order = np.argsort(-(fractions * n - np.floor(fractions * n)), kind="stable")
    k = 0
    while sizes.sum() < n:
        if positive[order[k % 3]]:
            sizes[order[k % 3]] += 1
        k += 1
    return [int(s) for s in sizes]


def _draw_face(pil: Any, rng: np.random.Generator, values: np.ndarray) -> Any:
    """A 178x218 RGB face drawing whose features follow some of the ±1 ``values``."""
    on = {name: values[k] > 0 for name, k in _A.items()}
    width, height = _IMAGE_SIZE

    def color(base: Sequence[int], spread: int = 20) -> tuple[int, int, int]:
        return tuple(int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in base)

    background = color((70, 80, 110) if on["Male"] else (150, 160, 190), 40)
    image = pil.Image.new("RGB", (width, height), background)
    draw = pil.ImageDraw.Draw(image)
    cx, cy = 89 + int(rng.integers(-6, 7)), 118 + int(rng.integers(-6, 7))
    half_w = (44 if on["Male"] else 38) + int(rng.integers(-3, 4))
    half_h = 54 + int(rng.integers(-3, 4))
    hair = (
        (200, 200, 200) if on["Gray_Hair"] else (230, 200, 110) if on["Blond_Hair"]
        else (120, 80, 40) if on["Brown_Hair"] else (25, 20, 20) if on["Black_Hair"] else (90, 60, 40)
    )
    if not on["Bald"]:
        draw.ellipse((cx - half_w - 12, cy - half_h - 18, cx + half_w + 12, cy + half_h - 10), fill=color(hair, 10))
    skin = color((245, 225, 210) if on["Pale_Skin"] else (215, 170, 135), 12)
    draw.ellipse((cx - half_w, cy - half_h, cx + half_w, cy + half_h), fill=skin)
    if on["Bangs"] and not on["Bald"]:
        draw.chord((cx - half_w, cy - half_h, cx + half_w, cy - 5), 180, 360, fill=color(hair, 10))
    if not on["No_Beard"]:
        draw.chord((cx - half_w + 4, cy + 5, cx + half_w - 4, cy + half_h), 0, 180, fill=(60, 45, 35))
    eye_h = 3 if on["Narrow_Eyes"] else 6
    for side in (-1, 1):
        ex = cx + side * 17
        draw.ellipse((ex - 8, cy - 12 - eye_h, ex + 8, cy - 12 + eye_h), fill=(250, 250, 250))
        draw.ellipse((ex - 3, cy - 12 - 3, ex + 3, cy - 12 + 3), fill=(40, 30, 30))
        if on["Eyeglasses"]:
            draw.rectangle((ex - 12, cy - 22, ex + 12, cy - 2), outline=(10, 10, 10), width=3)
    if on["Eyeglasses"]:
        draw.line((cx - 5, cy - 12, cx + 5, cy - 12), fill=(10, 10, 10), width=3)
    mouth_y = cy + 26
    lips = (170, 40, 60) if on["Wearing_Lipstick"] else (150, 80, 80)
    if on["Mouth_Slightly_Open"]:
        draw.ellipse((cx - 13, mouth_y - 6, cx + 13, mouth_y + 8), fill=(60, 10, 20), outline=lips, width=3)
    elif on["Smiling"]:
        draw.arc((cx - 18, mouth_y - 14, cx + 18, mouth_y + 8), 20, 160, fill=lips, width=4)
    else:
        draw.line((cx - 14, mouth_y, cx + 14, mouth_y), fill=lips, width=4)
    if on["Mustache"]:
        draw.rectangle((cx - 16, mouth_y - 11, cx + 16, mouth_y - 5), fill=(50, 35, 25))
    if not on["Young"]:
        for k in range(3):
            y = cy - half_h + 18 + 5 * k
            draw.line((cx - 18, y, cx + 18, y), fill=(150, 110, 90), width=1)
    if on["Wearing_Hat"]:
        hat = color((40, 40, 140))
        draw.rectangle((cx - half_w - 16, cy - half_h - 10, cx + half_w + 16, cy - half_h + 12), fill=hat)
        draw.rectangle((cx - half_w + 4, cy - half_h - 45, cx + half_w - 4, cy - half_h - 8), fill=hat)
    return image


# --------------------------------------------------------------------------- argument checks


def _positive(value: Any, name: str, where: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: `{name}` must be a positive integer; got {value!r}.")
    return int(value)


def _count(value: Any, name: str, where: str, *, maximum: int | None = None) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0 or (
        maximum is not None and value > maximum
    ):
        bound = "" if maximum is None else f" and at most {maximum}"
        raise ValueError(f"{where}: `{name}` must be an integer >= 0{bound}; got {value!r}.")
    return int(value)
