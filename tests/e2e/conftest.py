import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", params=["daphne", "uvicorn"])
def each_server(request, django_db_setup, django_db_blocker):
    """The project under each supported server (in-memory layer): daphne, then uvicorn.

    A module whose tests must hold under both defines ``server`` as this fixture.
    """
    from tests.support.servers import SERVERS

    with SERVERS[request.param]() as srv:
        yield srv


@pytest.fixture(scope="session")
def cluster(django_db_setup, django_db_blocker):
    """A private redis-server and two daphne servers using it: (redis, a, b)."""
    from tests.support.servers import DaphneServer, RedisServer

    with RedisServer() as rs:
        env = {"REDIS_URL": rs.url}
        with DaphneServer(env=env) as a, DaphneServer(env=env) as b:
            yield rs, a, b


@pytest.fixture
async def cluster_layer(cluster, settings):
    """This test process joins the cluster's bus (to call revoke / post_message)."""
    from streaming import messages

    rs = cluster[0]
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": rs.url, "socket_timeout": None,
                                  "socket_connect_timeout": 2}]},
        }
    }
    messages.reset_bus()
    yield
    await messages.get_bus().aclose()
    messages.reset_bus()
