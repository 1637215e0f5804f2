// The split path's NCHW pool alone (channel_gate.cuh launch_pool; SE and CUBS Block 1 run it wherever their one-CTA
// variants do not): px[row] = sum x, pgx[row] = sum grad_y x over each row of x [rows, HW], against float64 sums of
// the same terms (each product in acc_t first, as the kernel), for HW = 1, 4, 7, 13, 49, 196, 3136 and 45 (odd, and
// every vector layout: rows shorter than a vector, vectors straddling two rows, rows of whole vectors) in fp64, fp32,
// bf16 and fp16, with a row count that no rows-a-warp R divides (the last chunk short, its last vector cut) and
// several blocks. Aligned tensors must take the vector kernel (launches counted), an offset view (1 element in; HW =
// 13, 196, backward form) the scalar one; both within 1 ulp of acc_t plus 1e-12 of the row's sum of |terms|, nothing
// written past the rows; the vector kernel the same bits on a second run. main.cpp includes this inside its
// anonymous namespace (after failures); `emu_test se` runs it, as does the full run.
#pragma once

void run_pool() {
  at::manual_seed(17);
  int n = 0;
  double worst = 0;  // max err / tolerance
  std::string rows_used;
  for (const int64_t HW : {1, 4, 7, 13, 45, 49, 196, 3136}) {
    for (const auto dt : {at::kDouble, at::kFloat, at::kBFloat16, at::kHalf}) {
      const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;
      const int V = 16 / int(c10::elementSize(dt));
      const int R = recogfast::emu_pool_rows(HW, V);
      const int64_t rows = HW >= 1000 ? 9 : 16 * R + 5;  // 3136: R = 1, 9 chunks over 3 blocks
      if (dt == at::kBFloat16) rows_used += " " + std::to_string(HW) + ":" + std::to_string(R);
      // the offset view (scalar kernel: many more emulated threads) at a few HW, its backward form
      for (const bool offset : {false, true}) {
        if (offset && HW != 13 && HW != 196) continue;
        const int64_t L = (rows * HW + 1 + 7) / 8 * 8;  // base[1] 16-byte aligned too
        const at::Tensor base = at::randn({2, L}, at::TensorOptions().dtype(dt));
        const int64_t o = offset ? 1 : 0;
        const at::Tensor x = base[0].narrow(0, o, rows * HW).view({rows, HW});
        const at::Tensor gy = base[1].narrow(0, o, rows * HW).view({rows, HW});
        for (const bool grad : {false, true}) {
          if (offset && !grad) continue;
          const int before = recogfast::emu_pool_vec_launches();
          const auto [px, pgx] = recogfast::emu_gate_pool(x, grad ? gy : at::Tensor());
          const bool vec = recogfast::emu_pool_vec_launches() != before;
          char tag[96];
          std::snprintf(tag, sizeof tag, "pool rows=%ld HW=%ld R=%d %s%s%s", rows, HW, R, c10::toString(dt),
                        offset ? " offset" : "", grad ? " grad" : "");
          if (vec == offset) {
            ++failures;
            std::printf("FAIL %s: took the %s kernel\n", tag, vec ? "vector" : "scalar");
          }
          if (!offset) {  // the rows' sums, bit for bit (the 4 past the end are NaN)
            const auto again = recogfast::emu_gate_pool(x, grad ? gy : at::Tensor());
            const bool same = at::equal(px.narrow(0, 0, rows), std::get<0>(again).narrow(0, 0, rows)) &&
                              (!grad || at::equal(pgx.narrow(0, 0, rows), std::get<1>(again).narrow(0, 0, rows)));
            if (!same) {
              ++failures;
              std::printf("FAIL %s: a second run gave other bits\n", tag);
            }
          }
          const at::Tensor xa = x.to(acc), ga = gy.to(acc);
          const at::Tensor terms[2] = {xa.to(at::kDouble), (ga * xa).to(at::kDouble)};  // the product in acc_t
          for (int w = 0; w < (grad ? 2 : 1); ++w) {
            const at::Tensor got = (w ? pgx : px).to(at::kDouble);
            const at::Tensor ref = terms[w].sum(1).to(acc).to(at::kDouble);
            const double ulp = acc == at::kDouble ? 0 : std::ldexp(1.0, -23);
            const at::Tensor tol = ref.abs() * ulp + terms[w].abs().sum(1) * 1e-12;
            const at::Tensor err = (got.narrow(0, 0, rows) - ref).abs();
            const double ratio = (err / tol).max().item<double>();  // NaN (a row not written) fails below
            const bool ok = ratio <= 1 && got.narrow(0, rows, 4).isnan().all().item<bool>();
            worst = std::max(worst, ratio);
            ++n;
            if (!ok) ++failures;
            if (!ok || getenv("EMU_VERBOSE"))
              std::printf("%s %-52s %-3s err/tol %.3g\n", ok ? "ok  " : "FAIL", tag, w ? "pgx" : "px", ratio);
          }
        }
      }
    }
  }
  std::printf("nchw pool: %d comparisons (vector kernel where aligned, scalar for offset views), worst err/tol %.3g; "
              "bf16 rows a warp (HW:R)%s\n", n, worst, rows_used.c_str());
}
