"""``python -m otcpcc.bench`` (same as ``otcpcc bench``)."""

import sys

from .speed import main

if __name__ == "__main__":
    sys.exit(main())
