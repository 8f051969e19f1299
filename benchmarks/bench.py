"""Run the speed benchmark from a source checkout: ``python benchmarks/bench.py [flags]``.

Same as ``otcpcc bench``; see ``otcpcc.bench`` for the flags.
"""

import sys
from pathlib import Path

try:
    from otcpcc.bench.speed import main
except ImportError:  # not installed: use the checkout's src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from otcpcc.bench.speed import main

if __name__ == "__main__":
    raise SystemExit(main())
