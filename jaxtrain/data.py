"""FashionMNIST from IDX files, and the one batch pipeline both frameworks consume.

The IDX reader is plain numpy. `epoch_batches` decides which samples go in
which batch of an epoch (in order, like `DataLoader(shuffle=False)`, or in a
seeded permutation); the JAX trainer, the PyTorch reference and the parity
harness all take their batches from it, so they see the same data in the same
order and any difference between them is about math, not data.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from jaxtrain.errors import DataError, first_line

DATA_ENV_VAR = "JAXTRAIN_DATA_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_SUBDIR = Path("FashionMNIST") / "raw"  # torchvision's root/FashionMNIST/raw
NUM_CLASSES = 10
HOW_TO_GET = (
    "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
    "or pass --data-dir DIR holding the four FashionMNIST IDX files"
)

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: images as float32 in [0, 1] (what `ToTensor()` gives), labels int32."""

    images: Any  # (n, 28, 28) float32 for FashionMNIST; a user's port: an array, tuple or dict of (n, ...) arrays
    labels: np.ndarray  # (n, ...) integer class labels, or float regression targets

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, limit: int | None) -> "Split":
        if limit is None or limit >= len(self):
            return self
        from jaxtrain.inputs import rows

        return Split(rows(self.images, slice(0, limit)), self.labels[:limit])


# --------------------------------------------------------------------------- IDX


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); {HOW_TO_GET}") from None
    if path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a valid gzip file ({e}); re-install or re-download it") from None
    return raw


def parse_idx(raw: bytes, expected_magic: int, name: str) -> np.ndarray:
    """Parse an IDX byte string (big-endian header) into a uint8 array, checking everything."""
    kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
    ndim = 3 if expected_magic == IMAGES_MAGIC else 1
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(f"{name}: truncated IDX header ({len(raw)} bytes, need {header_len}); re-download the file")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{name}: wrong magic number {magic} (IDX {kind} files start with {expected_magic}); "
            "is this the right file?"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if ndim == 3 and dims[1:] != (28, 28):
        raise DataError(f"{name}: images are {dims[1]}x{dims[2]}, FashionMNIST images are 28x28")
    expected = int(np.prod(dims, dtype=np.int64))
    body = len(raw) - header_len
    if body != expected:
        what = "truncated" if body < expected else "has trailing bytes"
        raise DataError(f"{name}: {what}: header says {dims} = {expected} bytes of data, file has {body}; re-download it")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _find_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / (stem + ".gz"), directory / stem):
        if candidate.is_file():
            return candidate
    return None


def candidate_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    """Where to look, in order: --data-dir alone when given; else $JAXTRAIN_DATA_DIR,
    Debian's package, then torchvision's ./data/FashionMNIST/raw layout."""
    if data_dir is not None:
        return [Path(data_dir), Path(data_dir) / TORCHVISION_SUBDIR]
    dirs: list[Path] = []
    if os.environ.get(DATA_ENV_VAR):
        root = Path(os.environ[DATA_ENV_VAR])
        dirs += [root, root / TORCHVISION_SUBDIR]
    return dirs + [DEBIAN_DIR, Path("data") / TORCHVISION_SUBDIR]


def locate(data_dir: str | os.PathLike | None = None) -> Path:
    """The first candidate directory that holds all four files (plain or .gz).

    An explicit --data-dir is never silently replaced by another copy: when it
    lacks a file, that is the error.
    """
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"{data_dir}: --data-dir does not exist or is not a directory; {HOW_TO_GET}")
    stems = [s for pair in SPLIT_FILES.values() for s in pair]
    for directory in candidate_dirs(data_dir):
        if all(_find_file(directory, s) for s in stems):
            return directory
    for directory in candidate_dirs(data_dir):  # name the first file missing from a partial copy
        found = [s for s in stems if _find_file(directory, s)]
        if found:
            missing = next(s for s in stems if s not in found)
            raise DataError(f"{directory}: {missing}(.gz) is missing; {HOW_TO_GET}")
    where = ", ".join(str(d) for d in candidate_dirs(data_dir))
    raise DataError(f"FashionMNIST not found (looked in {where}); {HOW_TO_GET}")


def load_split(directory: Path, split: str) -> Split:
    image_stem, label_stem = SPLIT_FILES[split]
    image_path, label_path = _find_file(directory, image_stem), _find_file(directory, label_stem)
    if image_path is None or label_path is None:
        missing = image_stem if image_path is None else label_stem
        raise DataError(f"{directory}: {missing}(.gz) is missing; {HOW_TO_GET}")
    images = parse_idx(_read_bytes(image_path), IMAGES_MAGIC, str(image_path))
    labels = parse_idx(_read_bytes(label_path), LABELS_MAGIC, str(label_path))
    if len(images) != len(labels):
        raise DataError(f"{image_path}: {len(images)} images but {label_path.name} has {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{label_path}: holds no samples; re-download it")
    if labels.max() >= NUM_CLASSES:
        raise DataError(f"{label_path}: label {int(labels.max())} out of range 0..{NUM_CLASSES - 1}")
    return Split(images.astype(np.float32) / np.float32(255.0), labels.astype(np.int32))


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> tuple[Split, Split]:
    directory = locate(data_dir)
    return load_split(directory, "train"), load_split(directory, "test")


