"""The end-to-end settings without the re-check (``USER_RECHECK_INTERVAL = None``): only
the bus can close a revoked socket (tests/e2e/test_revocation.py, the retried revocation)."""

from tests.e2e_settings import *  # noqa: F403
from tests.e2e_settings import STREAMING

STREAMING = {**STREAMING, "USER_RECHECK_INTERVAL": None}
