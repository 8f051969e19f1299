"""The training loop (``loop.py``), one step (``step.py``), objective/optimiser/schedule
(``optim.py``), exact resume and Ctrl-C (``control.py``)."""

from .control import TrainingInterrupted
from .loop import train

__all__ = ["TrainingInterrupted", "train"]
