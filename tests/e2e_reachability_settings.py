"""Settings of the servers of tests/e2e/test_reachability.py: the end-to-end settings
plus the ``probe`` endpoint (tests/e2e_app/reachability_endpoints.py)."""

from tests.e2e_settings import *  # noqa: F403
from tests.e2e_settings import STREAMING

STREAMING = {
    **STREAMING,
    "ENDPOINTS": [
        *STREAMING.get("ENDPOINTS", []),
        "tests.e2e_app.reachability_endpoints.ProbeEndpoint",
    ],
}
