import pytest


@pytest.fixture(scope="session")
def small(fashion):
    """640 training samples (10 steps an epoch) and 2000 test samples (0.1 point = 2 samples)."""
    return fashion[0].take(640), fashion[1].take(2000)
