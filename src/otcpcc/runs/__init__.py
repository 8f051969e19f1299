"""A run and its directory: configuration (``config.py``), what it builds (``build.py``), the run
directory (``rundir.py``), checkpoints (``checkpoint.py``) and logging (``log.py``)."""
