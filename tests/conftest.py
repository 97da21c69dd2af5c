import pytest


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Message classes defined inline in a test are forgotten afterwards."""
    from streaming.testing import isolated_registry

    with isolated_registry():
        yield
