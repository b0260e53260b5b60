"""The IDX reader on the real files and on crafted bad ones; the shared batch plan."""

import gzip
import shutil
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxtrain import data as data_lib
from jaxtrain.errors import DataError


def idx_bytes(magic, dims, body):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + bytes(body)


def write_dataset(directory, n_train=5, n_test=3, gz=True, labels=None):
    """A tiny but valid FashionMNIST-shaped dataset in `directory`."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        image_stem, label_stem = data_lib.SPLIT_FILES[split]
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        lab = np.asarray(labels if labels is not None else rng.integers(0, 10, size=n), dtype=np.uint8)
        for stem, payload in ((image_stem, idx_bytes(2051, (n, 28, 28), images.tobytes())),
                              (label_stem, idx_bytes(2049, (len(lab),), lab.tobytes()))):
            if gz:
                (directory / (stem + ".gz")).write_bytes(gzip.compress(payload))
            else:
                (directory / stem).write_bytes(payload)
    return directory


def test_real_files_have_the_standard_contents(fashion):
    train, test = fashion
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.float32
    assert test.images.shape == (10000, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.labels[:4].tolist() == [9, 0, 0, 3]
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert train.images.mean() == pytest.approx(0.286041, abs=1e-5)
    assert train.images.std() == pytest.approx(0.353024, abs=1e-5)


def test_raw_and_gz_files_read_the_same(tmp_path):
    (tmp_path / "gz").mkdir()
    (tmp_path / "raw").mkdir()
    gz, raw = write_dataset(tmp_path / "gz"), write_dataset(tmp_path / "raw", gz=False)
    a, b = data_lib.load_fashion_mnist(gz), data_lib.load_fashion_mnist(raw)
    np.testing.assert_array_equal(a[0].images, b[0].images)
    np.testing.assert_array_equal(a[1].labels, b[1].labels)
    # ToTensor(): uint8 / 255 as float32
    raw_pixels = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes()[16:], np.uint8)
    np.testing.assert_array_equal(b[1].images.ravel(), raw_pixels.astype(np.float32) / 255)


def test_search_order_data_dir_then_env_then_torchvision_layout(tmp_path, monkeypatch):
    first = tmp_path / "first"
    first.mkdir()
    write_dataset(first, n_train=7)
    env = tmp_path / "env" / "FashionMNIST" / "raw"
    env.mkdir(parents=True)
    write_dataset(env, n_train=9)
    monkeypatch.setenv(data_lib.DATA_ENV_VAR, str(tmp_path / "env"))
    assert data_lib.locate(first) == first  # --data-dir wins over the environment variable
    assert data_lib.locate(None) == env  # torchvision's root/FashionMNIST/raw layout under the env var
    assert len(data_lib.load_fashion_mnist(None)[0]) == 9


@pytest.mark.parametrize("case, expected", [
    ("wrong_magic", "wrong magic number 2049"),
    ("truncated", "truncated"),
    ("trailing", "trailing bytes"),
    ("short_header", "truncated IDX header"),
    ("empty", "truncated IDX header"),
    ("not_gzip", "not a valid gzip file"),
    ("count_mismatch", "5 images but"),
    ("label_range", "label 12 out of range"),
    ("missing", "is missing"),
    ("bad_size", "images are 27x28"),
])
def test_bad_files_give_one_clear_error(tmp_path, case, expected):
    write_dataset(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    good = gzip.decompress(images.read_bytes())
    if case == "wrong_magic":
        images.write_bytes(gzip.compress(struct.pack(">I", 2049) + good[4:]))
    elif case == "truncated":
        images.write_bytes(gzip.compress(good[:-100]))
    elif case == "trailing":
        images.write_bytes(gzip.compress(good + b"\0"))
    elif case == "short_header":
        images.write_bytes(gzip.compress(good[:10]))
    elif case == "empty":
        images.write_bytes(gzip.compress(b""))
    elif case == "not_gzip":
        images.write_bytes(b"this is not gzip data at all")
    elif case == "count_mismatch":
        labels.write_bytes(gzip.compress(idx_bytes(2049, (4,), [1, 2, 3, 4])))
    elif case == "label_range":
        labels.write_bytes(gzip.compress(idx_bytes(2049, (5,), [1, 2, 12, 4, 0])))
    elif case == "missing":
        labels.unlink()
    elif case == "bad_size":
        images.write_bytes(gzip.compress(idx_bytes(2051, (5, 27, 28), bytes(5 * 27 * 28))))
    with pytest.raises(DataError) as err:
        data_lib.load_fashion_mnist(tmp_path)
    message = str(err.value)
    assert expected in message and "\n" not in message
    if case != "label_range":
        assert "train-" in message  # names the file


def test_missing_directory_says_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.delenv(data_lib.DATA_ENV_VAR, raising=False)
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        data_lib.load_fashion_mnist(tmp_path / "nope")
    monkeypatch.setattr(data_lib, "candidate_dirs", lambda d: [tmp_path])
    with pytest.raises(DataError, match="not found"):
        data_lib.locate(None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64), st.sampled_from([2051, 2049]))
def test_fuzz_random_bytes_only_ever_raise_data_error(raw, magic):
    try:
        out = data_lib.parse_idx(raw, magic, "fuzz")
    except DataError:
        return
    assert out.dtype == np.uint8


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 15), st.integers(0, 255), st.integers(-2, 2))
def test_fuzz_mutated_real_headers(position, value, length_change):
    good = idx_bytes(2051, (2, 28, 28), bytes(2 * 28 * 28))
    mutated = bytearray(good)
    mutated[position] = value
    mutated = bytes(mutated) + b"\0" * max(length_change, 0)
    if length_change < 0:
        mutated = mutated[:length_change]
    try:
        out = data_lib.parse_idx(mutated, 2051, "fuzz")
    except DataError:
        return
    assert out.shape[1:] == (28, 28) and out.size == len(mutated) - 16


def test_epoch_batches_match_dataloader_shuffle_false():
    train = data_lib.epoch_batches(60000, 64)
    assert len(train) == 938 and train.sizes[-1] == 32 and set(train.sizes[:-1]) == {64}
    test = data_lib.epoch_batches(10000, 64)
    assert len(test) == 157 and test.sizes[-1] == 16
    flat = np.concatenate([train.index[b, : train.sizes[b]] for b in range(len(train))])
    np.testing.assert_array_equal(flat, np.arange(60000))


def test_seeded_shuffle_is_a_reproducible_permutation_per_epoch():
    a0 = data_lib.epoch_batches(1000, 64, shuffle=True, seed=3, epoch=0)
    a0_again = data_lib.epoch_batches(1000, 64, shuffle=True, seed=3, epoch=0)
    a1 = data_lib.epoch_batches(1000, 64, shuffle=True, seed=3, epoch=1)
    np.testing.assert_array_equal(a0.index, a0_again.index)
    assert not np.array_equal(a0.index, a1.index)
    real = np.concatenate([a0.index[b, : a0.sizes[b]] for b in range(len(a0))])
    assert sorted(real.tolist()) == list(range(1000)) and real.tolist() != list(range(1000))


def test_iterate_yields_dataloader_batches():
    split = data_lib.Split(np.arange(10 * 28 * 28, dtype=np.float32).reshape(10, 28, 28), np.arange(10) % 10)
    plan = data_lib.epoch_batches(10, 4)
    plain = list(data_lib.iterate(split, plan))
    assert [len(y) for _, y in plain] == [4, 4, 2]
    assert np.concatenate([y for _, y in plain]).tolist() == list(range(10))
    assert [x.shape for x, _ in plain] == [(4, 28, 28), (4, 28, 28), (2, 28, 28)]


def test_shutil_copy_of_debian_layout_is_found(tmp_path, fashion):
    # a copy of the real files in a --data-dir reads the same as the system copy
    src = data_lib.locate(None)
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    train, _ = data_lib.load_fashion_mnist(tmp_path)
    np.testing.assert_array_equal(train.labels, fashion[0].labels)
