"""Backbones that return ``(features, logits)``.

Every model built here is a :class:`FeatureClassifier`: a ``backbone`` that maps an input batch to
features ``f`` of shape ``[N, feature_dim]`` and a final linear layer ``classifier`` so that

    logits = classifier(f) = f @ W.T + b,        W: [num_classes, feature_dim]

The features are exactly the input of the final linear layer; they are what the CPCC regulariser
acts on (CPCC correlates class distances in this space with tree distances).
``forward(x)`` returns ``(features, logits)``.

Architectures (``build_model(arch, ...)``):

- ``"mlp"``: vector inputs ``(d,)``. Linear → ReLU blocks (``hidden=(256, 128)`` by default), no
  BatchNorm unless ``batch_norm=True`` (BatchNorm-free models are what DDP equivalence tests need:
  per-process batch statistics make DDP and single-process runs differ). ``hidden=()`` gives a
  linear model on the raw vectors (``feature_dim = d``), e.g. a linear probe on stored features.
- ``"cnn"``: a small conv net for images from 1×8×8 (scikit-learn digits) to 3×32×32: three
  3×3 conv blocks (``channels=(32, 64, 128)``), 2×2 max pooling after the first two, global
  average pooling; ``feature_dim = channels[-1]``. BatchNorm on by default (``batch_norm=False``
  removes it).
- ``"resnet18"``, ``"resnet34"``, ``"resnet50"``: torchvision ResNets (random init). Inputs of at
  most 64 px use the CIFAR stem (conv1 3×3 stride 1, no max pool), larger ones the standard stem
  (7×7 stride 2 + max pool); ``stem="cifar" | "imagenet"`` overrides. ``fc`` is replaced by our own
  ``classifier``; ``feature_dim`` is 512 (18/34) or 2048 (50).
- ``"vit_b_16"``, ``"vit_l_16"``: torchvision ``VisionTransformer`` with ``image_size`` taken from
  the (square) input, and the paper configurations (B/16: 12 layers, 768 hidden, 12 heads, 3072 MLP;
  L/16: 24, 1024, 16, 4096) unless overridden by ``patch_size``, ``num_layers``, ``hidden_dim``,
  ``num_heads``, ``mlp_dim``, ``dropout``, ``attention_dropout``. Features = the class token after
  the encoder's final LayerNorm; ``feature_dim = hidden_dim``.
- any other name: a ``timm`` model (``timm.create_model(name, pretrained=False, num_classes=0)``),
  when ``timm`` is installed; its pooled output is the features.

``weights=PATH`` loads a local state dict (never downloads); ``freeze`` / ``train_only`` set
``requires_grad`` by name patterns. A BatchNorm layer whose parameters are all frozen stays in eval
mode when the model is put in training mode (its running statistics stay fixed, as for a frozen
layer they should); ``frozen_bn="train"`` keeps the plain PyTorch behaviour (statistics keep
updating, as in the OT-CPCC reference code). See :func:`build_model` and :func:`set_frozen_bn_eval`.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from .freezing import _set_trainable, set_frozen_bn_eval
from .weights import load_weights

__all__ = [
    "ARCHS",
    "FeatureClassifier",
    "build_model",
    "reset_head",
]

ARCHS: tuple[str, ...] = ("mlp", "cnn", "resnet18", "resnet34", "resnet50", "vit_b_16", "vit_l_16")

_VIT_CONFIGS: dict[str, dict[str, int]] = {
    "vit_b_16": {"patch_size": 16, "num_layers": 12, "num_heads": 12, "hidden_dim": 768,
                 "mlp_dim": 3072},
    "vit_l_16": {"patch_size": 16, "num_layers": 24, "num_heads": 16, "hidden_dim": 1024,
                 "mlp_dim": 4096},
}
_CIFAR_STEM_MAX_SIDE = 64


class FeatureClassifier(nn.Module):
    """``backbone`` (x → features ``[N, feature_dim]``) followed by ``classifier`` (nn.Linear).

    ``forward(x) -> (features, logits)`` with ``logits = classifier(features)``.
    Attributes: ``arch``, ``input_shape``, ``num_classes``, ``feature_dim``, ``backbone``,
    ``classifier``. ``head_prefix`` is the name of the final layer in the architecture's native
    (torchvision / timm) state dicts, used when loading such files.
    """

    def __init__(self, arch: str, backbone: nn.Module, feature_dim: int, num_classes: int,
                 input_shape: tuple[int, ...], head_prefix: str | None = None) -> None:
        super().__init__()
        self.frozen_bn_eval = True  # see train()
        self.arch = arch
        self.input_shape = tuple(input_shape)
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.head_prefix = head_prefix
        self.backbone = backbone
        self.classifier = nn.Linear(self.feature_dim, self.num_classes)

    def train(self, mode: bool = True) -> FeatureClassifier:
        """``nn.Module.train``; then, when ``frozen_bn_eval`` is set, BatchNorm layers whose
        parameters are all frozen go back to eval mode (:func:`set_frozen_bn_eval`)."""
        super().train(mode)
        if mode and self.frozen_bn_eval:
            set_frozen_bn_eval(self)
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x ``[N, *input_shape]`` → (features ``[N, feature_dim]``, logits ``[N, num_classes]``)"""
        features = self.backbone(x)
        if features.dim() != 2:
            features = features.flatten(1)
        return features, self.classifier(features)


