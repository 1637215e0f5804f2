"""The flash MS-loss path on CUDA (issue 26; csrc/ops/cuda/ms_loss_flash.cuh): the path rule of
recogfast.dispatch.ms_loss_path (a CPU test), and on a GPU the flash kernels against the CPU kernel and the
tiles path up to B = 65536, determinism, and the path chosen by RECOGFAST_MS_LOSS_PATH / allow_tf32."""

import pytest
import torch

from recogfast.dispatch import MS_FLASH_BY_DEFAULT
from test_ms_loss import CUDA_ONLY, MINING, m_per_class



# "auto" keeps the tiles path until a GPU run has cross-checked the flash kernels (dispatch.MS_FLASH_BY_DEFAULT)
_AUTO = "flash" if MS_FLASH_BY_DEFAULT else "tiles"


@pytest.mark.parametrize("env,cap,dtype,tf32,expect", [
    (None, (9, 0), torch.bfloat16, False, _AUTO), ("auto", (8, 0), torch.float16, False, _AUTO),
    ("auto", (9, 0), torch.float32, False, _AUTO), ("auto", (9, 0), torch.float32, True, _AUTO),
    ("auto", (9, 0), torch.float64, True, "tiles"), ("auto", (7, 5), torch.bfloat16, False, "tiles"),
    ("auto", (7, 5), torch.float32, True, "tiles"), ("tiles", (9, 0), torch.bfloat16, False, "tiles"),
    ("tiles", (9, 0), torch.float32, True, "tiles"), ("flash", (9, 0), torch.float32, True, "flash"),
    ("flash", (8, 6), torch.float16, False, "flash"), ("flash", (9, 0), torch.float32, False, "flash"),
    ("flash", (7, 5), torch.bfloat16, False, "error"), ("flash", (9, 0), torch.float64, True, "error"),
    ("bogus", (9, 0), torch.bfloat16, False, "value error"),
])
def test_ms_loss_path_rule_follows_the_env_var(monkeypatch, env, cap, dtype, tf32, expect):
    """recogfast.dispatch.ms_loss_path mirrors csrc/ops/cuda/ms_loss_flash_host.cuh use_flash (CPU-only check of
    the rule; the CUDA test below checks that the op agrees)."""
    from recogfast import dispatch
    if env is None:
        monkeypatch.delenv("RECOGFAST_MS_LOSS_PATH", raising=False)
    else:
        monkeypatch.setenv("RECOGFAST_MS_LOSS_PATH", env)
    assert dispatch.ms_loss_path(dtype, "cpu") == "cpu"
    if expect == "error":
        with pytest.raises(RuntimeError, match=r"RECOGFAST_MS_LOSS_PATH=flash needs an sm_80\+ GPU"):
            dispatch.ms_loss_path(dtype, "cuda", capability=cap, allow_tf32=tf32)
    elif expect == "value error":
        with pytest.raises(ValueError, match="must be auto, flash or tiles, got 'bogus'"):
            dispatch.ms_loss_path(dtype, "cuda", capability=cap, allow_tf32=tf32)
    else:
        assert dispatch.ms_loss_path(dtype, "cuda", capability=cap, allow_tf32=tf32) == expect


