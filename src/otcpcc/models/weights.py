"""Load local pretrained weights (never downloads) into a :class:`FeatureClassifier`, with errors
that name the mismatching keys."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


def _unwrap(obj: Any, path: str) -> dict[str, Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping):
            inner = [k for k in ("state_dict", "model", "model_state_dict") if k in obj
                     and isinstance(obj[k], Mapping)]
            if inner and not all(isinstance(v, Tensor) for v in obj.values()):
                obj = obj[inner[0]]
                continue
        break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"weights file {path!r} does not hold a state dict; save one with "
                         f"torch.save(model.state_dict(), path)")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"weights file {path!r} holds non-tensor entries {bad[:3]} where a state "
                         f"dict was expected; save model.state_dict() (optionally under 'model')")
    sd = dict(obj)
    for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _describe(sd: Mapping[str, Tensor]) -> str:
    """A guess of which architecture a (native-format) state dict belongs to."""
    keys = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
    head = keys.get("classifier.weight", keys.get("fc.weight", keys.get("heads.head.weight")))
    classes = f", {head.shape[0]} classes" if head is not None and head.dim() == 2 else ""
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        blocks = [len({m.group(1) for k in keys if (m := re.match(rf"layer{i}\.(\d+)\.", k))})
                  for i in range(1, 5)]
        bottleneck = any(k.endswith("conv3.weight") for k in keys)
        names = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34",
                 (True, (3, 4, 6, 3)): "resnet50", (True, (3, 4, 23, 3)): "resnet101",
                 (True, (3, 8, 36, 3)): "resnet152"}
        name = names.get((bottleneck, tuple(blocks)), f"a ResNet with blocks {blocks}")
        w = keys["conv1.weight"]
        k = w.shape[-1]
        stem = ("CIFAR 3x3 stem, inputs <= 64 px or stem='cifar'" if k == 3
                else f"{k}x{k} standard stem, inputs > 64 px or stem='imagenet'")
        return f"{name} ({stem}, {w.shape[1]} input channels{classes})"
    if "encoder.pos_embedding" in keys and "conv_proj.weight" in keys:
        layers = len({m.group(1) for k in keys
                      if (m := re.match(r"encoder\.layers\.encoder_layer_(\d+)\.", k))})
        proj = keys["conv_proj.weight"]
        hidden, patch = proj.shape[0], proj.shape[-1]
        side = math.isqrt(keys["encoder.pos_embedding"].shape[1] - 1) * patch
        cfg = {(12, 768, 16): "vit_b_16", (24, 1024, 16): "vit_l_16"}
        name = cfg.get((layers, hidden, patch), "a custom ViT")
        return (f"{name} ({layers} layers, hidden {hidden}, patch {patch}, {side} px, "
                f"{proj.shape[1]} input channels{classes})")
    lin = [k for k in keys if re.fullmatch(r"layers\.\d+\.weight", k) and keys[k].dim() == 2]
    if lin:
        dims = [keys[lin[0]].shape[1]] + [keys[k].shape[0] for k in lin]
        return f"mlp (input dim {dims[0]}, hidden {tuple(dims[1:])}{classes})"
    conv = [k for k in keys if re.fullmatch(r"features\.\d+\.weight", k) and keys[k].dim() == 4]
    if conv:
        chans = tuple(keys[k].shape[0] for k in conv)
        return f"cnn (channels {chans}, {keys[conv[0]].shape[1]} input channels{classes})"
    return f"an unrecognised architecture (first keys {list(keys)[:3]})"


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local state dict into ``model`` (see ``weights`` in :func:`build_model`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"weights file {path!r} does not exist; pass the path of a saved state "
                         f"dict (torch.save(model.state_dict(), path))")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is an input problem
        raise ValueError(f"weights file {path!r} could not be read as a state dict "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                         f"save one with torch.save(model.state_dict(), path)") from None
    sd = _unwrap(obj, path)
    file_sd = sd
    if not all(k.startswith(("backbone.", "classifier.")) for k in sd):
        # native torchvision / timm keys: the final layer becomes our classifier
        head = model.head_prefix
        native = sd
        if "encoder.pos_embedding" in sd and hasattr(getattr(model.backbone, "encoder", None), "pos_embedding"):
            own = model.backbone.encoder.pos_embedding
            if sd["encoder.pos_embedding"].shape != own.shape and \
                    sd["encoder.pos_embedding"].shape[-1] == own.shape[-1]:
                from torchvision.models.vision_transformer import interpolate_embeddings

                try:
                    native = dict(interpolate_embeddings(model.backbone.image_size,
                                                         model.backbone.patch_size, dict(sd)))
                except ValueError:
                    native = sd  # not a square grid: reported as a shape mismatch below
        sd = {(f"classifier.{k[len(head) + 1:]}" if head and k.startswith(head + ".")
               else f"backbone.{k}"): v for k, v in native.items()}
    expected = model.state_dict()
    for k in ("classifier.weight", "classifier.bias"):  # a head for another label set
        if k in sd and k in expected and sd[k].shape != expected[k].shape:
            sd = {kk: v for kk, v in sd.items() if not kk.startswith("classifier.")}
            break
    missing = [k for k in expected if k not in sd and not k.startswith("classifier.")
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [f"{k} (file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)})"
                  for k in sd if k in expected and sd[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{label} {items[:3]}{' ...' if len(items) > 3 else ''}"
                 for label, items in (("shape mismatches", mismatched),
                                      ("missing keys", missing), ("unexpected keys", unexpected))
                 if items]
        raise ValueError(f"weights file {path!r} does not fit arch {model.arch!r} with input_shape "
                         f"{model.input_shape}: {'; '.join(parts)}; the file seems to be for "
                         f"{_describe(file_sd)}")
    model.load_state_dict(sd, strict=False)
    return model
