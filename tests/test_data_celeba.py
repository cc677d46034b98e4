"""CelebA: the torchvision-layout reader, MSP's preprocessing, streaming, tfds mapping and latent shards.

Everything runs on small generated trees (``write_synthetic_celeba``: 178x218 JPEGs in exactly
the torchvision layout). The references are restated here independently: torchvision's
``center_crop`` corner and ``Resize`` (Pillow bilinear), ``ToTensor`` / ``Normalize(0.5, 0.5)``,
the list files parsed line by line, and torchvision's (v + 1) // 2 label mapping.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from fpn_jax import latents
from fpn_jax.autoencoders.base import Autoencoder
from fpn_jax.data import (
    CELEBA_ATTRIBUTES,
    CelebA,
    CelebAFormatError,
    Dataset,
    DatasetUnavailableError,
    Split,
    center_crop_box,
    load_celeba_arrays,
    preprocess_celeba_image,
    write_synthetic_celeba,
)
from fpn_jax.data import celeba as celeba_module

Image = pytest.importorskip("PIL.Image", reason="CelebA reading needs Pillow")

SIZES = {"train": 240, "validation": 30, "test": 30}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_synthetic_celeba(tmp_path_factory.mktemp("celeba") / "data", num_images=300, seed=0)


def small_tree(root: Path, n: int = 12) -> Path:
    """A fresh 12-image tree to break; returns the folder holding the files."""
    write_synthetic_celeba(root, num_images=n, seed=3, splits=(0.5, 0.25, 0.25))
    return root / "celeba"


def parse_lists(folder: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per split: file names and torchvision's {0, 1} labels, parsed naively, in file-name order."""
    attr_lines = (folder / "list_attr_celeba.txt").read_text().splitlines()
    assert int(attr_lines[0]) == len(attr_lines) - 2
    header = attr_lines[1].split()
    values = {p[0]: [int(v) for v in p[1:]] for p in (line.split() for line in attr_lines[2:])}
    codes = dict(line.split() for line in (folder / "list_eval_partition.txt").read_text().splitlines())
    out = {}
    for code, name in enumerate(("train", "validation", "test")):
        files = sorted(f for f, c in codes.items() if int(c) == code)
        labels = np.floor_divide(np.array([values[f] for f in files]) + 1, 2)  # torchvision's mapping
        out[name] = (files, labels.astype(np.float32))
    assert header == list(CELEBA_ATTRIBUTES)
    return out


# --------------------------------------------------------------------------- names and preprocessing


def test_attribute_names_and_paper_indices():
    assert len(CELEBA_ATTRIBUTES) == 40 == len(set(CELEBA_ATTRIBUTES))
    index = {name: k for k, name in enumerate(CELEBA_ATTRIBUTES)}
    assert index["5_o_Clock_Shadow"] == 0
    assert (index["Male"], index["Mouth_Slightly_Open"], index["No_Beard"]) == (20, 21, 24)
    assert (index["Wearing_Hat"], index["Young"]) == (35, 39)


def test_attribute_names_match_tfds_header():
    if importlib.util.find_spec("tensorflow_datasets") is None:
        pytest.skip("tensorflow-datasets is not installed")
    spec = importlib.util.find_spec("tensorflow_datasets")
    source = Path(spec.origin).parent / "datasets" / "celeb_a" / "celeb_a_dataset_builder.py"
    if not source.is_file():
        pytest.skip("this tensorflow-datasets has no celeb_a builder source")
    text = source.read_text()
    headings = re.search(r"ATTR_HEADINGS = \((.*?)\)\.split\(\)", text, re.S).group(1)
    assert tuple("".join(re.findall(r'"([^"]*)"', headings)).split()) == CELEBA_ATTRIBUTES


def test_center_crop_corner_is_torchvisions():
    assert center_crop_box(178, 218) == (0, 20, 178, 198)  # CelebA's faces: rows 20..197
    for width, height in [(178, 219), (179, 218), (181, 221), (200, 300)]:
        top, left = int(round((height - 178) / 2.0)), int(round((width - 178) / 2.0))
        assert center_crop_box(width, height) == (left, top, left + 178, top + 178)


