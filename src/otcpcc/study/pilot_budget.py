"""The default budget of ``otcpcc pilot`` (no imports: the command line reads it for --help without
loading torch)."""

# flat CE first (the baseline of every verdict); soft labels as the hierarchy-aware baseline (of
# Bertinetto et al.'s two, the one ahead on the embedded default; --methods adds hxe)
PILOT_METHODS = ("none", "soft", "l2", "fastft")
PILOT_SEEDS = 2
PILOT_EPOCHS = 8
