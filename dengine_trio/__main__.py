"""``python -m dengine_trio`` and the ``dengine-trio`` console script: run one node."""

from __future__ import annotations

import sys

from dengine_trio.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