def reference(array: np.ndarray, size: int) -> np.ndarray:
    """torchvision's CenterCrop(178), Resize(size), ToTensor, Normalize(0.5, 0.5), restated (HWC)."""
    image = Image.fromarray(array).crop((0, 20, 178, 198))
    if size != 178:
        image = image.resize((size, size), Image.BILINEAR)
    tensor = np.asarray(image).astype(np.float32) / np.float32(255)  # ToTensor
    return (tensor - np.float32(0.5)) / np.float32(0.5)  # Normalize


@pytest.mark.parametrize("size", [32, 64, 178, 256])
def test_preprocessing_matches_pil_reference(size):
    rng = np.random.default_rng(size)
    smooth = rng.integers(0, 256, (28, 23, 3), dtype=np.uint8)
    array = np.asarray(Image.fromarray(smooth).resize((178, 218), Image.BICUBIC))
    out = preprocess_celeba_image(array, size)
    assert out.shape == (size, size, 3) and out.dtype == np.float32
    assert -1.0 <= out.min() and out.max() <= 1.0
    expected = reference(array, size)
    assert np.abs(out - expected).max() <= 1 / 255
    np.testing.assert_array_equal(out, expected)  # the same operations: identical
    np.testing.assert_array_equal(preprocess_celeba_image(Image.fromarray(array), size), out)


def test_crop_drops_the_top_and_bottom_20_rows():
    array = np.zeros((218, 178, 3), dtype=np.uint8)
    array[:20, :, 0] = 255  # red band: cut by the crop
    array[198:, :, 2] = 255  # blue band: cut by the crop
    array[20:198, :, 1] = np.arange(178, dtype=np.uint8)[:, None]  # green ramp: row r -> r - 20
    kept = preprocess_celeba_image(array, 178)
    ramp = np.arange(178, dtype=np.float32) / np.float32(255)
    np.testing.assert_array_equal(kept[:, 0, 1], (ramp - np.float32(0.5)) / np.float32(0.5))
    for size in (64, 256):
        out = preprocess_celeba_image(array, size)
        assert np.all(out[..., 0] == -1) and np.all(out[..., 2] == -1)  # nothing of the bands survives


def test_preprocessing_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 178 x 178 pixels.*got 100 x 218"):
        preprocess_celeba_image(np.zeros((218, 100, 3), np.uint8))
    with pytest.raises(ValueError, match=r"uint8 array of shape \(H, W, 3\); got dtype float32"):
        preprocess_celeba_image(np.zeros((218, 178, 3), np.float32))
    with pytest.raises(ValueError, match="`image_size` must be a positive integer; got 0"):
        preprocess_celeba_image(np.zeros((218, 178, 3), np.uint8), 0)


# --------------------------------------------------------------------------- the folder reader


def test_splits_labels_and_order_follow_the_lists(tree):
    celeba = CelebA(tree, image_size=32)
    assert celeba.source == "folder" and celeba.folder == tree / "celeba"
    expected = parse_lists(tree / "celeba")
    for name, (files, labels) in expected.items():
        split = celeba.split(name)
        assert len(split) == SIZES[name] == len(files)
        assert split.files == tuple(files)
        assert split.attributes.dtype == np.float32 and split.attributes.shape == (len(files), 40)
        np.testing.assert_array_equal(split.attributes, labels)
    assert celeba.split("valid") is celeba.split("validation") is celeba.split("val")
    # The synthetic tree's split is contiguous in file number, as CelebA's.
    assert celeba.split("train").files[-1] < celeba.split("validation").files[0] < celeba.split("test").files[0]


def test_list_files_in_any_row_order_and_crlf(tmp_path, tree):
    """Rows are matched by file name, not position; the split's order is the file names'."""
    folder = tmp_path / "celeba"
    shutil.copytree(tree / "celeba", folder)
    attr = (folder / "list_attr_celeba.txt").read_text().splitlines()
    part = (folder / "list_eval_partition.txt").read_text().splitlines()
    rng = np.random.default_rng(0)
    attr = attr[:2] + [attr[2:][k] for k in rng.permutation(len(attr) - 2)]
    part = [part[k] for k in rng.permutation(len(part))]
    (folder / "list_attr_celeba.txt").write_bytes(("\r\n".join(attr) + "\r\n").encode())
    (folder / "list_eval_partition.txt").write_bytes(("\r\n".join(part) + "\r\n").encode())
    shuffled, original = CelebA(folder, image_size=32), CelebA(tree, image_size=32)  # <root> = the folder works too
    for name in SIZES:
        assert shuffled.split(name).files == original.split(name).files
        np.testing.assert_array_equal(shuffled.split(name).attributes, original.split(name).attributes)


