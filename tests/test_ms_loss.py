"""The Multi-Similarity loss op against pytorch-metric-learning and against its own float64 reference:
values, gradients, mining modes, reference sets, dtypes, gradcheck (opcheck: test_op_contracts.py), fuzzed label patterns, bad
input, the cross-batch memory, cross-rank mining with two gloo processes, and bounded memory at B = 32768."""

import functools
import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DEVICES
from recogfast.losses import CrossBatchMemory, MultiSimilarityLoss
from recogfast.ops import ms_loss, ms_loss_reference

MINING = ["ms", "all", "hardest"]
PARAMS = dict(alpha=2.0, beta=50.0, base=0.5, epsilon=0.1)


def fused(e, labels, ref=None, ref_labels=None, mining="ms", alpha=2.0, beta=50.0, base=0.5, epsilon=0.1):
    return torch.ops.recogfast.ms_loss(e, labels, ref, ref_labels, alpha, beta, base, epsilon, mining)[0]


def reference(e, labels, ref=None, ref_labels=None, mining="ms", alpha=2.0, beta=50.0, base=0.5, epsilon=0.1):
    return ms_loss_reference(e, labels, alpha, beta, base, epsilon, mining, ref, ref_labels)


def m_per_class(B, m, device="cpu"):
    return (torch.arange(B, device=device) // m)[torch.randperm(B, device=device)]


def make_case(B, D, labels, R=0, n_ref_classes=None, dtype=torch.float64, device="cpu"):
    e = torch.randn(B, D, dtype=dtype, device=device)
    if R == 0:
        return e, labels, None, None
    k = n_ref_classes or int(labels.max().item()) + 2
    return e, labels, torch.randn(R, D, dtype=dtype, device=device), torch.randint(0, k, (R,), device=device)


def sample_inputs(device="cpu", dtype=torch.float64):
    """One generator for the reference tests, gradcheck and opcheck: (e, labels, ref, ref_labels)."""
    yield make_case(24, 8, m_per_class(24, 4, device), dtype=dtype, device=device)        # M-per-class
    yield make_case(17, 5, torch.randint(0, 3, (17,), device=device), dtype=dtype, device=device)  # few classes
    yield make_case(9, 3, torch.arange(9, device=device), dtype=dtype, device=device)    # all singletons
    yield make_case(7, 4, torch.zeros(7, dtype=torch.long, device=device), dtype=dtype, device=device)  # one class
    yield make_case(12, 6, m_per_class(12, 3, device), R=10, dtype=dtype, device=device)  # reference set
    yield make_case(1, 4, torch.zeros(1, dtype=torch.long, device=device), dtype=dtype, device=device)  # B = 1


def value_and_grads(fn, e, labels, ref, ref_labels, mining, **kw):
    leaves = [e.detach().clone().requires_grad_(True)]
    if ref is not None:
        leaves.append(ref.detach().clone().requires_grad_(True))
    loss = fn(leaves[0], labels, leaves[1] if ref is not None else None, ref_labels, mining=mining, **kw)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return loss, [torch.zeros_like(l) if g is None else g for l, g in zip(leaves, grads)]


# ---------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mining", MINING)
def test_matches_reference_float64(device, mining):
    for case in sample_inputs(device):
        (l, g), (l_ref, g_ref) = (value_and_grads(fn, *case, mining) for fn in (fused, reference))
        torch.testing.assert_close(l, l_ref, rtol=1e-12, atol=1e-14)
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mining", MINING)
def test_large_groups_and_many_tiles_match_reference(device, mining):
    # 600 rows: several 256-row tiles, label groups above the direct-dot-product size, and a reference set
    # spanning more than one reference tile; 520 rows in small groups (their blocks kept from P1 for P2); large groups
    # with a reference set: 100 anchors against ~600 members (one chunk), and one class of 300 anchors against 1300
    # members (2 x 2 chunks of aten::mm, copied into the forward's block cache). Batches of one tile (B <= 256, no
    # reference set) read every pair from one resident S instead: the other tests.
    for B, m, R in [(600, 150, 0), (300, 4, 1500), (513, 1, 0), (520, 4, 0), (300, 100, 1500), (300, 300, 1000)]:
        case = make_case(B, 16, m_per_class(B, m, device), R=R, n_ref_classes=B // m, device=device)
        (l, g), (l_ref, g_ref) = (value_and_grads(fn, *case, mining) for fn in (fused, reference))
        torch.testing.assert_close(l, l_ref, rtol=1e-12, atol=1e-14)
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("mining", ["ms", "all"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_pytorch_metric_learning(mining, dtype):
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import losses, miners

    miner = miners.MultiSimilarityMiner(epsilon=0.1)
    loss_fn = losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
    assert pml is not None
    for B, D, labels in [(64, 32, m_per_class(64, 4)), (96, 16, torch.randint(0, 5, (96,))),
                         (40, 8, torch.randint(0, 30, (40,))), (300, 64, m_per_class(300, 3))]:
        e = torch.randn(B, D, dtype=dtype)
        ours, g = value_and_grads(fused, e, labels, None, None, mining)
        leaf = e.clone().requires_grad_(True)
        theirs = loss_fn(leaf, labels, miner(leaf, labels) if mining == "ms" else None)
        g_pml, = torch.autograd.grad(theirs, leaf)
        tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
        torch.testing.assert_close(ours, theirs, **tol)
        torch.testing.assert_close(g[0], g_pml, rtol=tol["rtol"] * 10, atol=tol["atol"] * g_pml.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mining", MINING)
def test_low_precision_error_within_twice_the_reference(device, dtype, mining):
    """fp16/bf16/fp32 inputs: the error against the float64 truth (on the float64 copy of the same rounded
    inputs) is at most 2x that of the reference run on the same dtype, plus one rounding unit of the output
    dtype and a few fp32 rounding units of S amplified by beta (dL/dS ~ beta exp(beta (S - base)) / Z): both
    accumulate in fp32, and which of them rounds a given S up or down is luck."""
    for case in [make_case(128, 64, m_per_class(128, 4, device), device=device),
                 make_case(300, 64, m_per_class(300, 4, device), device=device),  # tiles (above: one resident S)
                 make_case(64, 32, m_per_class(64, 8, device), R=96, device=device)]:
        low = [t.to(dtype) if t is not None and t.is_floating_point() else t for t in case]
        as64 = [t.double() if t is not None and t.is_floating_point() else t for t in low]
        truth_l, truth_g = value_and_grads(reference, *as64, mining)
        l, g = value_and_grads(fused, *low, mining)
        l_ref, g_ref = value_and_grads(reference, *low, mining)
        assert l.dtype == dtype
        for out, ref, truth in zip((l, *g), (l_ref, *g_ref), (truth_l, *truth_g)):
            scale = truth.abs().max().item()
            err = (out.double() - truth).abs().max().item()
            ref_err = (ref.double() - truth).abs().max().item()
            allowed = 2 * ref_err + torch.finfo(dtype).eps * scale + 4 * 50.0 * torch.finfo(torch.float32).eps * scale
            assert err <= allowed, (err, ref_err, scale)


def test_stable_for_large_beta_and_similarities_near_one():
    # Every pair has cosine similarity ~0.9999 and beta = 200: exp(beta (S - base)) ~ e^100 per term, which
    # overflows fp32 without the running maximum.
    torch.manual_seed(1)
    e = torch.ones(512, 64, dtype=torch.float64) + 1e-2 * torch.randn(512, 64, dtype=torch.float64)
    labels = m_per_class(512, 8)
    for mining in MINING:
        (l, g), (l_ref, g_ref) = (value_and_grads(fn, e, labels, None, None, mining, beta=200.0)
                                  for fn in (fused, reference))
        torch.testing.assert_close(l, l_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g[0], g_ref[0], rtol=1e-7, atol=1e-9 * g_ref[0].abs().max().item())
        # fp32: finite, the loss within fp32 rounding of S amplified by beta, the gradient (a difference of
        # nearly parallel vectors here) within 2x the fp32 reference's own error.
        l32, g32 = value_and_grads(fused, e.float(), labels, None, None, mining, beta=200.0)
        r32, gr32 = value_and_grads(reference, e.float(), labels, None, None, mining, beta=200.0)
        assert torch.isfinite(l32) and torch.isfinite(g32[0]).all()
        torch.testing.assert_close(l32.double(), l_ref, rtol=1e-4, atol=1e-5)
        err = (g32[0].double() - g_ref[0]).abs().max().item()
        ref_err = (gr32[0].double() - g_ref[0]).abs().max().item()
        assert err <= 2 * ref_err + 1e-3 * g_ref[0].abs().max().item(), (err, ref_err)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mining", ["ms", "hardest"])
def test_no_positive_pairs_gives_zero_loss_and_zero_grad(device, mining):
    # With mining, an anchor without a positive mines nothing (pytorch-metric-learning's miner returns no
    # pairs); "all" keeps the negatives' term (test_fuzzed... covers it against the reference).
    e = torch.randn(10, 8, dtype=torch.float64, device=device, requires_grad=True)
    loss = fused(e, torch.arange(10, device=device), mining=mining)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(e.grad, torch.zeros_like(e))
    assert reference(e, torch.arange(10, device=device), mining=mining).item() == 0.0


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    e = torch.randn(0, 8, device=device, requires_grad=True)
    loss = fused(e, torch.zeros(0, dtype=torch.long, device=device))
    assert loss.item() == 0.0
    loss.backward()
    assert e.grad.shape == e.shape


def test_stats_outputs():
    e = torch.randn(32, 8, dtype=torch.float64)
    labels = m_per_class(32, 4)
    loss, stats, hard_idx, cache = torch.ops.recogfast.ms_loss(e, labels, None, None, 2.0, 50.0, 0.5, 0.1, "hardest")
    assert cache.numel() == 0
    c = torch.nn.functional.normalize(e)
    S = c @ c.T
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(32, dtype=torch.bool)
    torch.testing.assert_close(stats[:, 2], torch.where(pos, S, torch.inf).amin(1))
    torch.testing.assert_close(stats[:, 3], torch.where(~same, S, -torch.inf).amax(1))
    torch.testing.assert_close(S[torch.arange(32), hard_idx[:, 0]], stats[:, 2])
    torch.testing.assert_close(S[torch.arange(32), hard_idx[:, 1]], stats[:, 3])
    torch.testing.assert_close(loss, (stats[:, 0] / 2 + stats[:, 1] / 50).mean())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 48), D=st.integers(1, 12), pattern=st.sampled_from(["singletons", "one", "many", "few", "m4"]),
    R=st.sampled_from([0, 0, 5, 33]), mining=st.sampled_from(MINING), seed=st.integers(0, 2**16),
)
def test_fuzzed_batches_and_label_patterns_match_reference(B, D, pattern, R, mining, seed):
    torch.manual_seed(seed)
    labels = {"singletons": torch.arange(B), "one": torch.zeros(B, dtype=torch.long),
              "many": torch.randint(0, max(1, B), (B,)), "few": torch.randint(0, 3, (B,)),
              "m4": m_per_class(B, 4)}[pattern]
    case = make_case(B, D, labels, R=R, n_ref_classes=4)
    (l, g), (l_ref, g_ref) = (value_and_grads(fn, *case, mining) for fn in (fused, reference))
    assert torch.isfinite(l)
    torch.testing.assert_close(l, l_ref, rtol=1e-11, atol=1e-13)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mining", MINING)
def test_reference_set_without_gradient_matches_reference(device, mining):
    """A detached reference set (a cross-batch memory): on the CPU the forward pass gathers the memory's share
    of the gradient (ref_grad_cache) and the backward pass skips those tiles; same result either way."""
    for B, R, m in [(40, 300, 4), (300, 2100, 4), (64, 1500, 16)]:
        e, labels, ref, ref_labels = make_case(B, 16, m_per_class(B, m, device), R=R, n_ref_classes=B // m,
                                               device=device)
        leaf = e.clone().requires_grad_(True)
        loss = ms_loss(leaf, labels, mining=mining, ref_embeddings=ref, ref_labels=ref_labels, impl="fused")
        grad, = torch.autograd.grad(loss, leaf)
        want_l, want_g = value_and_grads(reference, e, labels, ref, ref_labels, mining)
        torch.testing.assert_close(loss, want_l, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad, want_g[0], rtol=1e-9, atol=1e-13)
        cache = torch.ops.recogfast.ms_loss(e, labels, ref, ref_labels, 2.0, 50.0, 0.5, 0.1, mining, True)[3]
        assert cache.shape == ((B, 16) if device == "cpu" and mining != "hardest" else (0,))


# ---------------------------------------------------------------------------------- gradcheck, opcheck


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mining", MINING)
def test_gradcheck_float64(device, mining):
    for e, labels, ref, ref_labels in sample_inputs(device):
        if e.shape[0] > 20:
            continue
        inputs = [e.requires_grad_(True)] + ([ref.requires_grad_(True)] if ref is not None else [])

        def fn(*xs):
            return fused(xs[0], labels, xs[1] if ref is not None else None, ref_labels, mining=mining)

        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


# opcheck of every sample: tests/test_op_contracts.py


def _assert_compiles_like_eager(fn, e, labels):
    """torch.compile(fn) in one graph through AOT autograd (backend aot_eager): the loss and gradient of eager."""
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    ee, ec = e.clone().requires_grad_(True), e.clone().requires_grad_(True)
    le, lc = fn(ee, labels), compiled(ec, labels)
    torch.testing.assert_close(lc, le)
    le.backward()
    lc.backward()
    torch.testing.assert_close(ec.grad, ee.grad)


def test_compiled_module_matches_eager():
    _assert_compiles_like_eager(MultiSimilarityLoss(impl="fused"), torch.randn(32, 16), m_per_class(32, 4))


@pytest.mark.parametrize("mining", ["ms", "all"])
@pytest.mark.parametrize("with_ref", [False, True])
def test_reference_compiles_in_one_graph(mining, with_ref):
    """torch.compile of the dense reference (the benchmarks' "compiled" peer, and what a user compiles with
    impl="reference"): one graph through AOT autograd's functionalization (an in-place fill_diagonal_ on a slice of
    its mask once failed there), the same loss and gradients as eager."""
    ref = (torch.randn(10, 8, dtype=torch.float64), torch.randint(0, 6, (10,))) if with_ref else (None, None)
    fn = functools.partial(ms_loss_reference, mining=mining, ref_embeddings=ref[0], ref_labels=ref[1])
    _assert_compiles_like_eager(fn, torch.randn(24, 8, dtype=torch.float64), m_per_class(24, 4))


# -------------------------------------------------------------------------------------------- bad input


def bad_calls():
    e, labels = torch.randn(6, 4), torch.arange(6) // 2
    nan = e.clone()
    nan[2, 1] = float("nan")
    inf = e.clone()
    inf[0, 0] = float("inf")
    return [
        ((e, labels.float()), "labels must be a 1-D integer tensor"),
        ((e, labels[:, None]), "labels must be a 1-D integer tensor"),
        ((e, labels[:5]), "labels must have one entry per row of embeddings"),
        ((e[0], labels), "embeddings must be a 2-D tensor"),
        ((e.long(), labels), "embeddings must be a floating-point tensor"),
        ((nan, labels), "embeddings contains NaN or inf"),
        ((inf, labels), "embeddings contains NaN or inf"),
        ((e, labels, torch.randn(3, 5), torch.zeros(3, dtype=torch.long)), "ref_embeddings must have D = embeddings.size"),
        ((e, labels, torch.randn(3, 4), torch.zeros(2, dtype=torch.long)), "ref_labels must have one entry per row"),
        ((e, labels, torch.randn(3, 4), None), "ref_embeddings and ref_labels must be given together"),
        ((e, labels, torch.randn(3, 4).double(), torch.zeros(3, dtype=torch.long)), "ref_embeddings has dtype"),
        ((e, labels, torch.full((3, 4), float("nan")), torch.zeros(3, dtype=torch.long)),
         "ref_embeddings contains NaN or inf"),
    ]


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bad_input_errors_name_the_argument(impl):
    for args, msg in bad_calls():
        with pytest.raises((RuntimeError, TypeError), match=msg):
            ms_loss(*args[:2], ref_embeddings=args[2] if len(args) > 2 else None,
                    ref_labels=args[3] if len(args) > 3 else None, impl=impl)
    e, labels = torch.randn(6, 4), torch.arange(6) // 2
    with pytest.raises(RuntimeError, match="mining must be one of"):
        ms_loss(e, labels, mining="semihard", impl=impl)
    with pytest.raises(RuntimeError, match="alpha must be > 0"):
        ms_loss(e, labels, alpha=0.0, impl=impl)


def test_module_argument_checks_and_repr():
    with pytest.raises(ValueError, match="mining must be one of"):
        MultiSimilarityLoss(mining="semihard")
    with pytest.raises(ValueError, match="impl must be one of"):
        MultiSimilarityLoss(impl="fast")
    assert "mining='ms'" in repr(MultiSimilarityLoss())


def test_impl_selection_and_env_override(monkeypatch):
    e, labels = torch.randn(20, 8, dtype=torch.float64), m_per_class(20, 4)
    torch.testing.assert_close(ms_loss(e, labels, impl="fused"), ms_loss(e, labels, impl="reference"))
    monkeypatch.setenv("RECOGFAST_IMPL", "reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(MultiSimilarityLoss(impl="fused")(e, labels), reference(e, labels))


# ------------------------------------------------------------------------------------- cross-batch memory


def test_cross_batch_memory_matches_reference_and_round_trips_state_dict():
    torch.manual_seed(3)
    mem = CrossBatchMemory(MultiSimilarityLoss(), embedding_dim=8, memory_size=50)
    seen_e, seen_l = [], []
    for _ in range(4):  # 4 x 16 = 64 > 50: the ring buffer wraps around
        e, labels = torch.randn(16, 8, requires_grad=True), torch.randint(0, 6, (16,))
        ref = torch.cat(seen_e)[-50:] if seen_e else None
        ref_l = torch.cat(seen_l)[-50:] if seen_l else None
        loss = mem(e, labels)
        want = reference(e.double(), labels, None if ref is None else ref.double(), ref_l)
        torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
        loss.backward()
        assert e.grad is not None and torch.isfinite(e.grad).all()
        seen_e.append(e.detach())
        seen_l.append(labels)
    assert int(mem.num_filled) == 50 and int(mem.queue_idx) == 64 % 50
    # Same set of (embedding, label) rows as the last 50 seen, in ring order.
    got = sorted(zip(mem.embedding_memory.tolist(), mem.label_memory.tolist()))
    want = sorted(zip(torch.cat(seen_e)[-50:].tolist(), torch.cat(seen_l)[-50:].tolist()))
    assert got == want
    state = mem.state_dict()
    assert {"embedding_memory", "label_memory", "queue_idx", "num_filled"} <= set(state)
    resumed = CrossBatchMemory(MultiSimilarityLoss(), embedding_dim=8, memory_size=50)
    resumed.load_state_dict(state)
    e, labels = torch.randn(16, 8), torch.randint(0, 6, (16,))
    torch.testing.assert_close(resumed(e, labels, enqueue=False), mem(e, labels, enqueue=False))
    with pytest.raises(RuntimeError, match="embedding_dim"):
        mem(torch.randn(4, 9), torch.zeros(4, dtype=torch.long))


# ------------------------------------------------------------------------------------ cross-rank mining


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir, mining):
    import torch.distributed as dist

    import recogfast  # noqa: F401

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        full = torch.randn(world * 24, 16, dtype=torch.float64)
        labels = torch.arange(world * 24) % 9
        local = full[rank * 24:(rank + 1) * 24].clone().requires_grad_(True)
        loss = MultiSimilarityLoss(mining=mining, gather_across_ranks=True)(local, labels[rank * 24:(rank + 1) * 24])
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": local.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mining", ["ms", "hardest"])
def test_cross_rank_mining_matches_single_process(tmp_path, mining):
    import torch.multiprocessing as mp

    world = 2
    mp.spawn(_ddp_worker, args=(world, _free_port(), str(tmp_path), mining), nprocs=world, join=True)
    torch.manual_seed(0)
    full = torch.randn(world * 24, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(world * 24) % 9
    single = MultiSimilarityLoss(mining=mining)(full, labels)
    grad, = torch.autograd.grad(single, full)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    # Each rank averages over its own anchors; DDP averages the ranks' gradients.
    torch.testing.assert_close(sum(r["loss"] for r in results) / world, single.detach())
    for r, res in enumerate(results):
        torch.testing.assert_close(res["grad"] / world, grad[r * 24:(r + 1) * 24])


# ------------------------------------------------------------------------------------------------ memory


def test_no_batch_by_batch_matrix_at_b32768():
    """B = 32768, D = 128 forward + backward on the CPU: the similarity matrix alone would be 4 GiB in
    fp32; the extra peak resident memory must stay far below that."""
    script = textwrap.dedent("""
        import json, resource, torch, recogfast
        torch.manual_seed(0)
        B, D = 32768, 128
        e = torch.randn(B, D, requires_grad=True)
        labels = (torch.arange(B) // 4)[torch.randperm(B)]
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        loss = recogfast.ops.ms_loss(e, labels, impl="fused")
        loss.backward()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"extra_mb": (peak - base) / 1024, "loss": loss.item(),
                          "grad_ok": bool(torch.isfinite(e.grad).all())}))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                                       os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["grad_ok"] and res["loss"] > 0
    assert res["extra_mb"] < 512, res  # O((B + M) D) buffers and tiles: tens of MB; S would be 4096 MB


# ------------------------------------------------------------------------- CUDA: no host sync, NaN policy

CUDA_ONLY = [p for p in DEVICES if not isinstance(p, str)]


@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("dtype,path", [(torch.float32, "auto"), (torch.bfloat16, "auto"), (torch.bfloat16, "flash")])
def test_cuda_step_never_syncs_with_the_host(device, dtype, path, monkeypatch):
    """A training step of the fused loss (forward + backward, several tiles) makes no device-to-host sync:
    torch's sync debug mode turns any synchronising call into an error. On the flash path B = 2048 is 2^22 pairs,
    where the forward's "auto" form sorts the labels and lets the device choose (ms_loss_flash_onepass.cuh)."""
    if path == "flash" and torch.cuda.get_device_capability(device)[0] < 8:
        pytest.skip("the flash path needs sm_80+")
    monkeypatch.setenv("RECOGFAST_MS_LOSS_PATH", path)
    e = torch.randn(2048, 64, device=device, dtype=dtype, requires_grad=True)
    labels = m_per_class(2048, 4, device)
    ms_loss(e, labels, impl="fused").backward()  # warm-up: cuBLAS handles, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = ms_loss(e, labels, impl="fused")
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_cuda_nan_input_gives_nan_loss_or_raises_on_request(device, monkeypatch):
    e = torch.randn(64, 16, device=device)
    labels = m_per_class(64, 4, device)
    e[5, 3] = float("nan")
    monkeypatch.delenv("RECOGFAST_CHECK_FINITE", raising=False)
    leaf = e.clone().requires_grad_(True)
    loss = ms_loss(leaf, labels, impl="fused")
    assert torch.isnan(loss).item()  # never a finite number from NaN input
    loss.backward()
    assert torch.isnan(leaf.grad).all().item()
    ref = torch.randn(8, 16, device=device)
    ref[0, 0] = float("inf")
    assert torch.isnan(ms_loss(e.nan_to_num(), labels, ref_embeddings=ref, ref_labels=labels[:8], impl="fused")).item()
    monkeypatch.setenv("RECOGFAST_CHECK_FINITE", "1")
    with pytest.raises(RuntimeError, match="embeddings contains NaN or inf"):
        ms_loss(e, labels, impl="fused")


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_cuda_tall_and_wide_tiles_match_cpu(device):
    """B = 20000 (tiles sized from the SM count, several of them) against the CPU kernel, fp64."""
    e = torch.randn(20000, 32, dtype=torch.float64)
    labels = m_per_class(20000, 4)
    out = []
    for dev in ("cpu", device):
        leaf = e.detach().to(dev).requires_grad_(True)
        loss = ms_loss(leaf, labels.to(dev), impl="fused")
        loss.backward()
        out.append((loss.cpu(), leaf.grad.cpu()))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-8, atol=1e-12)