class MLP(nn.Module):
    """Linear(+BatchNorm)+ReLU(+Dropout) blocks; output = last hidden activation [N, hidden[-1]]."""

    def __init__(self, in_dim: int, hidden: Sequence[int], batch_norm: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for width in hidden:
            layers.append(nn.Linear(prev, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        self.layers = nn.Sequential(*layers)
        self.out_dim = prev

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SmallCNN(nn.Module):
    """Three 3×3 conv blocks (conv[-BN]-ReLU), max pool 2×2 after the first two, global avg pool."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64, 128),
                 batch_norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for i, width in enumerate(channels):
            layers.append(nn.Conv2d(prev, width, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            if i < 2 and i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            prev = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        self.features = nn.Sequential(*layers)
        self.out_dim = prev

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


# --------------------------------------------------------------------------------------------
# builders


def _take(kw: dict[str, Any], allowed: Mapping[str, Any], arch: str) -> dict[str, Any]:
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for arch {arch!r}; "
                         f"known options: {sorted(allowed)}")
    return {**allowed, **kw}


def _image_shape(arch: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"arch {arch!r} needs image inputs (C, H, W), got input_shape="
                         f"{tuple(input_shape)}; use arch='mlp' for vector inputs")
    c, h, w = (int(s) for s in input_shape)
    return c, h, w


MAX_MLP_WEIGHTS = 2**30  # 4 GiB of float32 weights


def _widths(value: Any, what: str, unit: str, example: str) -> tuple[int, ...]:
    """``value`` as a tuple of positive ints; a one-line ValueError for anything else (a bool, a
    non-integral or infinite number, a string, a non-list), where ``int()`` would truncate 2.7 to
    2, read True as 1 or overflow on 1e999."""
    items = [value] if isinstance(value, (str, bytes)) else value
    try:
        items = list(items)
    except TypeError:
        items = [None]
    ok = all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 1
             for h in items)
    if not ok:
        raise ValueError(f"{what} must be a list of positive integer {unit}, got {value!r}; "
                         f"pass e.g. --model-opt {example}")
    return tuple(int(h) for h in items)


def _build_mlp(input_shape, num_classes, kw):
    if len(input_shape) != 1:
        raise ValueError(f"arch 'mlp' needs vector inputs (d,), got input_shape="
                         f"{tuple(input_shape)}; use arch='cnn' or 'resnet18' for images")
    opts = _take(kw, {"hidden": (256, 128), "batch_norm": False, "dropout": 0.0}, "mlp")
    hidden = _widths(opts["hidden"], "mlp option hidden", "layer widths", "hidden=[256,128]")
    widths = (int(input_shape[0]), *hidden, num_classes)
    weights = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    if weights > MAX_MLP_WEIGHTS:  # refused before torch tries to allocate them
        raise ValueError(f"mlp hidden={list(hidden)} makes {weights:,} weights, over the limit of "
                         f"{MAX_MLP_WEIGHTS:,} (4 bytes each, plus gradients and optimiser state); "
                         "pass smaller widths, e.g. --model-opt hidden=[256,128]")
    try:
        dropout = float(opts["dropout"])
    except (TypeError, ValueError):
        dropout = math.nan
    if not 0 <= dropout < 1:
        raise ValueError(f"mlp option dropout must be a number in [0, 1), got {opts['dropout']!r}; "
                         "pass e.g. --model-opt dropout=0.1")
    net = MLP(int(input_shape[0]), hidden, bool(opts["batch_norm"]), dropout)
    return FeatureClassifier("mlp", net, net.out_dim, num_classes, input_shape)


def _build_cnn(input_shape, num_classes, kw):
    c, h, w = _image_shape("cnn", input_shape)
    opts = _take(kw, {"channels": (32, 64, 128), "batch_norm": True}, "cnn")
    channels = _widths(opts["channels"], "cnn option channels", "channel counts", "channels=[32,64,128]")
    if not channels:
        raise ValueError("cnn option channels must be a non-empty list of channel counts, got []; "
                         "pass e.g. --model-opt channels=[32,64,128]")
    n_pool = min(2, len(channels) - 1)
    if min(h, w) < 2**n_pool:
        raise ValueError(f"arch 'cnn' needs images of at least {2**n_pool}x{2**n_pool} px, got "
                         f"{h}x{w}; upsample the inputs or use arch='mlp' on flattened pixels")
    net = SmallCNN(c, channels, bool(opts["batch_norm"]))
    return FeatureClassifier("cnn", net, net.out_dim, num_classes, input_shape)


def _build_resnet(arch, input_shape, num_classes, kw):
    import torchvision

    c, h, w = _image_shape(arch, input_shape)
    kw = dict(kw)
    stem = kw.pop("stem", "auto")
    if stem == "auto":
        stem = "cifar" if max(h, w) <= _CIFAR_STEM_MAX_SIDE else "imagenet"
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"stem must be 'auto', 'cifar' or 'imagenet', got {stem!r}")
    try:
        net = getattr(torchvision.models, arch)(weights=None, num_classes=1, **kw)
    except TypeError as err:
        raise ValueError(f"bad option for arch {arch!r}: {err}; options are torchvision's "
                         f"ResNet arguments plus stem='auto'|'cifar'|'imagenet'") from None
    out_channels = net.conv1.out_channels
    if stem == "cifar":
        net.conv1 = nn.Conv2d(c, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif c != 3:
        net.conv1 = nn.Conv2d(c, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    if stem == "cifar" or c != 3:  # same init torchvision uses for convolutions
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return FeatureClassifier(arch, net, feature_dim, num_classes, input_shape, head_prefix="fc")


def _build_vit(arch, input_shape, num_classes, kw):
    from torchvision.models.vision_transformer import VisionTransformer

    c, h, w = _image_shape(arch, input_shape)
    opts = _take(kw, {**_VIT_CONFIGS[arch], "dropout": 0.0, "attention_dropout": 0.0}, arch)
    p = int(opts["patch_size"])
    if h != w:
        raise ValueError(f"arch {arch!r} needs square images, got {h}x{w}; resize or crop the "
                         f"inputs to a square side divisible by {p}")
    if h % p != 0:
        raise ValueError(f"arch {arch!r} needs an image side divisible by the patch size {p}, "
                         f"got {h}; resize the inputs (e.g. to {max(p, round(h / p) * p)} px) "
                         f"or pass patch_size=")
    if opts["hidden_dim"] % opts["num_heads"] != 0:
        raise ValueError(f"hidden_dim={opts['hidden_dim']} is not divisible by "
                         f"num_heads={opts['num_heads']}; choose sizes with "
                         f"hidden_dim % num_heads == 0")
    net = VisionTransformer(image_size=h, patch_size=p, num_layers=int(opts["num_layers"]),
                            num_heads=int(opts["num_heads"]), hidden_dim=int(opts["hidden_dim"]),
                            mlp_dim=int(opts["mlp_dim"]), dropout=float(opts["dropout"]),
                            attention_dropout=float(opts["attention_dropout"]), num_classes=1)
    if c != 3:
        net.conv_proj = nn.Conv2d(c, net.hidden_dim, kernel_size=p, stride=p)
        nn.init.trunc_normal_(net.conv_proj.weight, std=math.sqrt(1 / (c * p * p)))
        nn.init.zeros_(net.conv_proj.bias)
    net.heads = nn.Identity()  # forward then returns the class token after encoder + LayerNorm
    return FeatureClassifier(arch, net, net.hidden_dim, num_classes, input_shape,
                             head_prefix="heads.head")


def _build_timm(arch, input_shape, num_classes, kw):
    try:
        import timm
    except ImportError:
        raise ValueError(f"unknown arch {arch!r}; built-in archs: {list(ARCHS)}; other names need "
                         f"timm installed (pip install timm)") from None
    if arch not in timm.list_models():
        raise ValueError(f"unknown arch {arch!r}: neither built in ({list(ARCHS)}) nor a timm "
                         f"model name (see timm.list_models())")
    if len(input_shape) == 3:
        kw = {"in_chans": int(input_shape[0]), **kw}
    net = timm.create_model(arch, pretrained=False, num_classes=0, **kw)
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None) or {}
    head = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    return FeatureClassifier(arch, net, int(net.num_features), num_classes, input_shape,
                             head_prefix=head if isinstance(head, str) else None)


def build_model(arch: str, input_shape: tuple[int, ...], num_classes: int, *,
                weights: str | os.PathLike | None = None, freeze: Sequence[str] = (),
                train_only: Sequence[str] = (), frozen_bn: str = "eval",
                **kw: Any) -> FeatureClassifier:
    """Build ``arch`` for inputs of shape ``input_shape`` and ``num_classes`` classes.

    Args:
        arch: one of :data:`ARCHS` or, with timm installed, any ``timm.list_models()`` name.
        input_shape: ``(d,)`` for vectors, ``(C, H, W)`` for images.
        num_classes: rows of the final linear layer (``model.classifier``).
        weights: path of a local state dict (``torch.save(model.state_dict(), path)``; wrappers
            ``{"model": sd}`` / ``{"state_dict": sd}`` and DDP ``module.`` prefixes accepted).
            Files in the architecture's native format (a torchvision ResNet / ViT state dict, a
            timm model's) load into the backbone; their final layer (``fc`` / ``heads.head``) goes
            into ``classifier`` when its shape fits and is ignored otherwise (a fresh head for a new
            label set). A ViT position embedding of another image size is interpolated (bicubic).
        freeze: name patterns of parameters to freeze (``requires_grad=False``).
        train_only: name patterns of the only parameters left trainable; everything else is
            frozen except ``classifier``, which stays trainable (e.g. ``["layer4"]``: train only a
            ResNet's last stage and the head). Applied before ``freeze``.
        frozen_bn: ``"eval"`` (default): ``model.train()`` leaves every BatchNorm layer whose
            parameters are all frozen in eval mode, so its running statistics stay fixed;
            ``"train"``: plain PyTorch behaviour (they keep updating in training mode).
        **kw: architecture options (see the module docstring).

    Patterns are ``fnmatch`` patterns matched against parameter names, with or without the
    ``backbone.`` prefix, and as prefixes on module boundaries: ``"layer4"`` matches
    ``backbone.layer4.0.conv1.weight``; ``"backbone"`` matches the whole backbone (linear probe);
    ``"*.bias"`` every bias. A pattern that matches no parameter raises ``ValueError``.
    Freezing sets ``requires_grad``; with ``frozen_bn="eval"`` frozen BatchNorm layers also keep
    their running statistics (see :func:`set_frozen_bn_eval`).

    Returns:
        a :class:`FeatureClassifier` whose ``forward(x)`` gives ``(features [N, feature_dim],
        logits [N, num_classes])``.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or any(s < 1 for s in input_shape):
        raise ValueError(f"input_shape must be (d,) or (C, H, W) with positive sizes, "
                         f"got {input_shape}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    num_classes = int(num_classes)
    if isinstance(freeze, str) or isinstance(train_only, str):
        raise ValueError("freeze and train_only take a list of patterns, not a string; "
                         "write e.g. freeze=['backbone']")
    if frozen_bn not in ("eval", "train"):
        raise ValueError(f"frozen_bn must be 'eval' (frozen BatchNorm layers keep their running "
                         f"statistics) or 'train' (they keep updating), got {frozen_bn!r}")
    if arch == "mlp":
        model = _build_mlp(input_shape, num_classes, kw)
    elif arch == "cnn":
        model = _build_cnn(input_shape, num_classes, kw)
    elif arch in ("resnet18", "resnet34", "resnet50"):
        model = _build_resnet(arch, input_shape, num_classes, kw)
    elif arch in _VIT_CONFIGS:
        model = _build_vit(arch, input_shape, num_classes, kw)
    else:
        model = _build_timm(arch, input_shape, num_classes, kw)
    if weights is not None:
        load_weights(model, weights)
    if train_only:
        _set_trainable(model, train_only, trainable=True)
    if freeze:
        _set_trainable(model, freeze, trainable=False)
    model.frozen_bn_eval = frozen_bn == "eval"
    return model.train(model.training)


# --------------------------------------------------------------------------------------------
# heads, parameters, freezing


def reset_head(model: FeatureClassifier, num_classes: int) -> FeatureClassifier:
    """Replace ``model.classifier`` by a fresh trainable ``nn.Linear(feature_dim, num_classes)``
    (same device and dtype) for a linear probe or a new label set; returns ``model``."""
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    old = model.classifier
    model.classifier = nn.Linear(model.feature_dim, int(num_classes), device=old.weight.device,
                                 dtype=old.weight.dtype)
    model.num_classes = int(num_classes)
    return model
