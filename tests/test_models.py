"""Tests for otcpcc.models: shapes, (features, logits) contract, weights files, freezing."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from otcpcc.models import ARCHS, build_model, count_parameters, reset_head, set_frozen_bn_eval

TINY_VIT = {"num_layers": 1, "hidden_dim": 32, "num_heads": 2, "mlp_dim": 64}


def _train_step(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """One forward + backward + SGD step; checks the (features, logits) contract on the way."""
    model.train()
    captured = {}
    hook = model.classifier.register_forward_hook(lambda m, i, o: captured.update(inp=i[0]))
    features, logits = model(x)
    hook.remove()
    n = x.shape[0]
    assert features.shape == (n, model.feature_dim)
    assert logits.shape == (n, num_classes)
    assert captured["inp"] is features  # features are exactly the input of the final layer
    assert torch.equal(model.classifier(features), logits)
    y = torch.arange(n) % num_classes
    loss = nn.functional.cross_entropy(logits, y) + features.pow(2).mean()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    loss.backward()
    for name, p in model.named_parameters():  # every parameter takes part (DDP needs this)
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    opt.step()
    changed = [k for k, p in model.named_parameters() if not torch.equal(p, before[k])]
    assert "classifier.weight" in changed
    assert len(changed) > len(before) // 2


# ---------------------------------------------------------------------------------- archs


def test_archs_listed():
    assert set(ARCHS) == {"mlp", "cnn", "resnet18", "resnet34", "resnet50", "vit_b_16",
                          "vit_l_16"}


def test_mlp_forward_backward_and_parameter_count():
    torch.manual_seed(0)
    model = build_model("mlp", (20,), 5)
    _train_step(model, torch.randn(4, 20), 5)
    assert model.feature_dim == 128
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    # hand count: 20*256+256 + 256*128+128 + 128*5+5
    assert count_parameters(model) == (38917, 38917)


def test_mlp_options_and_linear_model():
    torch.manual_seed(0)
    bn = build_model("mlp", (6,), 3, hidden=(8,), batch_norm=True, dropout=0.1)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in bn.modules()) == 1
    _train_step(bn, torch.randn(4, 6), 3)
    linear = build_model("mlp", (6,), 3, hidden=())
    x = torch.randn(5, 6)
    features, logits = linear(x)
    assert linear.feature_dim == 6
    assert torch.equal(features, x)
    torch.testing.assert_close(logits, x @ linear.classifier.weight.T + linear.classifier.bias)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_cnn_forward_backward(shape):
    torch.manual_seed(0)
    model = build_model("cnn", shape, 10)
    assert 64 <= model.feature_dim <= 128
    _train_step(model, torch.randn(3, *shape), 10)
    no_bn = build_model("cnn", shape, 10, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_bn.modules())


def test_resnet18_cifar_stem():
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 32, 32), 10)
    assert model.backbone.conv1.kernel_size == (3, 3) and model.backbone.conv1.stride == (1, 1)
    assert isinstance(model.backbone.maxpool, nn.Identity)
    assert model.feature_dim == 512
    _train_step(model, torch.randn(2, 3, 32, 32), 10)


@pytest.mark.parametrize("arch,dim", [("resnet34", 512), ("resnet50", 2048)])
def test_resnet34_50_small_images(arch, dim):
    torch.manual_seed(0)
    model = build_model(arch, (3, 8, 8), 4)
    assert model.backbone.conv1.kernel_size == (3, 3)
    assert model.feature_dim == dim
    _train_step(model, torch.randn(2, 3, 8, 8), 4)


def test_resnet_standard_stem_above_64px_and_overrides():
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 72, 72), 6)
    assert model.backbone.conv1.kernel_size == (7, 7) and model.backbone.conv1.stride == (2, 2)
    assert isinstance(model.backbone.maxpool, nn.MaxPool2d)
    _train_step(model, torch.randn(2, 3, 72, 72), 6)
    assert build_model("resnet18", (3, 64, 64), 6).backbone.conv1.kernel_size == (3, 3)
    forced = build_model("resnet18", (1, 32, 32), 6, stem="imagenet")
    assert forced.backbone.conv1.kernel_size == (7, 7) and forced.backbone.conv1.in_channels == 1
    assert forced(torch.randn(2, 1, 32, 32))[1].shape == (2, 6)


def test_vit_tiny_forward_backward():
    torch.manual_seed(0)
    model = build_model("vit_b_16", (3, 32, 32), 7, **TINY_VIT)
    assert model.feature_dim == 32
    _train_step(model, torch.randn(2, 3, 32, 32), 7)
    gray = build_model("vit_l_16", (1, 32, 32), 3, **TINY_VIT)
    assert gray.backbone.conv_proj.in_channels == 1
    _train_step(gray, torch.randn(2, 1, 32, 32), 3)


def test_vit_default_configs():
    b16 = build_model("vit_b_16", (3, 32, 32), 10)  # ViT-B/16 sizes (Dosovitskiy et al.)
    enc = b16.backbone.encoder
    assert len(enc.layers) == 12 and b16.feature_dim == 768
    assert enc.layers[0].self_attention.num_heads == 12
    assert enc.layers[0].mlp[0].out_features == 3072
    assert b16.backbone.patch_size == 16 and b16.backbone.image_size == 32
    assert enc.pos_embedding.shape == (1, 1 + 2 * 2, 768)
    # ViT-L/16 sizes, checked on cheap variants (one full-width layer; 24 narrow layers)
    l16_wide = build_model("vit_l_16", (3, 32, 32), 10, num_layers=1)
    assert l16_wide.feature_dim == 1024
    assert l16_wide.backbone.encoder.layers[0].self_attention.num_heads == 16
    assert l16_wide.backbone.encoder.layers[0].mlp[0].out_features == 4096
    l16_deep = build_model("vit_l_16", (3, 32, 32), 10, hidden_dim=32, mlp_dim=32)
    assert len(l16_deep.backbone.encoder.layers) == 24


def test_vit_features_are_class_token_of_torchvision_vit(tmp_path):
    torch.manual_seed(0)
    ref = VisionTransformer(image_size=32, patch_size=16, num_classes=5, **TINY_VIT)
    nn.init.normal_(ref.heads.head.weight)  # torchvision zero-initialises the head
    nn.init.normal_(ref.heads.head.bias)
    path = tmp_path / "vit.pt"
    torch.save(ref.state_dict(), path)
    model = build_model("vit_b_16", (3, 32, 32), 5, weights=str(path), **TINY_VIT)
    ref.eval()
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features, logits = model(x)
        expected_logits = ref(x)
        ref.heads = nn.Identity()
        expected_features = ref(x)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(features, expected_features)


def test_vit_position_embedding_interpolated_for_other_image_size(tmp_path):
    torch.manual_seed(0)
    ref = VisionTransformer(image_size=32, patch_size=16, num_classes=5, **TINY_VIT)
    nn.init.normal_(ref.encoder.pos_embedding)
    path = tmp_path / "vit32.pt"
    torch.save(ref.state_dict(), path)
    model = build_model("vit_b_16", (3, 64, 64), 5, weights=path, **TINY_VIT)
    pos = ref.encoder.pos_embedding.detach()
    grid = pos[:, 1:].permute(0, 2, 1).reshape(1, 32, 2, 2)
    up = nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=True)
    expected = torch.cat([pos[:, :1], up.reshape(1, 32, 16).permute(0, 2, 1)], dim=1)
    torch.testing.assert_close(model.backbone.encoder.pos_embedding.detach(), expected)
    torch.testing.assert_close(model.backbone.conv_proj.weight, ref.conv_proj.weight)
    assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 32)


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("arch,shape,kw,words", [
    ("mlp", (3, 32, 32), {}, ["vector", "cnn"]),
    ("cnn", (64,), {}, ["(C, H, W)", "mlp"]),
    ("cnn", (1, 2, 2), {}, ["at least 4x4"]),
    ("resnet18", (64,), {}, ["(C, H, W)"]),
    ("vit_b_16", (3, 30, 30), {}, ["divisible", "16"]),
    ("vit_b_16", (3, 32, 48), {}, ["square"]),
    ("vit_b_16", (3, 32, 32), {"hidden_dim": 30, "num_heads": 4}, ["num_heads"]),
    ("vit_b_16", (3, 32, 32), {"depth": 2}, ["depth", "num_layers"]),
    ("mlp", (8,), {"width": 3}, ["width", "hidden"]),
    ("resnet18", (3, 32, 32), {"stem": "wide"}, ["stem"]),
    ("mlp", (8,), {"freeze": "backbone"}, ["list"]),
])
def test_bad_arguments_raise_valueerror(arch, shape, kw, words):
    with pytest.raises(ValueError) as err:
        build_model(arch, shape, 3, **kw)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_unknown_arch_without_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ValueError, match="resnet18.*timm"):
        build_model("resnet19", (3, 32, 32), 3)


def test_timm_names_use_timm(monkeypatch, tmp_path):
    calls = []

    class Fake(nn.Module):
        num_features = 6
        pretrained_cfg = {"classifier": "head"}

        def __init__(self, in_chans):
            super().__init__()
            self.stem = nn.Conv2d(in_chans, 6, 3)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return self.pool(self.stem(x)).flatten(1)

    def create_model(name, pretrained, num_classes, **kw):
        calls.append((name, pretrained, num_classes, kw))
        return Fake(kw["in_chans"])

    fake = types.SimpleNamespace(list_models=lambda: ["fakenet"], create_model=create_model)
    monkeypatch.setitem(sys.modules, "timm", fake)
    model = build_model("fakenet", (2, 8, 8), 4)
    assert calls == [("fakenet", False, 0, {"in_chans": 2})]
    assert model.feature_dim == 6
    _train_step(model, torch.randn(3, 2, 8, 8), 4)
    with pytest.raises(ValueError, match="timm"):
        build_model("notanet", (2, 8, 8), 4)
    # a native timm state dict: its head ("head.*") becomes our classifier
    native = Fake(2)
    sd = {**native.state_dict(), "head.weight": torch.randn(4, 6), "head.bias": torch.randn(4)}
    torch.save(sd, tmp_path / "timm.pt")
    loaded = build_model("fakenet", (2, 8, 8), 4, weights=tmp_path / "timm.pt")
    torch.testing.assert_close(loaded.classifier.weight.detach(), sd["head.weight"])
    torch.testing.assert_close(loaded.backbone.stem.weight.detach(), native.stem.weight.detach())


# ---------------------------------------------------------------------------------- weights


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "ddp"])
def test_weights_roundtrip_gives_identical_outputs(tmp_path, wrap):
    torch.manual_seed(0)
    model = build_model("cnn", (1, 8, 8), 10)
    _train_step(model, torch.randn(4, 1, 8, 8), 10)  # moves weights and BatchNorm statistics
    sd = model.state_dict()
    obj = {"plain": sd, "model": {"model": sd, "epoch": 3}, "state_dict": {"state_dict": sd},
           "ddp": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    torch.save(obj, tmp_path / "w.pt")
    torch.manual_seed(1)
    fresh = build_model("cnn", (1, 8, 8), 10, weights=str(tmp_path / "w.pt"))
    model.eval()
    fresh.eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        for a, b in zip(model(x), fresh(x), strict=True):
            assert torch.equal(a, b)


def test_torchvision_resnet18_state_dict_loads(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)  # 1000-class fc, standard stem
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    tv.eval()
    x = torch.randn(2, 3, 72, 72)

    same = build_model("resnet18", (3, 72, 72), 1000, weights=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(same(x)[1], tv(x))  # fc loaded into the classifier

    torch.manual_seed(5)
    probe = build_model("resnet18", (3, 72, 72), 10, weights=path).eval()
    assert probe.classifier.weight.shape == (10, 512)
    assert not torch.equal(probe.classifier.weight, tv.fc.weight[:10])
    tv.fc = nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(probe(x)[0], tv(x))  # backbone loaded, fc ignored


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match="nope.pt.*does not exist"):
        build_model("mlp", (4,), 2, weights=path)


def test_unreadable_or_non_state_dict_files(tmp_path):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        build_model("mlp", (4,), 2, weights=tmp_path / "text.pt")
    torch.save({"lr": 0.1, "epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match="non-tensor"):
        build_model("mlp", (4,), 2, weights=tmp_path / "meta.pt")


def test_mismatched_weights_name_keys_and_source_arch(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ValueError) as err:  # 7x7 stem file, 3x3 CIFAR-stem model
        build_model("resnet18", (3, 32, 32), 10, weights=tmp_path / "r18.pt")
    msg = str(err.value)
    assert "backbone.conv1.weight (file (64, 3, 7, 7) vs model (64, 3, 3, 3))" in msg
    assert "resnet18 (7x7 standard stem" in msg and "1000 classes" in msg

    with pytest.raises(ValueError) as err:  # resnet18 file into resnet34
        build_model("resnet34", (3, 72, 72), 10, weights=tmp_path / "r18.pt")
    msg = str(err.value)
    assert "missing keys ['backbone.layer1.2.conv1.weight'" in msg
    assert "seems to be for resnet18" in msg

    torch.save(build_model("mlp", (8,), 3, hidden=(16,)).state_dict(), tmp_path / "mlp.pt")
    with pytest.raises(ValueError) as err:
        build_model("mlp", (8,), 3, weights=tmp_path / "mlp.pt")
    msg = str(err.value)
    assert "backbone.layers.0.weight (file (16, 8) vs model (256, 8))" in msg
    assert "mlp (input dim 8, hidden (16,), 3 classes)" in msg
    assert "\n" not in msg


# ---------------------------------------------------------------------------------- freezing


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_train_only_layer4_keeps_classifier_trainable():
    model = build_model("resnet18", (3, 32, 32), 10, train_only=["layer4"])
    names = [n for n, _ in model.named_parameters()]
    expected = {n for n in names if n.startswith(("backbone.layer4.", "classifier."))}
    assert _trainable(model) == expected
    layer4 = sum(p.numel() for p in torchvision.models.resnet18().layer4.parameters())
    assert count_parameters(model)[1] == layer4 + 512 * 10 + 10


def test_freeze_patterns():
    model = build_model("resnet18", (3, 32, 32), 10, freeze=["backbone"])
    assert _trainable(model) == {"classifier.weight", "classifier.bias"}
    # prefix match on module boundaries: the stem's conv1, not layer*.conv1
    stem = build_model("resnet18", (3, 32, 32), 10, freeze=["conv1"])
    assert {n for n, p in stem.named_parameters() if not p.requires_grad} == {
        "backbone.conv1.weight"}
    mlp = build_model("mlp", (4,), 2, hidden=(3, 3), freeze=["*.bias"])
    assert _trainable(mlp) == {"backbone.layers.0.weight", "backbone.layers.2.weight",
                               "classifier.weight"}
    both = build_model("mlp", (4,), 2, hidden=(3, 3), train_only=["layers.2"],
                       freeze=["classifier.bias"])
    assert _trainable(both) == {"backbone.layers.2.weight", "backbone.layers.2.bias",
                                "classifier.weight"}


@pytest.mark.parametrize("kw", [{"freeze": ["layer9"]}, {"train_only": ["head*"]}])
def test_patterns_matching_nothing_raise(kw):
    with pytest.raises(ValueError, match="match no parameter"):
        build_model("mlp", (4,), 2, **kw)


def test_reset_head_and_count_parameters():
    model = build_model("mlp", (4,), 2, hidden=(3,), freeze=["*"])
    assert count_parameters(model) == (4 * 3 + 3 + 3 * 2 + 2, 0)
    x = torch.randn(5, 4)
    before = model(x)[0]
    reset_head(model, 7)
    features, logits = model(x)
    assert logits.shape == (5, 7) and model.num_classes == 7
    assert torch.equal(features, before)
    assert count_parameters(model) == (4 * 3 + 3 + 3 * 7 + 7, 3 * 7 + 7)
    with torch.no_grad():
        assert math.isclose(float(logits.sum()), float(model.classifier(features).sum()))


def _bn_stats(model):
    return {n: (m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
            for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def test_frozen_batchnorm_keeps_running_statistics_in_train_mode():
    torch.manual_seed(0)
    model = build_model("cnn", (3, 8, 8), 4, channels=(4, 6, 8),
                        train_only=["features.4", "features.5"])
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    # features.1 / .5 / .9 are the BatchNorms of conv blocks 0 / 1 / 2; only block 1 is trainable
    assert sorted(bns) == ["backbone.features.1", "backbone.features.5", "backbone.features.9"]
    model.train()
    assert model.training
    assert [bns[n].training for n in sorted(bns)] == [False, True, False]
    before = _bn_stats(model)
    model(torch.randn(6, 3, 8, 8))
    after = _bn_stats(model)
    for name in ("backbone.features.1", "backbone.features.9"):  # frozen: unchanged
        assert torch.equal(before[name][0], after[name][0]) and after[name][2] == 0
    assert not torch.equal(before["backbone.features.5"][0], after["backbone.features.5"][0])
    assert after["backbone.features.5"][2] == 1
    # eval() still puts everything in eval mode; train() again re-applies the rule
    model.eval()
    assert not any(m.training for m in bns.values())
    model.train()
    assert [bns[n].training for n in sorted(bns)] == [False, True, False]


def test_frozen_batchnorm_train_option_and_linear_probe():
    probe = build_model("resnet18", (3, 32, 32), 5, freeze=["backbone"])
    probe.train()
    assert not any(m.training for m in probe.modules() if isinstance(m, nn.BatchNorm2d))
    assert probe.classifier.training
    plain = build_model("resnet18", (3, 32, 32), 5, freeze=["backbone"], frozen_bn="train")
    plain.train()
    assert all(m.training for m in plain.modules() if isinstance(m, nn.BatchNorm2d))
    assert set_frozen_bn_eval(plain) == [n for n, m in plain.named_modules()
                                         if isinstance(m, nn.BatchNorm2d)]
    with pytest.raises(ValueError, match="frozen_bn must be 'eval'"):
        build_model("mlp", (4,), 2, frozen_bn="fixed")


@pytest.mark.parametrize("hidden", [[math.inf], [2.7], [True], [0], [-3], "16", [16, None]])
def test_mlp_hidden_widths_must_be_positive_integers(hidden):
    """int() would truncate 2.7 to width 2, read True as 1 and overflow on inf (1e999 in YAML)."""
    with pytest.raises(ValueError, match=r"^mlp option hidden must be a list of positive integer "
                                         r"layer widths, got .*; pass e\.g\. --model-opt hidden="):
        build_model("mlp", (5,), 3, hidden=hidden)


@pytest.mark.parametrize("channels", [[], [8.5], [False, 8]])
def test_cnn_channels_must_be_positive_integers(channels):
    with pytest.raises(ValueError, match=r"^cnn option channels must be a (non-empty )?list of "
                                         r"(positive integer )?channel counts, got"):
        build_model("cnn", (3, 8, 8), 3, channels=channels)


def test_cli_mlp_hidden_1e999_is_one_line(tmp_path, capsys):
    from otcpcc.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: synthetic\ndata_options: {train_per_class: 4, test_per_class: 2}\n"
                   "model_options: {hidden: [1e999]}\nepochs: 1\ndevice: cpu\n")
    for args in (["--config", str(cfg)], ["--data", "synthetic", "--model-opt", "hidden=[1e999]"]):
        code = main(["train", *args, "--no-progress", "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("otcpcc: error: mlp option hidden must be") and "\n" not in err
        assert not (tmp_path / "r" / "config.json").exists()
