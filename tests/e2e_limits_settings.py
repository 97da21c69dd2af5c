"""Settings of an end-to-end server with a tiny inbound rate limit.

The bucket refills at one frame per 1000 seconds, so a test can spend the burst and
see ``rate_limited`` deterministically, whatever the machine's speed.
"""

from tests.e2e_settings import *  # noqa: F403
from tests.e2e_settings import STREAMING

STREAMING = {
    **STREAMING,
    "RATE_LIMIT_PER_SECOND": 0.001,
    "RATE_LIMIT_BURST": 5,
    "FLOOD_CLOSE_AFTER": 3,
}
