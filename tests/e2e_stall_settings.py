"""The end-to-end settings with a short ``BUS_STALL_TIMEOUT``: the bus gives up on a
subscription whose heartbeats stopped coming back within seconds
(tests/e2e/test_bus_stall.py)."""

from tests.e2e_settings import *  # noqa: F403
from tests.e2e_settings import STREAMING

STREAMING = {**STREAMING, "BUS_HEARTBEAT_INTERVAL": 0.5, "BUS_STALL_TIMEOUT": 3.0}
