"""``python -m streaming.client``: see :mod:`streaming.client.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