# --------------------------------------------------------------------------- TFDS


def load_tfds(name: str, data_dir: str | None = None) -> tuple[Split, Split]:
    """Load a TFDS image-classification dataset through `tfds.data_source` (no TensorFlow needed).

    The dataset must already be prepared in `data_dir`: nothing is downloaded
    (`download=False`), an unprepared dataset is a one-line error. TFDS orders
    the samples differently from the IDX files.
    """
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)  # tfds warns about missing metadata at length
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError("--data-source tfds needs tensorflow-datasets: pip install 'jaxtrain[tfds]'") from None
    splits = []
    for split in ("train", "test"):
        try:
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
            records = [source[i] for i in range(len(source))]
        except Exception as e:  # tfds raises many types for a missing/unprepared dataset
            raise DataError(f"tfds dataset {name!r} split {split!r} unavailable: {first_line(e)}") from None
        if not records:
            raise DataError(f"tfds dataset {name!r} split {split!r} is empty")
        images = np.stack([np.asarray(r["image"]) for r in records])
        images = images.reshape(len(records), *images.shape[1:3])  # drop the channel axis
        labels = np.asarray([int(r["label"]) for r in records], dtype=np.int32)
        splits.append(Split(images.astype(np.float32) / np.float32(255.0), labels))
    return splits[0], splits[1]


def load_data(config) -> tuple[Split, Split]:
    """The train and test splits a run asked for, limited by --train-limit/--test-limit."""
    if config.data_source == "tfds":
        train, test = load_tfds(config.tfds_name, config.data_dir)
    else:
        train, test = load_fashion_mnist(config.data_dir)
    train, test = train.take(config.train_limit), test.take(config.test_limit)
    check_training_batches(len(train), config.batch_size, config.model == "mlp_bn_dropout")
    check_accumulation(len(train), config.batch_size, config.accumulate)
    return train, test


# --------------------------------------------------------------------------- batches


@dataclasses.dataclass(frozen=True)
class EpochBatches:
    """Which samples each batch of one epoch holds.

    `index[b, i]` is the sample in row i of batch b, for i < `sizes[b]` (only the
    last batch can be partial; its unused rows hold 0 and are never read).
    """

    index: np.ndarray  # (num_batches, batch_size) int32
    sizes: np.ndarray  # (num_batches,) real samples per batch

    def __len__(self) -> int:
        return len(self.sizes)


def batches_per_epoch(num_samples: int, batch_size: int) -> int:
    """Batches in an epoch, the last one partial (DataLoader's drop_last=False)."""
    return -(-num_samples // batch_size)


def epoch_batches(num_samples: int, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> EpochBatches:
    """Batches of one epoch: in order (`shuffle=False`) or a permutation seeded by (seed, epoch).

    Keeps the last partial batch, as `DataLoader(drop_last=False)` does.
    """
    order = np.arange(num_samples)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    num_batches = batches_per_epoch(num_samples, batch_size)
    padded = np.zeros(num_batches * batch_size, dtype=np.int32)
    padded[:num_samples] = order
    sizes = np.full(num_batches, batch_size)
    sizes[-1] = num_samples - (num_batches - 1) * batch_size
    return EpochBatches(padded.reshape(num_batches, batch_size), sizes)


def is_classification(split: Split) -> bool:
    """Integer targets are class labels (accuracy is measured); float targets are regression's."""
    return np.issubdtype(split.labels.dtype, np.integer)


def check_accumulation(num_train: int, batch_size: int, accumulate: int, flag: str = "--accumulate {}",
                       change: str = "--accumulate, --batch-size or --train-limit") -> None:
    """`accumulate` must divide an epoch's batches: an epoch ending mid-accumulation would carry
    gradients into the next one, where torch's loop and optax.MultiSteps part ways. `flag` and
    `change` word it for the caller (the CLI's flags, or check_port's arguments)."""
    from jaxtrain.errors import ConfigError

    batches = batches_per_epoch(num_train, batch_size)
    if batches % accumulate:
        raise ConfigError(f"{flag.format(accumulate)} must divide the {batches} batches of an epoch "
                          f"({num_train} samples in batches of {batch_size}); change {change}")


def check_training_batches(num_train: int, batch_size: int, has_batchnorm: bool) -> None:
    """A BatchNorm model cannot train on a batch of one row (torch raises "Expected more than
    1 value per channel when training"; the running variance would divide by n - 1 = 0)."""
    from jaxtrain.errors import ConfigError

    if num_train < 1:
        raise ConfigError("the training set is empty")
    last = num_train % batch_size or batch_size
    if has_batchnorm and last == 1:
        raise ConfigError(
            f"BatchNorm needs more than 1 sample per training batch, but {num_train} training samples in batches of "
            f"{batch_size} leave a last batch of 1; change --batch-size or --train-limit")


def iterate(split: Split, batches: EpochBatches):
    """Yield (images, labels) numpy batches in the epoch's order, as a DataLoader yields them."""
    for b in range(len(batches)):
        idx = batches.index[b, : batches.sizes[b]]
        yield split.images[idx], split.labels[idx]
