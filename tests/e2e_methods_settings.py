"""Settings of the servers of tests/e2e/test_methods_e2e.py and tests/browser/test_js_methods.py:
the end-to-end settings plus the ``methods`` endpoint (tests/e2e_app/methods_endpoints.py).

``STREAMPOD_E2E_RATE_LIMIT`` (frames a second, also the burst; ``0``: off) replaces the rate
limit, for the test of calls refused by it and for measurements."""

import os

from tests.e2e_settings import *  # noqa: F403
from tests.e2e_settings import STREAMING

STREAMING = {
    **STREAMING,
    "ENDPOINTS": [
        *STREAMING.get("ENDPOINTS", []),
        "tests.e2e_app.methods_endpoints.MethodsEndpoint",
    ],
}
if "STREAMPOD_E2E_RATE_LIMIT" in os.environ:
    _rate = int(os.environ["STREAMPOD_E2E_RATE_LIMIT"])
    STREAMING["RATE_LIMIT_PER_SECOND"] = _rate or None
    STREAMING["RATE_LIMIT_BURST"] = max(_rate, 1)
