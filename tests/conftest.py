from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def pytest_configure(config):
    ARTIFACTS.mkdir(exist_ok=True)


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Message classes defined inline in a test are forgotten afterwards."""
    from streaming.testing import isolated_registry

    with isolated_registry():
        yield


@pytest.fixture(autouse=True)
def _no_socket_freezer():
    """A test that imports ``streampod_project.asgi`` runs its ``tune_gc()`` in the test
    process; its socket freezer is removed again, since what it freezes is hidden from
    ``gc.get_objects()``, by which tests count what a socket left behind. (Servers the
    tests start run it, and tests/e2e/test_gc_freezer.py checks it there.)"""
    yield
    from streaming import tuning

    tuning._freezer = None


@pytest.fixture(scope="session")
def server(django_db_setup, django_db_blocker):
    """One real daphne process (in-memory layer) for the end-to-end tests of a session."""
    from tests.support.servers import DaphneServer

    with DaphneServer() as srv:
        yield srv


@pytest.fixture
def make_user(transactional_db):
    """``await make_user("alice")``: an active user with a DRF token -> (user, "Token <key>")."""
    from asgiref.sync import sync_to_async
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    def create(username="alice", password="secret-pass-1", **extra):
        user = get_user_model().objects.create_user(username, password=password, **extra)
        token = Token.objects.create(user=user)
        return user, f"Token {token.key}"

    return sync_to_async(create)
