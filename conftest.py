"""Fixtures shared by tests/ and parity_tests/."""

import pytest

from jaxtrain import data as data_lib


@pytest.fixture(scope="session")
def fashion():
    """The real FashionMNIST (train, test). Missing data fails the test with the loader's message."""
    try:
        return data_lib.load_fashion_mnist()
    except data_lib.DataError as e:
        pytest.fail(f"real FashionMNIST is needed for this test: {e}")


@pytest.fixture(autouse=True)
def float32_jax():
    """Each test starts in float32 mode (a float64 test may have switched x64 on)."""
    from jaxtrain.train import configure_jax

    configure_jax("float32")
    yield
