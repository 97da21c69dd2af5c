"""Settings of an end-to-end server with a small send queue (16 frames).

A client that stops reading fills the server's write buffer, then this queue: the
server must close it with 4013 instead of buffering without limit.
"""

from tests.e2e_settings import *  # noqa: F403
from tests.e2e_settings import STREAMING

STREAMING = {**STREAMING, "SEND_QUEUE_LIMIT": 16}
