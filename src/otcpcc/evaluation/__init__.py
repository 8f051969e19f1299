"""Inference on a split (``inference.py``), the evaluation protocol on a run (``evaluate.py``) and
the multi-modality diagnosis (``diagnose.py``)."""
