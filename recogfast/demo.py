"""The main job `make demo` runs (until the training engine lands): what was built, then the fused SE
gate against its reference on real ResNet-18 activations, with the measured error and speed ratio."""

from __future__ import annotations

import time

import torch
import torchvision

from recogfast import info
from recogfast.nn import SEBlock
from recogfast.ops import se_gate_reference


def _time(fn, device, repeat=10) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def _stage_activations(device, dtype, batch):
    """Activations of every ResNet-18 stage for a batch of real-looking images (torchvision's
    ResNet-18, randomly initialised: no weights can be downloaded here), channels_last."""
    net = torchvision.models.resnet18().to(device).eval().to(memory_format=torch.channels_last)
    # Smooth random images: low-frequency noise upsampled, like natural photos' spectra more than white noise.
    img = torch.nn.functional.interpolate(torch.rand(batch, 3, 14, 14), size=224, mode="bicubic", align_corners=False)
    img = ((img - 0.45) / 0.25).to(device).to(memory_format=torch.channels_last)
    acts = []
    with torch.no_grad():
        x = net.maxpool(net.relu(net.bn1(net.conv1(img))))
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            x = stage(x)
            acts.append(x.to(dtype))
    return acts


def se_comparison(device: torch.device, dtype: torch.dtype, batch: int) -> list[str]:
    rows = [f"SE block, fused vs reference on ResNet-18 stage activations ({device.type}, {str(dtype)[6:]}, B={batch}, channels_last)",
            f"{'shape':<18} {'max |err| fused':>16} {'max |err| ref':>14} {'fwd ref/fused':>14} {'fwd+bwd ref/fused':>18}"]
    for x in _stage_activations(device, dtype, batch):
        C = x.shape[1]
        fused = SEBlock(C, impl="fused").to(device)
        ref = SEBlock(C, impl="reference").to(device)
        ref.load_state_dict(fused.state_dict())
        truth = SEBlock(C, impl="reference").to(device).double()
        truth.load_state_dict(fused.state_dict())
        with torch.no_grad():
            y_true = truth(x.double())
            err_fused = (fused(x).double() - y_true).abs().max().item()
            err_ref = (ref(x).double() - y_true).abs().max().item()
        xg = x.detach().requires_grad_(True)
        gy = torch.randn_like(x)

        def fwd(m):
            with torch.no_grad():
                m(x)

        def fwd_bwd(m):
            m(xg).backward(gy)

        r_fwd = _time(lambda: fwd(ref), device) / _time(lambda: fwd(fused), device)
        r_all = _time(lambda: fwd_bwd(ref), device) / _time(lambda: fwd_bwd(fused), device)
        shape = "x".join(map(str, x.shape[1:]))
        rows.append(f"{shape:<18} {err_fused:16.2e} {err_ref:14.2e} {r_fwd:13.2f}x {r_all:17.2f}x")
    return rows


def main() -> None:
    print(info.report())
    print()
    torch.manual_seed(0)
    if torch.cuda.is_available():
        device, dtype, batch = torch.device("cuda"), torch.bfloat16, 64
    else:
        device, dtype, batch = torch.device("cpu"), torch.float32, 8
    print("\n".join(se_comparison(device, dtype, batch)))


if __name__ == "__main__":
    main()
