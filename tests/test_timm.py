"""timm drop-in: every attention module takes timm's ``attn_layer`` calling convention, a timm ResNet
with a CUBS block trains, timm's SE weights (``SEModule`` widths, ``seresnet18``) load for real, and
timm's ``zero_init_last`` leaves the attention without gradient exactly at the first step."""

import pytest
import torch

from recogfast.models import create_model, from_timm
from recogfast.nn import CUBSBlock, CUBSBlock1, CUBSBlock2, SEBlock, attention_names, create_attention

timm = pytest.importorskip("timm", reason="needs timm (a test dependency: make installs it)")


@pytest.mark.parametrize("layer", [SEBlock, SEBlock.timm, CUBSBlock1, CUBSBlock2, CUBSBlock]
                         + [create_attention(n) for n in attention_names()], ids=lambda f: getattr(f, "__name__", "partial"))
def test_timm_calling_convention(layer):
    m = layer(32, device=None, dtype=None)
    assert m(torch.randn(2, 32, 5, 5)).shape == (2, 32, 5, 5)
    m = layer(32, device="meta", dtype=torch.float64)
    assert all(p.device.type == "meta" and p.dtype == torch.float64 for p in m.parameters())
    assert timm.layers.create_attn(layer, 16) is not None  # timm's own factory accepts it


def test_timm_options_checked():
    SEBlock(16, act_layer=torch.nn.ReLU, gate_layer="sigmoid", bias=True, norm_layer=None, add_maxpool=False)
    with pytest.raises(ValueError, match="act_layer"):
        SEBlock(16, act_layer=torch.nn.GELU)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        SEBlock(16, colour="red")


@pytest.mark.parametrize("channels", [8, 16, 48, 64, 96, 128, 200, 512])
def test_se_block_loads_timm_se_module(channels):
    ref = timm.layers.SEModule(channels).double()
    block = SEBlock.timm(channels).double()
    assert block.rd_channels == ref.fc1.out_channels
    assert create_attention("se", channels).rd_channels == ref.fc1.out_channels
    block.load_state_dict(ref.state_dict())
    x = torch.randn(2, channels, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(block(x), ref(x))
    assert SEBlock(channels, rd_channels=ref.fc1.out_channels).rd_channels == ref.fc1.out_channels


def test_se_resnet18_loads_timm_seresnet18(tmp_path):
    ref = timm.create_model("seresnet18", pretrained=False).eval()  # random init: no download
    path = tmp_path / "seresnet18.pth"
    torch.save(ref.state_dict(), path)
    model = create_model("se_resnet18", weights=str(path)).eval()
    rep = model.load_report
    assert len(rep.loaded) == len(ref.state_dict()) and not rep.new and not rep.replaced and not rep.dropped
    strict = create_model("se_resnet18").eval()
    strict.load_state_dict(from_timm(ref.state_dict()))  # strict: every name and shape matches
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
        torch.testing.assert_close(strict(x), ref(x), rtol=0, atol=0)


@pytest.mark.parametrize("placement", ["parallel", "serial12", "serial21"])
def test_timm_resnet18_with_cubs_equals_cubs_resnet18(placement):
    tm = timm.create_model("resnet18", num_classes=5, block_args=dict(attn_layer=create_attention(f"cubs_{placement}")))
    ours = create_model(f"cubs_resnet18_{placement}", num_classes=5)
    ours.load_state_dict(from_timm(tm.state_dict()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), tm.eval()(x), rtol=0, atol=0)


def _step(model, opt, x, y):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if ".se." in n}
    opt.step()
    return loss, grads


def test_timm_resnet18_with_cubs_block_trains():
    """README's spelling. zero_init_last=False: the attention learns from the first step."""
    model = timm.create_model("resnet18", num_classes=5, zero_init_last=False, block_args=dict(attn_layer=CUBSBlock))
    assert isinstance(model.layer1[0].se, CUBSBlock) and model.layer1[0].se.placement == "serial12"
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".se." in n}
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 5, (4,))  # layer4 maps 2×2 (at 1×1 Block 2's q, k are inert)
    loss, grads = _step(model, opt, x, y)
    assert torch.isfinite(loss) and len(grads) == 8 * 14  # 8 blocks × (block1: 8 tensors, block2: 6)
    assert all(torch.isfinite(g).all() for g in grads.values()) and sum(g.abs().sum() for g in grads.values()) > 0
    # every attention weight moved (the k biases need not: softmax_j(q_i (k_j + c)) does not depend on c)
    weights = [n for n in before if n.endswith(".weight")]
    assert weights and all(not torch.equal(model.get_parameter(n), before[n]) for n in weights)


@pytest.mark.parametrize("layer", [CUBSBlock, SEBlock.timm])
def test_zero_init_last_leaves_attention_without_gradient_at_step_1(layer):
    """timm's default zero_init_last zeroes each block's last BN weight (bias is 0 too): the attention's
    input is exactly 0, so y = x·gate(x) = 0 and every attention gradient is exactly 0 at step 1. The BN
    weight does get a gradient (through the gate), so from step 2 on the attention learns."""
    model = timm.create_model("resnet18", num_classes=5, block_args=dict(attn_layer=layer))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    _, g1 = _step(model, opt, x, y)
    assert all(torch.count_nonzero(g) == 0 for g in g1.values())
    assert model.layer1[0].bn2.weight.abs().sum() > 0  # moved off zero by step 1
    _, g2 = _step(model, opt, x, y)
    assert sum(g.abs().sum() for g in g2.values()) > 0
