"""CUBS gates from hooks (recogfast.report.gates): gate × input equals every block's output."""

import pytest
import torch

from recogfast.nn.cubs import CUBSBlock1, CUBSBlock2
from recogfast.report.gates import gate_maps


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("placement", ["parallel", "serial12", "serial21"])
def test_gate_times_input_is_output(placement, impl):
    from recogfast.models import create_model

    torch.manual_seed(0)
    model = create_model(f"cubs_resnet18_{placement}", num_classes=5, stem="small", attn_impl=impl)
    x = torch.randn(2, 3, 32, 32)
    maps = gate_maps(model, x, with_inputs=True)
    mods = dict(model.named_modules())
    names = [n for n, m in mods.items() if isinstance(m, (CUBSBlock1, CUBSBlock2))]
    assert len(names) == 16  # 8 residual blocks × (Block 1, Block 2)
    for n in names:
        g, inp, out = maps[n], maps[n + ":input"], maps[n + ":output"]
        gate = g[:, :, None, None] if isinstance(mods[n], CUBSBlock1) else g[:, None]
        torch.testing.assert_close(gate * inp, out, rtol=1e-5, atol=1e-5)


def test_viz_api():
    from recogfast import viz

    assert callable(viz.gate_maps) and callable(viz.retrieval_grid) and callable(viz.make_report)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_se_gate_times_input_is_output_and_strip(impl, tmp_path):
    from recogfast.models import create_model
    from recogfast.nn.se import SEBlock
    from recogfast.report.gates import gate_figure

    torch.manual_seed(0)
    model = create_model("se_resnet18", num_classes=5, stem="small", attn_impl=impl)
    x = torch.randn(2, 3, 32, 32)
    maps = gate_maps(model, x, with_inputs=True)
    names = [n for n, m in model.named_modules() if isinstance(m, SEBlock)]
    assert len(names) == 8
    for n in names:
        torch.testing.assert_close(maps[n][:, :, None, None] * maps[n + ":input"], maps[n + ":output"],
                                   rtol=1e-5, atol=1e-5)
    figs = gate_figure(x, {n: maps[n] for n in names}, lambda t: t.permute(1, 2, 0).clamp(0, 1).numpy())
    assert set(figs) == {"channel"} and "SE channel gates" in figs["channel"].axes[0].get_title()