def test_images_are_the_preprocessed_files(tree):
    split = CelebA(tree, image_size=64).split("test")
    images, attributes, rows = next(split.batches(4))
    np.testing.assert_array_equal(rows, np.arange(4))
    np.testing.assert_array_equal(attributes, split.attributes[:4])
    for k in range(4):
        with Image.open(tree / "celeba" / "img_align_celeba" / split.files[k]) as image:
            assert image.size == (178, 218) and image.mode == "RGB"
            np.testing.assert_array_equal(images[k], reference(np.asarray(image), 64))


def test_streaming_equals_eager_reading(tree):
    split = CelebA(tree, image_size=32, workers=3).split("train")
    eager = split.read(np.arange(len(split)))
    for kwargs in ({"prefetch": 0}, {"prefetch": 3, "workers": 4}, {"prefetch": 1, "workers": 1}):
        parts = list(split.batches(37, **kwargs))
        assert [len(p[0]) for p in parts] == [37] * 6 + [18]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), eager)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), split.attributes)
        np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), np.arange(len(split)))
    window = list(split.batches(16, start=100, stop=150))
    np.testing.assert_array_equal(np.concatenate([p[2] for p in window]), np.arange(100, 150))
    np.testing.assert_array_equal(np.concatenate([p[0] for p in window]), eager[100:150])
    assert list(split.batches(8, start=len(split))) == []
    # Leaving early stops the pool (the generator's close cancels what was queued).
    stream = split.batches(8, prefetch=4)
    first = next(stream)
    stream.close()
    np.testing.assert_array_equal(first[0], eager[:8])


def test_load_celeba_arrays(tree):
    data = load_celeba_arrays(tree, image_size=32, limits={"train": 20, "test": 5})
    assert isinstance(data, Dataset)
    assert (len(data.train), len(data.validation), len(data.test)) == (20, 30, 5)
    assert data.value_range == (-1.0, 1.0) and data.context_names == CELEBA_ATTRIBUTES
    assert data.num_classes is None and data.context_features == 40
    assert data.train.labels is None and data.train.inputs.shape == (20, 32, 32, 3)
    split = CelebA(tree, image_size=32).split("train")
    np.testing.assert_array_equal(data.train.inputs, split.read(np.arange(20)))
    np.testing.assert_array_equal(data.train.context, split.attributes[:20])
    assert len(load_celeba_arrays(tree, image_size=32, limits=3).validation) == 3
    with pytest.raises(ValueError, match="`limits` keys must be 'train', 'validation' or 'test'; got \\['dev'\\]"):
        load_celeba_arrays(tree, limits={"dev": 3})


# --------------------------------------------------------------------------- named errors


