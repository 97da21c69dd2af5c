"""``make bench``: Streampod against plain Channels, python-socketio and bare websockets.

``python -m bench.run`` starts each contender as real server processes on 127.0.0.1
(and a private redis-server for the two-server rows), drives them with one load
client (:mod:`bench.client`, :mod:`bench.workloads`), prints a table with the ratios
Streampod/baseline, Streampod/python-socketio and Streampod/ceiling, and writes
``bench/results/<date>.md``, ``.json`` and ``.png`` (:mod:`bench.report`).

The servers:

* :mod:`bench.streampod_relay` - Streampod, the relay written with the public API;
* :mod:`bench.channels_relay` - the Channels baseline (``AsyncJsonWebsocketConsumer``
  + ``group_send``);
* :mod:`bench.sio_app` - python-socketio (ASGI), rooms ``user_<id>``;
* :mod:`bench.ceiling` - the same relay on the bare ``websockets`` library.

The Django ones share :mod:`bench.settings`; Streampod serves :mod:`bench.asgi`, the
Channels baseline :mod:`bench.channels_asgi`.
"""
