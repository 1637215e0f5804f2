// Warp-level tensor-core products for the flash MS loss (ms_loss_flash.cuh): one device function per PTX
// shape, each a single `mma.sync` in inline PTX (sm_80+), and the transposing shared-memory fragment load
// (`ldmatrix .trans`) of the backward's G product. Hand-written PTX rather than CUTLASS/CuTe: the
// flash kernels need two shapes and plain fragment loads, and the CUTLASS headers would add minutes per .cu
// to a build that runs on 2 cores (CI's 90-minute budget), for no tile speed we could not reach by hand.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16" / "mma.m16n8k8", .tf32), per lane with
// g = lane / 4, t = lane % 4:
//   m16n8k16 (bf16/fp16): A 16x16 row-major in 4 regs of 2 halves: a0 (row g, cols 2t, 2t+1), a1 (row g+8,
//     cols 2t, 2t+1), a2 (row g, cols 2t+8, 2t+9), a3 (row g+8, cols 2t+8, 2t+9); B 16x8 in 2 regs:
//     b0 (rows k = 2t, 2t+1, col g), b1 (rows 2t+8, 2t+9, col g); the low half is the lower index.
//   m16n8k8 (tf32): A 16x8, one value a reg: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4);
//     B 8x8: b0 (k = t, col g), b1 (k = t+4, col g).
//   C/D 16x8 fp32 (both): d0, d1 (row g, cols 2t, 2t+1), d2, d3 (row g+8, cols 2t, 2t+1).
// Under RECOGFAST_CUDA_EMULATION (tools/cuda_emulation) the bodies are emu.h's warp-wide emulations, which
// gather the 32 lanes' registers, compute D = A·B + C from exactly these layouts (bf16/fp16 products exact,
// fp32 accumulation; tf32 operands rounded as cvt.rna.tf32.f32) and scatter D: the kernels' fragment
// indexing is checked for real on the host. ldmatrix likewise (emu_ldmatrix_trans: the 32 lanes' row addresses
// gathered, each lane's registers filled from the layout below, 16-byte alignment checked).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace recogfast {
namespace {

// Operand kinds of the flash kernels: bf16 / fp16 m16n8k16, tf32 m16n8k8, and fp32 as three tf32 m16n8k8 products
// (kF32, "3xTF32": fp32 embeddings where TF32 is not allowed; see mma_tf below).
enum class MmaKind : int { kBF16 = 0, kF16 = 1, kTF32 = 2, kF32 = 3 };

// The kinds whose operands are 32-bit and multiply on the tf32 m16n8k8 shape.
template <MmaKind K>
inline constexpr bool kTf32Shape = K == MmaKind::kTF32 || K == MmaKind::kF32;

#ifndef RECOGFAST_CUDA_EMULATION
template <MmaKind K>
__device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
  if constexpr (K == MmaKind::kBF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  }
}

__device__ __forceinline__ void mma_tf32_1688(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
}

// fp32 -> tf32 (round to nearest, ties away: cvt.rna), as the bits of a 32-bit register.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// ldmatrix.sync.aligned.m8n8.x{N}.trans.shared.b16 (sm_75+): kN (2 or 4) 8x8 matrices of 16-bit elements from
// shared memory; lane l gives the address of row l % 8 of matrix l / 8 (16 bytes, 16-byte aligned; for kN = 2
// lanes 16-31's are ignored) and r[i] receives matrix i transposed: lane (g, t)'s pair (row 2t, col g) (low half),
// (row 2t + 1, col g). A [k][n] tile's 8x8 block so lands as the m16n8k16 B fragment register of k-rows
// 2t, 2t + 1 and column g (see the layout table above).
template <int kN>
__device__ __forceinline__ void ldsm_trans(uint32_t (&r)[kN], const uint16_t* row) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (kN == 4)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}
#else
template <MmaKind K>
void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
  emu_mma_16816(K == MmaKind::kBF16, d, a, b, c);
}
inline void mma_tf32_1688(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
  emu_mma_tf32_1688(d, a, b, c);
}
inline uint32_t to_tf32(float x) { return emu_cvt_rna_tf32(x); }
template <int kN>
void ldsm_trans(uint32_t (&r)[kN], const uint16_t* row) {
  emu_ldmatrix_trans(kN, r, row);
}
#endif

// A tf32-shape fragment of N registers: kTF32, the staged tf32 bits (hi; lo unused); kF32, a staged fp32 value x
// split as x = hi + lo + r with hi = tf32(x), lo = tf32(x - hi) (x - hi is exact in fp32: Sterbenz), |r| <= 2^-22 |x|.
template <MmaKind K, int N>
struct TfFrag {
  uint32_t hi[N], lo[N];
};
template <MmaKind K, int N>
__device__ __forceinline__ TfFrag<K, N> tf_frag(const uint32_t (&x)[N]) {
  TfFrag<K, N> f;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if constexpr (K == MmaKind::kF32) {
      const float v = __uint_as_float(x[i]);
      f.hi[i] = to_tf32(v);
      f.lo[i] = to_tf32(v - __uint_as_float(f.hi[i]));
    } else {
      f.hi[i] = x[i];
      f.lo[i] = 0u;
    }
  }
  return f;
}

// d += a·b on the m16n8k8 tf32 shape. kF32 (3xTF32, as CUTLASS's "fast fp32" tensor-op GEMMs): the small cross
// terms first, a.lo b.hi + a.hi b.lo, then a.hi b.hi; the dropped a.lo b.lo and the split residues are ~2^-21 of a
// product, near fp32's own 2^-24 rounding and far inside tf32's 2^-11, at three times tf32's tensor-core work —
// still well above the fp32 FFMA rate (H100 SXM datasheet: 494 dense TF32 vs 67 FP32 TFLOP/s). The three products
// of a k-step sum into a zeroed fragment that is then added to d with FADD: tensor cores are reported to round their
// fp32 sums toward zero (Fasi et al., "Numerical behavior of NVIDIA tensor cores", PeerJ CS 2021), which over the
// D / 8 k-steps of a long accumulation in the mma would bias the sum; so the truncation stays within each k-step's
// 8 products and the accumulation rounds to nearest (the emulation with EMU_MMA_RZ=1: 1.47x the fp32 accuracy bound
// when the mma accumulated, within it now; four FADD per three mma, in issue slots the mma leave).
template <MmaKind K>
__device__ __forceinline__ void mma_tf(float d[4], const TfFrag<K, 4>& a, const TfFrag<K, 2>& b) {
  if constexpr (K == MmaKind::kF32) {
    float t[4] = {0.f, 0.f, 0.f, 0.f};
    mma_tf32_1688(t, a.lo, b.hi, t);
    mma_tf32_1688(t, a.hi, b.lo, t);
    mma_tf32_1688(t, a.hi, b.hi, t);
#pragma unroll
    for (int i = 0; i < 4; ++i) d[i] += t[i];
  } else {
    mma_tf32_1688(d, a.hi, b.hi, d);
  }
}

// Two 16-bit values (lo = lower index) as one 32-bit register.
__device__ __forceinline__ uint32_t pack2(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }

}  // namespace
}  // namespace recogfast