@pytest.mark.parametrize("setting,allowed", [
    ("torch.backends.cuda.matmul.fp32_precision = 'tf32'", True),
    ("torch.backends.fp32_precision = 'tf32'", True),
    ("torch.backends.fp32_precision = 'tf32'; torch.backends.cuda.matmul.fp32_precision = 'ieee'", False),
    ("torch.set_float32_matmul_precision('high')", True),
    ("pass", False),
])
def test_tf32_setting_read_through_either_api(setting, allowed):
    """recogfast.dispatch.tf32_matmul_allowed (the op's allow_tf32, the path rule) follows torch's new TF32 API and
    the legacy one; reading the legacy flag after the new API set TF32 raises in torch 2.14, so it must not be read
    first (a fresh process each: torch remembers which API set the flag)."""
    import os
    import subprocess
    import sys
    code = (f"import torch\n{setting}\nfrom recogfast import dispatch\n"
            "print(dispatch.tf32_matmul_allowed(), dispatch.ms_loss_path(torch.float32, 'cuda', capability=(9, 0)))")
    env = {k: v for k, v in os.environ.items() if k != "RECOGFAST_MS_LOSS_PATH"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    got, path = res.stdout.split()
    assert got == str(allowed) and path in ("tiles", "flash"), res.stdout


def test_ms_loss_path_tuned_fp32_entry_is_tf32s(monkeypatch):
    """The tuned table's fp32 "flash" entry comes from the TF32 sweep (tools/tuned_table.py times tf32 groups): it
    turns flash on for fp32 with TF32 allowed, not for fp32 without (3xTF32, which that sweep did not time)."""
    from recogfast import dispatch
    monkeypatch.delenv("RECOGFAST_MS_LOSS_PATH", raising=False)
    monkeypatch.setattr(dispatch, "tuned", lambda knob, cap, dtype: "flash" if knob == "ms_loss_path" else None)
    assert dispatch.ms_loss_path(torch.float32, "cuda", capability=(9, 0), allow_tf32=True) == "flash"
    assert dispatch.ms_loss_path(torch.float32, "cuda", capability=(9, 0), allow_tf32=False) == _AUTO
    assert dispatch.ms_loss_path(torch.bfloat16, "cuda", capability=(9, 0), allow_tf32=False) == "flash"


def _fwd_bwd(e, labels, ref=None, ref_labels=None, mining="ms", epsilon=0.1, allow_tf32=False):
    leaves = [e.detach().clone().requires_grad_(True)]
    if ref is not None:
        leaves.append(ref.detach().clone().requires_grad_(True))
    out = torch.ops.recogfast.ms_loss(leaves[0], labels, leaves[1] if ref is not None else None, ref_labels, 2.0,
                                      50.0, 0.5, epsilon, mining, False, allow_tf32)
    grads = torch.autograd.grad(out[0], leaves)
    return [out[0].detach(), out[1], out[2]] + [g.detach() for g in grads]


def _assert_close_rel(a, b, rtol, what):
    """max |a - b| <= rtol * max |b| over the finite values of b (equal values, infinities included, count as
    0 error; gradients: relative to the call's largest value)."""
    a, b = a.double().cpu(), b.double().cpu()
    if not b.numel():
        return
    scale = b[b.isfinite()].abs().max().item() if b.isfinite().any() else 0.0
    err = torch.where(a == b, torch.zeros_like(a), (a - b).abs()).max().item()
    assert err <= rtol * (scale + 1e-6), f"{what}: err {err:.3g}, scale {scale:.3g}"


@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,D,R", [(257, 64, 0), (4099, 130, 0), (1000, 7, 333), (65536, 32, 0)])
@pytest.mark.parametrize("mining", MINING)
def test_cuda_flash_matches_cpu_kernel_and_tiles(device, dtype, B, D, R, mining, monkeypatch):
    """The flash kernels (sm_80+) against the CPU kernel on the same bf16/fp16 inputs (up to B = 65536) and
    against the tiles path: loss and stats of the forward op; hard_idx up to near-ties (the three sum S in
    different orders: two hardest candidates within fp32 rounding may swap); the gradients of each backward op
    given the flash forward's stats and hard_idx (so the same mining decisions), reference rows with gradient
    included."""
    if torch.cuda.get_device_capability(device)[0] < 8:
        pytest.skip("the flash path needs sm_80+")
    if B == 65536 and mining != "ms":
        pytest.skip("one mining mode at B = 65536 (the CPU kernel takes minutes)")
    torch.manual_seed(B + D)
    e = torch.randn(B, D, dtype=dtype)
    labels = m_per_class(B, 4)
    ref = torch.randn(R, D, dtype=dtype) if R else None
    ref_labels = torch.randint(0, B // 4, (R,)) if R else None
    params = (2.0, 50.0, 0.5, 0.1, mining)

    def run(dev, path, saved=None):
        monkeypatch.setenv("RECOGFAST_MS_LOSS_PATH", path)
        mv = (lambda t: None if t is None else t.to(dev))
        args = (mv(e), mv(labels), mv(ref), mv(ref_labels))
        loss, stats, hard_idx, _ = torch.ops.recogfast.ms_loss(*args, *params)
        st, hi = (stats, hard_idx) if saved is None else (mv(saved[0]), mv(saved[1]))
        grads = torch.ops.recogfast._ms_loss_backward(torch.tensor(0.7, dtype=dtype, device=dev), *args, st, hi,
                                                      torch.zeros(0, device=dev), *params, R > 0)
        return loss, stats, hard_idx, grads

    flash = run(device, "flash")
    saved = (flash[1].cpu(), flash[2].cpu())
    for name, other in (("cpu", run("cpu", "auto", saved)), ("tiles", run(device, "tiles", saved))):
        _assert_close_rel(flash[0], other[0], 1e-2, f"loss vs {name}")
        _assert_close_rel(flash[1], other[1], 1e-3, f"stats vs {name}")
        same = (flash[2].cpu() == other[2].cpu()).float().mean().item()
        assert same >= 0.999, f"hard_idx vs {name}: {same:.5f} agree"
        for k in range(2 if R else 1):
            _assert_close_rel(flash[3][k], other[3][k], 3e-2, f"grad {k} vs {name}")


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_cuda_flash_is_deterministic_and_selected_by_env(device, monkeypatch):
    """Two flash runs are bitwise equal (no atomics); the env var and allow_tf32 pick the path as
    dispatch.ms_loss_path says (fp32: TF32 products or 3xTF32), and "flash" where it cannot run (fp64) is a one-line
    error."""
    from recogfast import dispatch
    if torch.cuda.get_device_capability(device)[0] < 8:
        pytest.skip("the flash path needs sm_80+")
    e = torch.randn(3000, 96, device=device, dtype=torch.bfloat16)
    labels = m_per_class(3000, 4, device)
    monkeypatch.setenv("RECOGFAST_MS_LOSS_PATH", "auto")
    assert dispatch.ms_loss_path(torch.bfloat16, device) == _AUTO
    monkeypatch.setenv("RECOGFAST_MS_LOSS_PATH", "flash")
    assert dispatch.ms_loss_path(torch.bfloat16, device) == "flash"
    a, b = _fwd_bwd(e, labels), _fwd_bwd(e, labels)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    monkeypatch.setenv("RECOGFAST_MS_LOSS_PATH", "flash")
    assert dispatch.ms_loss_path(torch.float32, device, allow_tf32=True) == "flash"  # TF32 products
    f32 = _fwd_bwd(e.float(), labels, allow_tf32=True)  # bf16 values: exact in TF32, only W is rounded
    monkeypatch.setenv("RECOGFAST_MS_LOSS_PATH", "tiles")
    exact = _fwd_bwd(e.float(), labels)
    _assert_close_rel(f32[0], exact[0], 1e-4, "tf32 loss")
    _assert_close_rel(f32[3], exact[3], 3e-3, "tf32 grad")
    monkeypatch.setenv("RECOGFAST_MS_LOSS_PATH", "flash")
    assert dispatch.ms_loss_path(torch.float32, device, allow_tf32=False) == "flash"  # 3xTF32
    f32x3 = _fwd_bwd(e.float(), labels)
    _assert_close_rel(f32x3[0], exact[0], 1e-4, "3xTF32 loss")  # bf16 values: the split is exact, as TF32
    _assert_close_rel(f32x3[3], exact[3], 2e-4, "3xTF32 grad")
    with pytest.raises(RuntimeError, match=r"recogfast::ms_loss: RECOGFAST_MS_LOSS_PATH=flash needs an sm_80\+"):
        _fwd_bwd(e.double(), labels, allow_tf32=True)


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_cuda_flash_fp32_without_tf32_is_fp32_accurate(device, monkeypatch):
    """fp32 embeddings with TF32 not allowed on the flash path (3xTF32 products, ms_loss_mma.cuh mma_tf): the error
    against the float64 CPU kernel within 2x the tiles path's (cuBLAS fp32 products) plus 4 fp32 ulps (the rule of
    tools/gpu_crosscheck.py), loss and gradients (relative Frobenius norm: a stable statistic over B x D values),
    while TF32 products miss it by far (the test can tell). "all" mining: no threshold for a last-bit difference
    to flip. The split keeps 22 of fp32's 24 operand bits: at D = 512 the accumulation's rounding dominates (the
    emulation's worst, at D = 20, was 0.995 of the bound in max-abs terms). Not a gate of the tuned table
    (tools/tuned_table.py flash_gate): no table entry turns this mode on."""
    if torch.cuda.get_device_capability(device)[0] < 8:
        pytest.skip("the flash path needs sm_80+")
    torch.manual_seed(263)
    B, D = 2048, 512
    e = torch.randn(B, D, device=device)
    labels = m_per_class(B, 4, device)
    truth = _fwd_bwd(e.double().cpu(), labels.cpu(), mining="all")

    def err(out):
        return [(out[k].double().cpu() - truth[k]).norm().item() / truth[k].norm().item() for k in (0, 3)]

    got = {}
    for path, tf32 in (("tiles", False), ("flash", False), ("flash", True)):
        monkeypatch.setenv("RECOGFAST_MS_LOSS_PATH", path)
        got[(path, tf32)] = err(_fwd_bwd(e, labels, mining="all", allow_tf32=tf32))
    ulps = 4 * 2.0**-23
    for k, what in enumerate(("loss", "grad")):
        flash, tiles, tf32 = got[("flash", False)][k], got[("tiles", False)][k], got[("flash", True)][k]
        assert flash <= 2 * tiles + ulps, f"3xTF32 {what}: relative error {flash:.3g}, cuBLAS fp32 {tiles:.3g}"
        assert tf32 > 2 * tiles + ulps, f"TF32 {what} {tf32:.3g} within the rule: the test cannot tell"


# One process per tile variant (RECOGFAST_MS_FLASH_TILE is read once per process): the flash forward and backward
# against the tiles path's backward given the flash stats, bf16, fp32-TF32 and fp32-3xTF32 (whose forward takes
# variant 4's tiles and backward variant 3's whatever the variant), ms and all mining, reference rows
# with gradient, at D = 130, 512 (variant 3: G in shared memory; 2 and 4 feature chunks of 128) and 1024
# (variant 3's G does not fit the opt-in shared memory there: its backward falls back to variant 4's kernel).
_VARIANT_RUN = r"""
import os, sys
import torch
sys.path.insert(0, sys.argv[1])
import recogfast  # noqa: F401  (the ops)
from test_ms_loss import m_per_class
from test_ms_loss_flash import _assert_close_rel
torch.manual_seed(26)
B, R = 1500, 300
for D in (130, 512, 1024):
    for dtype, tf32 in ((torch.bfloat16, False), (torch.float32, True), (torch.float32, False)):
        e = torch.randn(B, D, device="cuda", dtype=torch.bfloat16).to(dtype)
        r = torch.randn(R, D, device="cuda", dtype=torch.bfloat16).to(dtype)
        lab, rlab = m_per_class(B, 4, "cuda"), torch.randint(0, B // 4, (R,), device="cuda")
        for mining in ("ms", "all"):
            args = (e, lab, r, rlab, 2.0, 50.0, 0.5, 0.1, mining)
            os.environ["RECOGFAST_MS_LOSS_PATH"] = "flash"
            loss, stats, hard_idx, _ = torch.ops.recogfast.ms_loss(*args, False, tf32)
            g = torch.tensor(0.7, dtype=dtype, device="cuda")
            out = {}
            for path in ("flash", "tiles"):
                os.environ["RECOGFAST_MS_LOSS_PATH"] = path
                out[path] = torch.ops.recogfast._ms_loss_backward(g, *args[:4], stats, hard_idx, torch.zeros(0, device="cuda"),
                                                                  *args[4:], True, tf32)
            for k in range(2):
                _assert_close_rel(out["flash"][k], out["tiles"][k],
                                  3e-2 if dtype == torch.bfloat16 else 3e-3 if tf32 else 2e-4,
                                  f"D={D} {dtype} tf32={tf32} {mining} grad {k}")
            os.environ["RECOGFAST_MS_LOSS_PATH"] = "tiles"
            ref_loss = torch.ops.recogfast.ms_loss(*args, False, tf32)[0]
            _assert_close_rel(loss, ref_loss, 1e-2, f"D={D} {dtype} {mining} loss")
print("ok")
"""


@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("variant", ["0", "1", "2", "3", "4", "5", "6"])
def test_cuda_flash_tile_variants(device, variant):
    """Each RECOGFAST_MS_FLASH_TILE variant (0-5; 3 keeps the backward's G in shared memory, falling back to
    variant 4's kernel where it does not fit; 3-5 prefetch the next feature chunk in registers; 5's forward warps
    own 32 rows) against the tiles path, in a process of its own; "6" is a one-line error that lists the variants."""
    import os
    import subprocess
    import sys
    if torch.cuda.get_device_capability(device)[0] < 8:
        pytest.skip("the flash path needs sm_80+")
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, RECOGFAST_MS_FLASH_TILE=variant)
    res = subprocess.run([sys.executable, "-c", _VARIANT_RUN, tests], env=env, capture_output=True, text=True,
                         timeout=600)
    if variant == "6":
        assert res.returncode != 0 and "RECOGFAST_MS_FLASH_TILE must be 0, 1, 2, 3, 4 or 5, got '6'" in res.stderr, res.stderr
    else:
        assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


# One process per forward form (RECOGFAST_MS_FLASH_FWD is read once per process): stats, hard_idx and the loss of
# the flash forward at B = 4096 + a reference set, with small classes (where "auto" takes one pass), one class
# (where it keeps two) and Cars196's 98 training classes, saved for the parent to compare.
_FWD_RUN = r"""
import sys
import torch
sys.path.insert(0, sys.argv[1])
import recogfast  # noqa: F401  (the ops)
from test_ms_loss import m_per_class
torch.manual_seed(27)
B, R, D = 4096, 1024, 256
out = {}
for layout in ("m4", "one", "cars"):
    lab = {"m4": m_per_class(B, 4, "cuda"), "one": torch.zeros(B, dtype=torch.long, device="cuda"),
           "cars": torch.randint(0, 98, (B,), device="cuda")}[layout]
    for dtype, tf32 in ((torch.bfloat16, False), (torch.float32, True), (torch.float32, False)):
        e = torch.randn(B, D, device="cuda", dtype=torch.bfloat16).to(dtype)
        r = torch.randn(R, D, device="cuda", dtype=torch.bfloat16).to(dtype)
        rlab = lab[torch.randint(0, B, (R,), device="cuda")]
        for mining in ("ms", "all"):
            loss, stats, hard_idx, _ = torch.ops.recogfast.ms_loss(e, lab, r, rlab, 2.0, 50.0, 0.5, 0.1, mining, False, tf32)
            out[(layout, str(dtype), tf32, mining)] = (loss.cpu(), stats.cpu(), hard_idx.cpu())
torch.save(out, sys.argv[2])
print("ok")
"""


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_cuda_flash_forward_forms_agree(device, tmp_path):
    """The one-pass forward (gathered positives, one dense pass over the negatives) against the two-pass forward:
    the min positive and max negative (stats 2, 3) and hard_idx bit for bit, the sums and the loss to 1e-5; "auto"
    is one of the two; an unknown form is a one-line error naming the variable."""
    import os
    import subprocess
    import sys
    if torch.cuda.get_device_capability(device)[0] < 8:
        pytest.skip("the flash path needs sm_80+")
    tests = os.path.dirname(os.path.abspath(__file__))
    res = {}
    for form in ("one", "two", "auto", "three"):
        env = dict(os.environ, RECOGFAST_MS_FLASH_FWD=form, RECOGFAST_MS_LOSS_PATH="flash")
        path = tmp_path / f"{form}.pt"
        run = subprocess.run([sys.executable, "-c", _FWD_RUN, tests, str(path)], env=env, capture_output=True,
                             text=True, timeout=600)
        if form == "three":
            assert run.returncode != 0 and "RECOGFAST_MS_FLASH_FWD must be auto, one or two, got 'three'" in run.stderr
            continue
        assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
        res[form] = torch.load(path)
    for key, (loss2, stats2, idx2) in res["two"].items():
        for form in ("one", "auto"):
            loss, stats, idx = res[form][key]
            assert torch.equal(stats[:, 2:], stats2[:, 2:]) and torch.equal(idx, idx2), (form, key)
            _assert_close_rel(stats, stats2, 1e-5, f"{form} {key} stats")
            _assert_close_rel(loss, loss2, 1e-5, f"{form} {key} loss")
