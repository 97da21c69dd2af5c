"""Settings of the servers of tests/e2e/test_graceful.py: the end-to-end settings plus
the ``linger`` endpoint defined in that test (a ``stream_closed`` that takes a while)."""

from tests.e2e_settings import *  # noqa: F403
from tests.e2e_settings import STREAMING

STREAMING = {
    **STREAMING,
    "ENDPOINTS": [
        *STREAMING.get("ENDPOINTS", []),
        "tests.e2e.test_graceful.LingerEndpoint",
    ],
}
