"""The end-to-end settings with a short ``USER_RECHECK_INTERVAL``: the re-check is what
closes a socket whose revocation the bus could not carry (tests/e2e/test_revocation.py)."""

from tests.e2e_settings import *  # noqa: F403
from tests.e2e_settings import STREAMING

STREAMING = {**STREAMING, "USER_RECHECK_INTERVAL": 0.5}
