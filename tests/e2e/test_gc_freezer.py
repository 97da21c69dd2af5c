"""``tune_gc()``'s socket freezer in real servers, read from ``/metrics`` as an operator
would: the objects of open sockets are frozen in batches (out of every collection's
scans), and once the sockets have closed they are gone from the frozen set again, under
uvicorn (whose sockets leave no cycles: reference counting frees them) and under daphne
(whose per-connection objects leave cycles: the freezer's full collection frees them).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from streaming.tuning import FREEZE_BATCH
from tests.e2e.redis_support import connect
from tests.e2e.test_metrics_e2e import get, samples, wait_for
from tests.support.servers import SERVERS

SOCKETS = 2 * FREEZE_BATCH + 200


@pytest.fixture(params=["uvicorn", "daphne"])
def server(request, django_db_setup):
    with SERVERS[request.param]() as srv:
        yield srv


async def test_open_sockets_are_frozen_and_closed_ones_leave_the_frozen_set(server):
    before = await samples(server)
    frozen_at_start = get(before, "streampod_gc_frozen_objects")
    assert frozen_at_start > 1000  # tune_gc() froze start-up's objects
    async with contextlib.AsyncExitStack() as stack:
        opening = asyncio.Semaphore(100)

        async def open_one():
            async with opening:
                return await stack.enter_async_context(connect(server.ws_url))

        await asyncio.gather(*(open_one() for _ in range(SOCKETS)))
        await wait_for(server, "streampod_connections", SOCKETS)
        held = await samples(server)
        assert get(held, "streampod_gc_socket_freezes_total") == 2
        # The sockets of two batches are frozen: at least 30 objects each (about 60
        # under uvicorn), none of which a collection scans while they stay open.
        frozen_sockets = get(held, "streampod_gc_frozen_objects") - frozen_at_start
        assert frozen_sockets > 30 * 2 * FREEZE_BATCH, frozen_sockets
    await wait_for(server, "streampod_connections", 0)
    after = await samples(server)
    # As many closes as the most sockets ever open: the full collection ran (unfreezing
    # everything), and nothing the closed sockets left (daphne's cycles) is frozen.
    assert get(after, "streampod_gc_full_collections_total") == 1
    assert get(after, "streampod_gc_frozen_objects") < frozen_at_start