def _rewrite(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def _row(line: str, column: int, value: str) -> str:
    parts = line.split()
    parts[column] = value
    return " ".join(parts)


BROKEN = {
    "missing attribute file": (
        lambda f: (f / "list_attr_celeba.txt").unlink(), FileNotFoundError, r"is missing list_attr_celeba\.txt"),
    "missing image folder": (
        lambda f: shutil.rmtree(f / "img_align_celeba"), FileNotFoundError, r"is missing img_align_celeba/"),
    "wrong column count": (
        lambda f: _rewrite(f / "list_attr_celeba.txt", lambda ls: ls[:4] + [ls[4] + " 1"] + ls[5:]),
        CelebAFormatError, r"list_attr_celeba\.txt line 5 must hold a file name and 40 values \(41 columns\); got 42"),
    "partition columns": (
        lambda f: _rewrite(f / "list_eval_partition.txt", lambda ls: [ls[0] + " 0"] + ls[1:]),
        CelebAFormatError, r"list_eval_partition\.txt line 1 must hold a file name and a partition code"),
    "unknown partition code": (
        lambda f: _rewrite(f / "list_eval_partition.txt", lambda ls: ls[:2] + [_row(ls[2], 1, "3")] + ls[3:]),
        CelebAFormatError, r"line 3 \(000003\.jpg\): the partition code must be 0 \(train\), 1 \(validation\) "
        r"or 2 \(test\); got '3'"),
    "attribute value": (
        lambda f: _rewrite(f / "list_attr_celeba.txt", lambda ls: ls[:3] + [_row(ls[3], 22, "0")] + ls[4:]),
        CelebAFormatError, r"line 4 \(000002\.jpg\): attribute values must be -1 or 1; Mouth_Slightly_Open is '0'"),
    "count line": (
        lambda f: _rewrite(f / "list_attr_celeba.txt", lambda ls: ["13"] + ls[1:]),
        CelebAFormatError, r"line 1 says 13 images but 12 rows follow"),
    "header": (
        lambda f: _rewrite(f / "list_attr_celeba.txt", lambda ls: [ls[0], ls[1].replace("Male", "male")] + ls[2:]),
        CelebAFormatError, r"column 21 is 'male' where 'Male' was expected"),
    "partition without attributes": (
        lambda f: _rewrite(f / "list_attr_celeba.txt", lambda ls: ["11"] + ls[1:-1]),
        CelebAFormatError, r"1 image\(s\) of list_eval_partition\.txt have no row in list_attr_celeba\.txt, "
        r"e\.g\. 000012\.jpg"),
    "repeated file": (
        lambda f: _rewrite(f / "list_eval_partition.txt", lambda ls: ls + [ls[0]]),
        CelebAFormatError, r"lists 000001\.jpg more than once"),
    "image listed but missing": (
        lambda f: (f / "img_align_celeba" / "000007.jpg").unlink(), FileNotFoundError,
        r"1 image\(s\) listed in list_eval_partition\.txt are missing from .*img_align_celeba, e\.g\. 000007\.jpg"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_malformed_trees_are_named(tmp_path, case):
    folder = small_tree(tmp_path)
    breaks, error, message = BROKEN[case]
    breaks(folder)
    with pytest.raises(error, match=message):
        CelebA(tmp_path, source="folder")


def test_image_errors_at_read_time(tmp_path):
    folder = small_tree(tmp_path)
    (folder / "img_align_celeba" / "000002.jpg").write_bytes(b"not a jpeg")
    split = CelebA(tmp_path, image_size=32).split("train")
    with pytest.raises(CelebAFormatError, match=r"cannot decode image .*000002\.jpg"):
        list(split.batches(4))
    (folder / "img_align_celeba" / "000003.jpg").unlink()
    unchecked = CelebA(tmp_path, image_size=32, check_images=False).split("train")
    with pytest.raises(FileNotFoundError, match=r"image .*000003\.jpg is listed but missing"):
        unchecked.read([2])


def test_argument_errors(tmp_path, tree):
    with pytest.raises(FileNotFoundError, match=r"no CelebA files under `root` .*nowhere \(it does not exist\)"):
        CelebA(tmp_path / "nowhere", source="folder")
    with pytest.raises(ValueError, match="source='folder' needs `root`"):
        CelebA(source="folder")
    with pytest.raises(ValueError, match="`source` must be 'auto', 'folder' or 'tfds'; got 'web'"):
        CelebA(tree, source="web")
    celeba = CelebA(tree, image_size=32)
    with pytest.raises(ValueError, match=r"`name` must be one of 'train', 'validation' .* got 'dev'"):
        celeba.split("dev")
    split = celeba.split("test")
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer; got 0"):
        split.batches(0)
    with pytest.raises(ValueError, match="`start` must be an integer >= 0 and at most 30; got 31"):
        split.batches(4, start=31)
    with pytest.raises(ValueError, match="`stop` must be at least `start` = 5; got 2"):
        split.batches(4, start=5, stop=2)
    with pytest.raises(ValueError, match=r"`indices` must be a 1-D integer array of rows in \[0, 30\)"):
        split.read([30])


# --------------------------------------------------------------------------- tensorflow-datasets


@pytest.mark.parametrize("source", ["auto", "tfds"])
def test_tfds_without_tensorflow_says_what_to_do(tmp_path, monkeypatch, source):
    monkeypatch.setattr(celeba_module, "_tensorflow_available", lambda: False)
    with pytest.raises(DatasetUnavailableError, match="TensorFlow is not installed") as info:
        CelebA(tmp_path, source=source)
    message = str(info.value)
    assert "pip install tensorflow-cpu" in message and "list_eval_partition.txt" in message
    assert "write_synthetic_celeba" in message
    if source == "auto":
        assert f"No CelebA files under {tmp_path}" in message
    assert info.value.__cause__ is None and info.value.__context__ is None


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_tfds_real_environment_without_tensorflow(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="TensorFlow is not installed"):
        CelebA(tmp_path / "nowhere")


def test_tfds_unprepared_with_tensorflow(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DatasetUnavailableError, match="celeb_a is not prepared"):
        CelebA(source="tfds", data_dir=tmp_path)


class FakeTfds:
    """tensorflow_datasets' surface that the reader uses, over the folder's JPEG bytes in a shuffled order."""

    def __init__(self, folder: Path, *, prepared: bool = True):
        self.prepared = prepared
        self.calls: list[dict] = []
        self.decode = types.SimpleNamespace(SkipDecoding=lambda: "skip")
        self.examples = {}
        for name, (files, labels) in parse_lists(folder).items():
            order = np.random.default_rng(len(files)).permutation(len(files))  # tfds' hash order
            self.examples[name] = [
                {
                    "image": (folder / "img_align_celeba" / files[k]).read_bytes(),
                    "attributes": {a: bool(labels[k, j]) for j, a in enumerate(CELEBA_ATTRIBUTES)},
                    "file": files[k],
                }
                for k in order
            ]

    def builder(self, name, data_dir=None):
        assert name == "celeb_a"
        fake = self
        splits = {k: types.SimpleNamespace(num_examples=len(v)) for k, v in self.examples.items()}

        class Builder:
            info = types.SimpleNamespace(splits=splits)

            def is_prepared(self):
                return fake.prepared

            def as_dataset(self, *, split, shuffle_files, decoders, batch_size=None):
                fake.calls.append({"split": split, "shuffle_files": shuffle_files, "decoders": decoders})
                assert shuffle_files is False and decoders == {"image": "skip"}
                match = re.fullmatch(r"(\w+)(?:\[(\d+):(\d+)\])?", split)
                rows = fake.examples[match.group(1)]
                if match.group(2) is not None:
                    rows = rows[int(match.group(2)):int(match.group(3))]
                if batch_size is None:
                    return [{"image": np.bytes_(r["image"]), "attributes": r["attributes"]} for r in rows]
                return [
                    {
                        "image": np.array([r["image"] for r in rows[a:a + batch_size]], dtype=object),
                        "attributes": {n: np.array([r["attributes"][n] for r in rows[a:a + batch_size]])
                                       for n in reversed(CELEBA_ATTRIBUTES)},
                    }
                    for a in range(0, len(rows), batch_size)
                ]

        Builder.data_dir = str(data_dir)
        return Builder()

    @staticmethod
    def as_numpy(dataset):
        return dataset


def test_tfds_source_maps_attributes_and_images(tmp_path, monkeypatch, tree):
    fake = FakeTfds(tree / "celeba")
    monkeypatch.setattr(celeba_module, "_tensorflow_available", lambda: True)
    monkeypatch.setattr(celeba_module, "_import_tfds", lambda: fake)
    from_tfds = CelebA(tmp_path / "empty", image_size=32, data_dir=tmp_path)  # auto: no folder -> tfds
    folder = CelebA(tree, image_size=32)
    assert from_tfds.source == "tfds"
    for name in ("validation", "test"):
        split, reference_split = from_tfds.split(name), folder.split(name)
        assert split.files is None and len(split) == SIZES[name]
        position = {f: k for k, f in enumerate(reference_split.files)}
        order = [position[e["file"]] for e in fake.examples[name]]
        np.testing.assert_array_equal(split.attributes, reference_split.attributes[order])
        images = np.concatenate([b[0] for b in split.batches(7, start=3)])
        np.testing.assert_array_equal(images, reference_split.read(np.array(order[3:])))
    assert fake.calls[-1]["split"] == "test[3:30]"
    with pytest.raises(NotImplementedError, match="random access needs the folder source"):
        from_tfds.split("test").read([0])
    fake.prepared = False
    with pytest.raises(DatasetUnavailableError, match="celeb_a is not prepared in"):
        CelebA(source="tfds", data_dir=tmp_path)


# --------------------------------------------------------------------------- the synthetic writer


def test_synthetic_tree_is_deterministic_and_safe(tmp_path, tree):
    again = write_synthetic_celeba(tmp_path / "again", num_images=300, seed=0)
    for path in sorted((tree / "celeba").rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (again / "celeba" / path.relative_to(tree / "celeba")).read_bytes(), path
    stamp = os.stat(again / "celeba" / "list_attr_celeba.txt").st_mtime_ns
    assert write_synthetic_celeba(again, num_images=300, seed=0) == again  # the same: kept as is
    assert os.stat(again / "celeba" / "list_attr_celeba.txt").st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="written with other arguments"):
        write_synthetic_celeba(again, num_images=300, seed=1)
    write_synthetic_celeba(again, num_images=9, seed=1, overwrite=True)
    assert len(os.listdir(again / "celeba" / "img_align_celeba")) == 9
    real = tmp_path / "real"
    (real / "celeba").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a synthetic CelebA tree"):
        write_synthetic_celeba(real, overwrite=True)
    with pytest.raises(ValueError, match="`num_images` must be at least 3"):
        write_synthetic_celeba(tmp_path / "tiny", num_images=2)
    assert not (tmp_path / "tiny" / "celeba").exists()
    sizes = [int(c) for c in (tree / "celeba" / "list_eval_partition.txt").read_text().split()[1::2]]
    assert np.bincount(sizes).tolist() == [240, 30, 30]


# --------------------------------------------------------------------------- latent shards


class TinyEncoder(Autoencoder):
    """A linear encoder of (16, 16, 3) images in [-1, 1], with a Gaussian posterior of std 0.1."""

    def __init__(self, seed: int = 0):
        super().__init__(5, data_shape=(16, 16, 3), data_range=(-1.0, 1.0))
        self.linear = nnx.Linear(16 * 16 * 3, 5, rngs=nnx.Rngs(seed))

    def _encode(self, x, key):
        mean = self.linear(x.reshape(x.shape[0], -1))
        return mean if key is None else mean + 0.1 * jax.random.normal(key, mean.shape)


class Interrupted:
    """A streamed split that raises after ``rows`` rows (a crash mid-run), recording where it starts."""

    def __init__(self, split, rows: int, length: int | None = None):
        self.split, self.rows, self.starts = split, rows, []
        self.length = len(split) if length is None else length  # what len() claims

    def __len__(self):
        return self.length

    def batches(self, batch_size, *, start=0):
        self.starts.append(start)
        given = 0
        for batch in self.split.batches(batch_size, start=start):
            if given >= self.rows:
                raise RuntimeError("simulated crash")
            given += len(batch[0])
            yield batch


@pytest.fixture(scope="module")
def small_split(tree):
    return CelebA(tree, image_size=16).split("train")  # 240 rows: shards of 64 -> 64, 64, 64, 48


def test_shards_hold_encode_per_shard(tmp_path, small_split):
    model, key = TinyEncoder(), jax.random.key(7)
    folder = latents.encode_to_shards(model, small_split, tmp_path / "z", key=key, shard_size=64, batch_size=32,
                                      progress="celeba train")
    assert sorted(p.name for p in folder.glob("z_*.npy")) == [f"z_{k:05d}.npy" for k in range(4)]
    z, attributes = latents.read_shards(folder)
    x = small_split.read(np.arange(len(small_split)))
    expected = np.concatenate([
        latents.encode(model, x[a:a + 64], key=jax.random.fold_in(key, a // 64)) for a in range(0, 240, 64)
    ])
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(attributes, small_split.attributes)
    # Without a key: the posterior mean, the same from a Split in memory or from plain batches.
    mean = latents.read_shards(latents.encode_to_shards(model, small_split, tmp_path / "mean", shard_size=100,
                                                         progress=False))[0]
    np.testing.assert_allclose(mean, latents.encode(model, x), rtol=1e-6, atol=1e-6)
    in_memory = Split(inputs=x, context=small_split.attributes)
    for name, source in (("split", in_memory), ("iterable", [(x[a:a + 50], small_split.attributes[a:a + 50])
                                                           for a in range(0, 240, 50)])):
        again = latents.read_shards(latents.encode_to_shards(model, source, tmp_path / name, key=key, shard_size=64,
                                                              progress=False))
        np.testing.assert_array_equal(again[0], z)
        np.testing.assert_array_equal(again[1], attributes)


def test_shards_resume_after_a_crash(tmp_path, small_split):
    model, key = TinyEncoder(), jax.random.key(3)
    whole = latents.read_shards(latents.encode_to_shards(model, small_split, tmp_path / "whole", key=key,
                                                         shard_size=64, batch_size=32, progress=False))
    folder = tmp_path / "resumed"
    crashing = Interrupted(small_split, rows=2 * 64 + 32)  # dies inside shard 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        latents.encode_to_shards(model, crashing, folder, key=key, shard_size=64, batch_size=32, progress=False)
    assert sorted(p.name for p in folder.glob("z_*.npy")) == ["z_00000.npy", "z_00001.npy"]
    with pytest.raises(ValueError, match=r"is unfinished \(2 of 4 shards written\)"):
        latents.read_shards(folder)
    stamps = {p.name: os.stat(p).st_mtime_ns for p in folder.glob("*_0000[01].npy")}
    # A shard cut short (latents truncated, attributes whole) and a stale temporary file are redone.
    np.save(folder / "attributes_00002.npy", np.zeros((64, 40), np.float32))
    (folder / "z_00002.npy").write_bytes((folder / "z_00001.npy").read_bytes()[:200])
    (folder / "z_00003.npy.tmp").write_bytes(b"partial")
    resuming = Interrupted(small_split, rows=10**6)
    latents.encode_to_shards(model, resuming, folder, key=key, shard_size=64, batch_size=32, progress=False)
    assert resuming.starts == [128]  # only the unfinished shards are read
    assert {p.name: os.stat(p).st_mtime_ns for p in folder.glob("*_0000[01].npy")} == stamps
    assert not list(folder.glob("*.tmp"))
    resumed = latents.read_shards(folder)
    np.testing.assert_array_equal(resumed[0], whole[0])
    np.testing.assert_array_equal(resumed[1], whole[1])
    # A finished folder is left alone.
    idle = Interrupted(small_split, rows=0)
    latents.encode_to_shards(model, idle, folder, key=key, shard_size=64, progress=False)
    assert idle.starts == []


def test_shards_refuse_another_run(tmp_path, tree, small_split):
    model, key = TinyEncoder(), jax.random.key(3)
    folder = tmp_path / "z"
    crashing = Interrupted(small_split, rows=64)
    with pytest.raises(RuntimeError):
        latents.encode_to_shards(model, crashing, folder, key=key, shard_size=64, batch_size=32, progress=False)
    with pytest.raises(ValueError, match=r"holds shards of another run: \{'key': \[0, 3\]\}; this run has \{'key'"):
        latents.encode_to_shards(model, small_split, folder, key=jax.random.key(4), shard_size=64, progress=False)
    with pytest.raises(ValueError, match=r"another run: \{'shard_size': 64\}; this run has \{'shard_size': 32\}"):
        latents.encode_to_shards(model, small_split, folder, key=key, shard_size=32, progress=False)
    with pytest.raises(ValueError, match="another run: {'model_fingerprint'"):
        latents.encode_to_shards(TinyEncoder(seed=1), small_split, folder, key=key, shard_size=64, progress=False)
    with pytest.raises(ValueError, match="another run: {'num_rows': 240}; this run has {'num_rows': 30}"):
        latents.encode_to_shards(model, CelebA(tree, image_size=16).split("test"), folder, key=key, shard_size=64,
                                 progress=False)
    for claimed, message in ((250, r"gave 48 rows for shard 3 \(rows 192..249\); its len\(\) of 250 says 58"),
                             (192, r"gave more rows than its len\(\) of 192")):
        lying = Interrupted(small_split, rows=10**6, length=claimed)
        with pytest.raises(ValueError, match=message):
            latents.encode_to_shards(model, lying, tmp_path / f"lying{claimed}", shard_size=64, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty and holds no manifest.json"):
        latents.encode_to_shards(model, small_split, tmp_path / "other", progress=False)
    with pytest.raises(TypeError, match="`batches_or_split` must be a streamed split"):
        latents.encode_to_shards(model, 3, tmp_path / "bad", progress=False)
    with pytest.raises(FileNotFoundError, match="holds no manifest.json"):
        latents.read_shards(tmp_path / "other")

