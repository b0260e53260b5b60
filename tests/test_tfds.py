"""The tensorflow-datasets source, on tfds' own mock data (no download is possible here)."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="install jaxtrain[tfds]")

from jaxtrain import data as data_lib  # noqa: E402
from jaxtrain import train as train_lib  # noqa: E402
from jaxtrain.config import Config  # noqa: E402
from jaxtrain.errors import DataError  # noqa: E402


def test_tfds_source_loads_and_trains_on_mock_data():
    config = Config(data_source="tfds", tfds_name="fashion_mnist", epochs=1, batch_size=8)
    with tfds.testing.mock_data(num_examples=24):
        train, test = data_lib.load_data(config)
    assert train.images.shape == (24, 28, 28) and train.images.dtype == np.float32
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert train.labels.dtype == np.int32 and set(train.labels.tolist()) <= set(range(10))
    assert len(test) == 24
    record = train_lib.fit(config, train, test)
    assert len(record["steps"]) == 3 and np.isfinite(record["epochs"][0]["test_loss"])


def test_unknown_tfds_dataset_is_a_clear_error():
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(DataError, match="tfds dataset 'no_such_dataset_xyz'"):
            data_lib.load_tfds("no_such_dataset_xyz")


def test_unprepared_dataset_is_an_error_not_a_download(tmp_path):
    """No mock: the dataset is not prepared in tmp_path. One clear error, and nothing fetched."""
    with pytest.raises(DataError, match="tfds dataset 'fashion_mnist' split 'train' unavailable"):
        data_lib.load_tfds("fashion_mnist", str(tmp_path))
    assert not list(tmp_path.rglob("*.gz")) and not (tmp_path / "downloads").exists()
