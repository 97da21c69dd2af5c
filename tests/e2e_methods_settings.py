"""Settings of the servers of tests/e2e/test_methods_e2e.py and tests/browser/test_js_methods.py:
the end-to-end settings plus the ``methods`` endpoint (tests/e2e_app/methods_endpoints.py)."""

from tests.e2e_settings import *  # noqa: F403
from tests.e2e_settings import STREAMING

STREAMING = {
    **STREAMING,
    "ENDPOINTS": [
        *STREAMING.get("ENDPOINTS", []),
        "tests.e2e_app.methods_endpoints.MethodsEndpoint",
    ],
}
