"""Streampod: Serverpod-style real-time streaming and messaging for Django.

The framework lives in this package. ``streaming.protocol`` (the wire format) and
``streaming.serialization`` (typed message classes) import neither Django nor
channels, so the Python client (``streaming.client``) shares them as they are.
"""

__version__ = "0.1.0"
