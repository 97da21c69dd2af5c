"""Settings of the servers of tests/e2e/test_abuse_memory.py: the end-to-end settings
(every limit at its default) plus the ``oversize`` endpoint
(tests/e2e_app/abuse_endpoints.py), with the byte rate off.

The byte rate (``RATE_LIMIT_BYTES_PER_SECOND``) alone would refuse most of these
attacks before they reach the defences under test (frames held behind an ``auth``,
their parsed size, the send queue's bytes, short error frames); with it off, each of
those must hold by itself, as it would for a deployment that raises the byte rate.
tests/test_abuse_limits.py tests the byte rate."""

from tests.e2e_settings import *  # noqa: F403
from tests.e2e_settings import STREAMING

STREAMING = {
    **STREAMING,
    "ENDPOINTS": [
        *STREAMING.get("ENDPOINTS", []),
        "tests.e2e_app.abuse_endpoints.OversizeEndpoint",
    ],
    "RATE_LIMIT_BYTES_PER_SECOND": None,
}
