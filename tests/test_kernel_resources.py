"""tools/kernel_resources.py: the built extension's CUDA kernels read from their cubins (no GPU needed), and no
kernel's stack frame (register spills, local arrays) beyond its budget."""

import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import kernel_resources as kr  # noqa: E402

import recogfast  # noqa: E402

FLASH_TF32_PASS2 = ("_ZN9recogfast55_GLOBAL__N__42a1dc69_17_ms_loss_kernel_cu_f2fad606_939319ms_flash_fwd_kernelINS0_9FlashTileIL"
                    "i64ELi64ELi32ELi8ELb1ELi1EEELNS0_7MmaKindE2EfLi2EEEvNS0_9FlashArgsIT1_EENS0_6ParamsEPfPlS9_NS0_12FlashFwdGateE")
FLASH_BF16_PASS2 = FLASH_TF32_PASS2.replace("MmaKindE2EfLi2E", "MmaKindE0EN3c108BFloat16ELi2E").replace(
    "FlashArgsIT1_EENS0_6ParamsEPfPlS9_", "FlashArgsIT1_EENS0_6ParamsEPfPlSB_")
RES_USAGE = f"""
Fatbin elf code:
================
arch = sm_90
code version = [1,8]
identifier = csrc/ops/cuda/ms_loss_kernel.cu

Resource usage:
 Common:
  GLOBAL:0
 Function {FLASH_TF32_PASS2}:
  REG:128 STACK:8 SHARED:1024 LOCAL:0 CONSTANT[0]:640 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function {FLASH_BF16_PASS2}:
  REG:127 STACK:16 SHARED:1024 LOCAL:0 CONSTANT[0]:640 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_res_usage_is_parsed_and_checked_against_the_budgets():
    recs = kr.parse(RES_USAGE)
    assert [(r["arch"], r["reg"], r["stack"], r["shared"]) for r in recs] == [("sm_90", 128, 8, 1024),
                                                                              ("sm_90", 127, 16, 1024)]
    if recs[0]["short"] != recs[0]["name"]:  # c++filt present: the short name keeps the template arguments
        assert recs[0]["short"] == "ms_flash_fwd_kernel<FlashTile<64, 64, 32, 8, true, 1>, (MmaKind)2, float, 2>"
        # TF32's pass 2 has an 8-byte budget (one 4-byte spill); the bf16 kernel of the same tile has none
        (line,) = kr.over_budget(recs)
        assert line.startswith("ms_flash_fwd_kernel<FlashTile<64, 64, 32, 8, true, 1>, (MmaKind)0, BFloat16, 2> (sm_90): "
                               "16 bytes of stack frame, budget 0")
        assert kr.over_budget([dict(recs[0], stack=12)])  # the budgeted kernel, over its budget
    assert kr.parse("") == []


def test_built_kernels_keep_within_their_stack_budgets():
    lib = recogfast._C.__file__ if hasattr(recogfast, "_C") else None
    tool = kr.find_cuobjdump()
    if recogfast.build_info().get("cuda") != "1" or not lib or not tool or not shutil.which("c++filt"):
        pytest.skip("the extension was built without CUDA kernels, or no cuobjdump, or no c++filt (the budgets "
                    "name demangled kernels)")
    recs = kr.read(lib, tool)
    names = " ".join(r["short"] for r in recs)
    assert len(recs) > 100 and "ms_flash_bwd_gsmem_kernel<" in names and "se_gate" in names
    assert kr.over_budget(recs) == []
