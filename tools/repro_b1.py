"""Issue 25 (Block 1): CPU CUBS Block 1 fp32 kernel vs the fp32 reference, both against float64 truth, many seeds.

    PYTHONPATH=$PWD python tools/repro_b1.py [--seeds 100] [--shapes 4x64x7x7x32,...] [--gain 1,10,100] [--cl]

Shapes are BxCxHxWxN. The inputs are tests/test_cubs.py's make_args1 draw (same order), x times `gain`
(x10 / x100 saturate the softmax rows, as test_saturated_softmax_fp32_gradients_match_the_reference).
Per tensor (y, grad x, wq, bq, wk, bk, wv, bv, wo, bo) prints the median / p90 / worst ratio
err_kernel / max(err_ref, floor) over seeds (floor = 1e-7 x the tensor's scale), the worst seed, the seeds
that fail the tests' fp32 rule err <= 2e-5 scale + 2 err_ref + 1e-6 (grad scale as in tests/test_cubs.py),
and those that fail the stricter rule of the seeded tests: err <= 2 err_ref + eps32 x the call's largest
gradient (for y: eps32 x max |y|).
"""
import argparse, math
import torch
import recogfast  # noqa: F401
from recogfast.ops import cubs_channel_reference
from cubs_accuracy import compare, report  # tools/cubs_accuracy.py (the script's own folder)

NAMES = ["y", "gx", "gwq", "gbq", "gwk", "gbk", "gwv", "gbv", "gwo", "gbo"]
SHAPES = ("2x16x5x7x8,3x33x4x3x5,2x64x14x14x32,1x8x56x56x4,4x64x7x7x32,2x256x2x2x128,8x32x14x14x16,"
          "8x64x56x56x32,8x256x14x14x128,32x512x7x7x256")


def make_args1(B, C, H, W, N, dtype=torch.float64):
    # tests/test_cubs.py make_args1, same draw order
    x = torch.randn(B, C, H, W, dtype=dtype)
    args = [x]
    for shape, fan_in in (((N, C), C), ((N,), 0), ((N, C), C), ((N,), 0), ((N, C), C), ((N,), 0), ((C, N), N), ((C,), 0)):
        t = torch.randn(*shape, dtype=dtype)
        args.append(t * (2.0 / math.sqrt(fan_in)) if fan_in else 0.3 * t)
    return args


def one(shape, seed, gain=1.0, cl=False):
    torch.manual_seed(seed)
    a64 = make_args1(*shape)
    a64[0] = a64[0] * gain
    gy64 = torch.randn_like(a64[0])
    if cl:
        a64[0] = a64[0].contiguous(memory_format=torch.channels_last)
        gy64 = gy64.contiguous(memory_format=torch.channels_last)
    return compare(torch.ops.recogfast.cubs_channel, cubs_channel_reference, a64, gy64)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--shapes", default=SHAPES)
    p.add_argument("--gain", default="1")
    p.add_argument("--cl", action="store_true", help="channels_last x and grad_y")
    o = p.parse_args()
    torch.set_num_threads(1)
    for gain in (float(g) for g in o.gain.split(",")):
        for s in o.shapes.split(","):
            shape = tuple(int(t) for t in s.split("x"))
            B, C, H, W, N = shape
            big = B * C * H * W > 200_000 or N > 128
            n = max(10, o.seeds // 10) if big else o.seeds
            title = f"{s} gain {gain:g}{' channels_last' if o.cl else ''}"
            report(title, NAMES, ((seed, one(shape, seed, gain, o.cl)) for seed in range(o.first, o.first + n)))


if __name__ == "__main__":
    main()
