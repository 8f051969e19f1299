"""Backbones returning ``(features, logits)`` (``backbones.py``), local weights (``weights.py``) and
which parameters train (``freezing.py``)."""

from .backbones import ARCHS, FeatureClassifier, build_model, reset_head
from .freezing import count_parameters, set_frozen_bn_eval
from .weights import load_weights

__all__ = [
    "ARCHS",
    "FeatureClassifier",
    "build_model",
    "count_parameters",
    "load_weights",
    "reset_head",
    "set_frozen_bn_eval",
]
