"""torchrun / DDP plumbing: the process environment (``env.py``), all-gather with gradient
(``gather.py``) and a CPU SyncBatchNorm (``syncbn.py``)."""
