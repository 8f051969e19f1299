"""``python -m otcpcc`` (also what ``torchrun -m otcpcc train ...`` runs)."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while starting up: one line, as during a command
    print("otcpcc: interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
