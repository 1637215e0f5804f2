"""Model zoo: every registered model trains a step, matches torchvision's layout and parameter counts,
loads torchvision checkpoints, and gives the same outputs with fused and reference attention."""

import pytest
import torch
import torchvision

from recogfast.models import create_model, list_models, model_info
from recogfast.nn import attention_names

ALL = list_models()
RESNET18_STAGES = [64, 64, 128, 128, 256, 256, 512, 512]  # channels at each of the 8 basic blocks


def _needs_attention(name):
    attn = model_info(name)["attention"]
    return pytest.mark.skipif(attn is not None and attn not in attention_names(), reason=f"no attention {attn!r} yet")


def _rd(c):  # SE reduced width of the models (timm's SEModule rule)
    return max(8, (c // 16 + 4) // 8 * 8)


def _params(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_names():
    assert ALL == [
        "tinynet", "resnet18", "se_resnet18", "cubs_resnet18_parallel", "cubs_resnet18_serial12",
        "cubs_resnet18_serial21", "se_resnext50_32x4d",
    ]
    with pytest.raises(ValueError, match="unknown model 'resnet19'; choose one of: tinynet, resnet18"):
        create_model("resnet19")
    with pytest.raises(ValueError, match="stem must be one of"):
        create_model("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="not both"):
        create_model("resnet18", num_classes=10, embedding_dim=512)


@pytest.mark.parametrize("name", [pytest.param(n, marks=_needs_attention(n)) for n in ALL])
def test_forward_backward_64(name):
    # the small stem keeps 64×64 maps in layer1; SE-ResNeXt-50 (2048-wide) takes the ImageNet stem to stay quick
    model = create_model(name, num_classes=7, stem="imagenet" if name == "se_resnext50_32x4d" else "small")
    x = torch.randn(2, 3, 64, 64)
    y = model(x)
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    if model_info(name)["attention"]:  # the attention modules are in the graph and learn
        attn_grads = [p.grad.abs().sum() for n, p in model.named_parameters() if ".attn." in n]
        assert attn_grads and all(torch.isfinite(g) for g in attn_grads) and sum(attn_grads) > 0


@pytest.mark.parametrize("name", [pytest.param(n, marks=_needs_attention(n)) for n in ("resnet18", "cubs_resnet18_parallel")])
def test_forward_backward_224(name):
    model = create_model(name, num_classes=5)  # imagenet stem: 56×56 maps in layer1
    y = model(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 5)
    y.sum().backward()
    assert model.conv1.weight.grad is not None


def test_resnet18_matches_torchvision_layout_and_count():
    ours, tv = create_model("resnet18"), torchvision.models.resnet18()
    assert _params(ours) == _params(tv) == 11_689_512
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in tv.state_dict().items()}


def test_attention_parameter_counts():
    base = _params(create_model("resnet18"))
    # fc1 + fc2 with biases, reduced width r = timm's make_divisible(C/16, 8): 8 at C = 64, C/16 from 128 on
    se = sum(2 * c * _rd(c) + _rd(c) + c for c in RESNET18_STAGES)
    assert _params(create_model("se_resnet18")) == base + se
    tv_x50 = _params(torchvision.models.resnext50_32x4d())
    bottleneck_out = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    assert _params(create_model("se_resnext50_32x4d")) == tv_x50 + sum(2 * c * _rd(c) + _rd(c) + c for c in bottleneck_out)
    if "cubs_parallel" in attention_names():
        # Block 1: q, k, v (C -> C/2) and out (C/2 -> C) with biases; Block 2: q, k, v (1×1 conv C -> 1)
        cubs = sum(3 * (c * (c // 2) + c // 2) + (c // 2) * c + c + 3 * (c + 1) for c in RESNET18_STAGES)
        for placement in ("parallel", "serial12", "serial21"):
            assert _params(create_model(f"cubs_resnet18_{placement}")) == base + cubs


def _save_tv(tmp_path, model, name="tv.pth"):
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return str(path)


def test_loads_torchvision_checkpoint_exactly(tmp_path):
    tv = torchvision.models.resnet18().eval()
    path = _save_tv(tmp_path, tv)
    ours = create_model("resnet18", weights=path).eval()
    rep = ours.load_report
    assert len(rep.loaded) == len(tv.state_dict()) and not rep.new and not rep.replaced and not rep.dropped
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)


def test_loads_torchvision_checkpoint_reporting_new_parts(tmp_path):
    tv = torchvision.models.resnet18()
    path = _save_tv(tmp_path, tv)
    se = create_model("se_resnet18", weights=path)
    assert se.load_report.new and all(".attn." in k for k in se.load_report.new)
    assert len(se.load_report.new) == 8 * 4  # fc1/fc2 weight+bias in 8 blocks
    torch.testing.assert_close(se.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    assert "new" in se.load_report.summary()

    small = create_model("resnet18", num_classes=10, stem="small", weights=path)
    assert sorted(small.load_report.replaced) == ["conv1.weight", "fc.bias", "fc.weight"]
    torch.testing.assert_close(small.layer4[0].downsample[0].weight, tv.layer4[0].downsample[0].weight)

    emb = create_model("resnet18", embedding_dim=512, weights=path)
    assert sorted(emb.load_report.dropped) == ["fc.bias", "fc.weight"]
    assert sorted(emb.load_report.new) == ["embedding.bias", "embedding.weight"]

    # A recogfast training checkpoint ({"model": state_dict}, DDP-prefixed) loads the same way.
    wrapped = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in tv.state_dict().items()}, "epoch": 3}, wrapped)
    again = create_model("resnet18", weights=str(wrapped))
    assert not again.load_report.new


def test_rejects_checkpoints_that_do_not_fit(tmp_path):
    path = _save_tv(tmp_path, torchvision.models.resnet34())
    with pytest.raises(ValueError, match="does not fit the model"):
        create_model("resnet18", weights=path)
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights file"):
        create_model("resnet18", weights=str(bad))
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        create_model("resnet18", weights=str(tmp_path / "missing.pth"))


def test_embedding_head():
    model = create_model("resnet18", embedding_dim=512, stem="small")
    assert not hasattr(model, "fc")
    x = torch.randn(3, 3, 32, 32)
    train_out = model(x)
    assert train_out.shape == (3, 512)
    model.eval()
    e = model(x)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    assert model.forward_features(x).shape == (3, 512)
    tiny = create_model("tinynet", embedding_dim=64).eval()
    torch.testing.assert_close(tiny(x).norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("name", [pytest.param(n, marks=_needs_attention(n)) for n in ALL if model_info(n)["attention"] and n != "se_resnext50_32x4d"])
def test_fused_and_reference_attention_agree(name):
    fused = create_model(name, num_classes=4, stem="small", attn_impl="fused").double().eval()
    ref = create_model(name, num_classes=4, stem="small", attn_impl="reference").double().eval()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-9, atol=1e-9)
    fused.train(), ref.train()
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    fused(xf).sum().backward(), ref(xr).sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-7, atol=1e-9)


def test_channels_last_bf16_autocast_matches_fp32():
    model = create_model("se_resnet18", num_classes=3, stem="small").eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)


def test_se_resnext50_loads_torchvision_resnext50(tmp_path):
    tv = torchvision.models.resnext50_32x4d()
    path = _save_tv(tmp_path, tv)
    model = create_model("se_resnext50_32x4d", weights=path)
    rep = model.load_report
    assert len(rep.loaded) == len(tv.state_dict()) and not rep.replaced and not rep.dropped
    assert len(rep.new) == 16 * 4 and all(".attn." in k for k in rep.new)  # SE in each of the 16 bottlenecks
    torch.testing.assert_close(model.layer3[5].conv2.weight, tv.layer3[5].conv2.weight)
    assert model.layer3[5].conv2.groups == 32
