// Multi-Similarity loss on the CPU, forward and backward, without the B x M similarity matrix.
//
// Candidates are the B anchors followed by the R reference rows (M = B + R), all L2-normalised into
// one [M, D] buffer in the accumulation dtype (float32; float64 for float64 input). Positive pairs
// share a label, so they are found through label groups (candidates sorted by label) and computed
// group by group: small groups (or few anchors) with direct SIMD dot products, large ones in gathered tiles with
// aten::mm; a batch of one tile (B <= 256, no reference set) reads them from its one S instead (make_resident).
// Negative pairs are everything else and are reduced from tiles of S = e·cᵀ:
//
//   P1  positives:  min_pos per anchor (the "ms" negative threshold; the "hardest" positive)
//   F   tiles:      max_neg per anchor, and the running log-sum-exp of the mined negatives
//   P2  positives:  the log-sum-exp of the mined positives (needs max_neg)
//
// When the reference set is the batch, S is symmetric: only the tiles on and above the diagonal are
// multiplied, and each feeds its rows (anchors I, candidates J) and its columns (anchors J,
// candidates I). The backward pass recomputes the tiles; dL/dS_ij is a per-pair weight
// w = ±(g/B)·exp(x_ij − log_z_i) from the saved statistics, and the gradient of the normalised
// embeddings is accumulated tile by tile as W·c (anchor side) and Wᵀ·e (candidate side) with aten::mm and add_rows,
// i.e. two matrix products per tile pair, then pulled back through the normalisation. A reference set
// that needs no gradient (a cross-batch memory) can instead have its share of the anchors' gradient
// gathered in the forward pass (cache_ref_grad: running-maximum-scaled sums of exp(x)·c, rescaled at the
// end, as in a softmax-weighted sum), so the backward pass skips the B x R tiles entirely.
//
// Work, B anchors and no reference set: forward 0.5 and backward 1.5 products of size B x B x D.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "ops/cpu/ms_loss_sweeps.h"
#include "ops/cpu/ms_loss_tiles.h"
#include "ops/cpu/parallel.h"
#include "ops/cpu/row_accumulate.h"
#include "ops/ms_loss.h"

namespace recogfast {
namespace {

// add_rows, index_add_rows and host_view: the Scalar-free accumulation loops (ops/cpu/row_accumulate.h).
using cpu::add_rows;
using cpu::host_view;
using cpu::index_add_rows;

// w[r, k] = w[k, r] = w[r, k] + w[k, r] for an [n, n] matrix: a block whose anchors are its candidates takes its
// gradient, anchor side and candidate side, as one product (W + Wᵀ) c.
template <typename T>
void add_transpose(T* w, int64_t n) {
  parallel_for(0, n, 8, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      for (int64_t k = r + 1; k < n; ++k) w[r * n + k] = w[k * n + r] = w[r * n + k] + w[k * n + r];
  });
}

template <typename T>
struct MSLossCPU : Candidates<T> {
  using Base = Candidates<T>;
  using Base::B, Base::R, Base::M, Base::D, Base::chat, Base::norms, Base::gid, Base::order, Base::gstart,
      Base::ganchors, Base::row, Base::dot, Base::for_each_positive_block, Base::rows, Base::for_each_tile;
  Mining mining = Mining::kMS;
  T alpha, beta, base, eps;

  MSLossCPU(Mining mode, double a, double b, double l, double e)
      : mining(mode), alpha(T(a)), beta(T(b)), base(T(l)), eps(T(e)) {}

  // ------------------------------------------------------------------------------ forward
  struct Stats {
    std::vector<T> min_pos, max_neg, pm, pz, nm, nz, log_z_pos, log_z_neg;
    std::vector<int64_t> arg_pos, arg_neg;
    // With cache: sum over mined reference-set negatives n of exp(x_in - ref_xm_i) c_n, kept with the running
    // maximum ref_xm_i, and finally scaled to sum_n exp(x_in - log_z_neg_i) c_n: the reference set's share of
    // the anchors' gradient, computed from the tiles of the forward pass instead of recomputed in backward.
    std::vector<T> ref_xm;
    Tensor cache;
  };

  // cache: also accumulate the reference set's share of the anchors' gradient (see Stats::cache).
  Stats forward(bool cache) {
    Stats st;
    cache = cache && R > 0 && mining != Mining::kHardest;
    if (cache) {
      st.ref_xm.assign(B, -kInf<T>);
      st.cache = zeros_as(chat, {B, D});
    }
    st.min_pos.assign(B, kInf<T>);
    st.max_neg.assign(B, -kInf<T>);
    st.pm.assign(B, 0);
    st.pz.assign(B, 0);
    st.nm.assign(B, 0);
    st.nz.assign(B, 0);
    st.log_z_pos.assign(B, 0);
    st.log_z_neg.assign(B, 0);
    st.arg_pos.assign(B, -1);
    st.arg_neg.assign(B, -1);
    const bool hardest = mining == Mining::kHardest;
    this->make_resident();
    if (!hardest) this->cache_blocks();  // P1 and P2 read the same blocks

    // P1: min_pos (first index on ties: members come in ascending order).
    for_each_positive_block([&](const int64_t* a, int64_t na, const int64_t* m, int64_t nmem, const T* S, bool big) {
      rows(big, na, [&](int64_t r) {
        const int64_t i = a[r];
        for (int64_t j = 0; j < nmem; ++j) {
          if (m[j] == i) continue;
          const T s = S[r * nmem + j];
          if (s < st.min_pos[i]) {
            st.min_pos[i] = s;
            st.arg_pos[i] = m[j];
          }
        }
      });
    });

    // F: max_neg and the negative log-sum-exp.
    std::vector<T> thr(B);  // the mined-negative threshold: min_pos ("ms"), -inf ("all")
    for (int64_t i = 0; i < B; ++i) thr[i] = mining == Mining::kAll ? -kInf<T> : st.min_pos[i];
    auto anchor_update = [&](int64_t i, T m, int64_t arg, T z) {
      if (m > st.max_neg[i] || (m == st.max_neg[i] && arg >= 0 && arg < st.arg_neg[i])) {
        st.max_neg[i] = m;
        st.arg_neg[i] = arg;
      }
      if (!hardest) lse_merge(st.nm[i], st.nz[i], beta * (m - base), z);
    };
    for_each_tile([&](int64_t i0, int64_t ti, int64_t j0, int64_t tj, const T* S, bool symmetric) {
      const int32_t* cl = gid.data() + j0;
      const bool cache_tile = cache && !symmetric;
      Tensor P;  // cache_tile: exp(x - ref_xm) of the mined negatives, [ti, tj]
      std::vector<T> rescale;
      if (cache_tile) {
        P = empty_as(chat, {ti, tj});
        rescale.assign(ti, T(1));
      }
      // Rows: anchors i0.., candidates j0...
      parallel_for(0, ti, 8, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t i = i0 + r;
          const T* s = S + r * tj;
          if (cache_tile) std::fill(P.mutable_data_ptr<T>() + r * tj, P.mutable_data_ptr<T>() + (r + 1) * tj, T(0));
          const T m = neg_max(s, cl, tj, gid[i]);
          if (m == -kInf<T>) continue;
          int64_t arg = -1;
          if (hardest) {
            if (m < st.max_neg[i]) continue;
            for (int64_t k = 0; k < tj; ++k)
              if (cl[k] != gid[i] && s[k] == m) {
                arg = j0 + k;
                break;
              }
          }
          const T z = (!hardest && m + eps > thr[i]) ? neg_sum(s, cl, tj, gid[i], eps, thr[i], beta, m) : T(0);
          anchor_update(i, m, arg, z);
          if (cache_tile && z > T(0)) {
            const T xm = beta * (m - base);
            if (xm > st.ref_xm[i]) {
              rescale[r] = st.ref_xm[i] == -kInf<T> ? T(0) : std::exp(st.ref_xm[i] - xm);
              st.ref_xm[i] = xm;
            }
            neg_weights(s, cl, tj, gid[i], eps, thr[i], beta, base, st.ref_xm[i], T(1), static_cast<const T*>(nullptr),
                        static_cast<const T*>(nullptr), P.mutable_data_ptr<T>() + r * tj);
          }
        }
      });
      if (cache_tile) {
        const Tensor prod = mm(P, narrow(chat, 0, j0, tj));
        add_rows(st.cache.template mutable_data_ptr<T>() + i0 * D, prod.template const_data_ptr<T>(), ti, D,
                 rescale.data());
      }
      if (!symmetric || i0 == j0) return;
      // Columns: anchors j0.., candidates i0.. (S is symmetric).
      parallel_for(0, tj, 64, [&](int64_t c0, int64_t c1) {
        const int64_t n = c1 - c0;
        std::vector<T> colmax(n, -kInf<T>), colsum(n, T(0));
        std::vector<int64_t> colarg(n, -1);
        for (int64_t r = 0; r < ti; ++r) {
          const T* s = S + r * tj + c0;
          if (hardest) {
            for (int64_t k = 0; k < n; ++k)
              if (cl[c0 + k] != gid[i0 + r] && s[k] > colmax[k]) {
                colmax[k] = s[k];
                colarg[k] = i0 + r;
              }
          } else {
            col_neg_max(s, cl + c0, n, gid[i0 + r], colmax.data());
          }
        }
        if (!hardest) {
          for (int64_t r = 0; r < ti; ++r)
            col_neg_sum(S + r * tj + c0, cl + c0, n, gid[i0 + r], eps, thr.data() + j0 + c0, beta, colmax.data(),
                        colsum.data());
        }
        for (int64_t k = 0; k < n; ++k)
          if (colmax[k] > -kInf<T>) anchor_update(j0 + c0 + k, colmax[k], colarg[k], colsum[k]);
      });
    });

    // P2: the positive log-sum-exp (needs max_neg).
    if (!hardest) {
      const T neg_alpha = -alpha;
      for_each_positive_block([&](const int64_t* a, int64_t na, const int64_t* m, int64_t nmem, const T* S,
                                  bool big) {
        rows(big, na, [&](int64_t r) {
          const int64_t i = a[r];
          const T* s = S + r * nmem;
          auto mined = [&](int64_t j) {
            return m[j] != i && (mining == Mining::kAll || s[j] - eps < st.max_neg[i]);
          };
          T lo = kInf<T>;  // the lowest mined similarity gives the largest exponent
          for (int64_t j = 0; j < nmem; ++j)
            if (mined(j) && s[j] < lo) lo = s[j];
          if (lo == kInf<T>) return;
          T z = 0;
          for (int64_t j = 0; j < nmem; ++j)
            if (mined(j)) z += exp_poly(neg_alpha * (s[j] - lo));
          lse_merge(st.pm[i], st.pz[i], neg_alpha * (lo - base), z);
        });
      });
    }

    for (int64_t i = 0; i < B; ++i) {
      if (hardest) {
        const bool valid = st.arg_pos[i] >= 0 && st.arg_neg[i] >= 0;
        if (!valid) {
          st.arg_pos[i] = st.arg_neg[i] = -1;
          continue;
        }
        st.log_z_pos[i] = softplus(-alpha * (st.min_pos[i] - base));
        st.log_z_neg[i] = softplus(beta * (st.max_neg[i] - base));
      } else {
        st.log_z_pos[i] = lse_finish(st.pm[i], st.pz[i]);
        st.log_z_neg[i] = lse_finish(st.nm[i], st.nz[i]);
      }
    }
    if (cache) {
      std::vector<T> f(B);
      for (int64_t i = 0; i < B; ++i)
        f[i] = st.ref_xm[i] == -kInf<T> ? T(0) : std::exp(st.ref_xm[i] - st.log_z_neg[i]);
      T* c = st.cache.template mutable_data_ptr<T>();
      parallel_for(0, B, cpu::grain_for(D), [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i)
          for (int64_t d = 0; d < D; ++d) c[i * D + d] *= f[i];
      });
    }
    return st;
  }

  // ------------------------------------------------------------------------------ backward
  // Returns dL/d(normalised candidates), [B or M, D] (M rows when the reference set needs its gradient).
  // cache: the forward pass's Stats::cache ([B, D]) or empty; when given, the reference-set tiles are skipped.
  Tensor backward(T scale, const T* stats, const int64_t* hard_idx, bool ref_grad, const Tensor& cache) {
    const int64_t GR = ref_grad ? M : B;  // rows of the gradient that are kept
    Tensor gall = zeros_as(chat, {GR, D});
    T* gp = gall.mutable_data_ptr<T>();
    auto log_z_pos = [&](int64_t i) { return stats[i * 4 + 0]; };
    auto log_z_neg = [&](int64_t i) { return stats[i * 4 + 1]; };
    auto min_pos = [&](int64_t i) { return stats[i * 4 + 2]; };
    auto max_neg = [&](int64_t i) { return stats[i * 4 + 3]; };

    if (mining == Mining::kHardest) {
      // Two pairs per anchor: weights first (parallel over anchors), then the sums (parallel over D).
      std::vector<T> wp(B, 0), wn(B, 0);
      parallel_for(0, B, 64, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const int64_t p = hard_idx[2 * i], n = hard_idx[2 * i + 1];
          if (p < 0 || n < 0) continue;
          wp[i] = -scale * std::exp(-alpha * (dot(i, p) - base) - log_z_pos(i));
          wn[i] = scale * std::exp(beta * (dot(i, n) - base) - log_z_neg(i));
        }
      });
      parallel_for(0, D, 16, [&](int64_t d0, int64_t d1) {
        for (int64_t i = 0; i < B; ++i) {
          if (wp[i] == T(0) && wn[i] == T(0)) continue;
          const int64_t p = hard_idx[2 * i], n = hard_idx[2 * i + 1];
          const T *ci = row(i), *cp = row(p), *cn = row(n);
          for (int64_t d = d0; d < d1; ++d) {
            gp[i * D + d] += wp[i] * cp[d] + wn[i] * cn[d];
            if (p < GR) gp[p * D + d] += wp[i] * ci[d];
            if (n < GR) gp[n * D + d] += wn[i] * ci[d];
          }
        }
      });
      return gall;
    }

    // Positives. With a resident S (make_resident) their weights go into its one tile's G below instead.
    const T neg_alpha = -alpha;
    auto pos_weight = [&](int64_t i, int64_t mj, T s) {
      if (mj == i || !(mining == Mining::kAll || s - eps < max_neg(i))) return T(0);
      return -scale * exp_poly(neg_alpha * (s - base) - log_z_pos(i));
    };
    this->make_resident();
    if (!this->rdata) for_each_positive_block([&](const int64_t* a, int64_t na, const int64_t* m, int64_t nmem, const T* S, bool big) {
      std::vector<T> W(na * nmem, T(0));
      rows(big, na, [&](int64_t r) {
        for (int64_t j = 0; j < nmem; ++j) W[r * nmem + j] = pos_weight(a[r], m[j], S[r * nmem + j]);
      });
      if (!big) {
        // One thread owns the whole group: accumulate directly, each gradient row once over its nonzero weights
        // (anchor rows: W's rows times the members; member rows: W's columns times the anchors).
        std::vector<const T*> src(std::max(na, nmem));
        std::vector<T> wk(std::max(na, nmem));
        // gradient row dst += sum over k < n of w(k) row(id(k)), zero weights skipped
        auto add_nonzero = [&](int64_t dst, int64_t n, const auto& id, const auto& w) {
          int64_t cnt = 0;
          for (int64_t k = 0; k < n; ++k)
            if (w(k) != T(0)) {
              src[cnt] = row(id(k));
              wk[cnt++] = w(k);
            }
          add_weighted_rows(gp + dst * D, src.data(), wk.data(), cnt, D);
        };
        for (int64_t r = 0; r < na; ++r)
          add_nonzero(a[r], nmem, [&](int64_t j) { return m[j]; }, [&](int64_t j) { return W[r * nmem + j]; });
        for (int64_t j = 0; j < nmem && m[j] < GR; ++j)  // members in ascending order: kept rows first
          add_nonzero(m[j], na, [&](int64_t r) { return a[r]; }, [&](int64_t r) { return W[r * nmem + j]; });
        return;
      }
      const Tensor Wt = host_view(W.data(), {na, nmem}, chat.scalar_type());
      const Tensor aidx = host_view(const_cast<int64_t*>(a), {na}, kLong);
      const Tensor A = index_select(chat, 0, aidx);
      if (a == m && na == nmem) {  // a square chunk (Candidates::big_chunks): both sides in one product
        add_transpose(W.data(), na);
        index_add_rows(gp, a, na, mm(Wt, A).template const_data_ptr<T>(), D);
        return;
      }
      const Tensor midx = host_view(const_cast<int64_t*>(m), {nmem}, kLong);
      const Tensor Cm = index_select(chat, 0, midx);
      index_add_rows(gp, a, na, mm(Wt, Cm).template const_data_ptr<T>(), D);
      // Members are in ascending index order, so those with a kept gradient row are a prefix.
      const int64_t keep = std::lower_bound(m, m + nmem, GR) - m;
      if (keep > 0)
        index_add_rows(gp, m, keep, as_contiguous(mm(transposed(narrow(Wt, 1, 0, keep)), A)).template const_data_ptr<T>(), D);
    });

    // Negatives, tile by tile.
    const bool use_cache = cache.defined() && cache.numel() > 0 && !ref_grad;
    std::vector<T> thr(B), lzn(B);
    for (int64_t i = 0; i < B; ++i) {
      thr[i] = mining == Mining::kAll ? -kInf<T> : min_pos(i);
      lzn[i] = log_z_neg(i);
    }
    for_each_tile([&](int64_t i0, int64_t ti, int64_t j0, int64_t tj, const T* S, bool symmetric) {
      Tensor G = empty_as(chat, {ti, tj});
      T* g = G.mutable_data_ptr<T>();
      const bool cols = symmetric && i0 != j0;
      std::atomic<bool> any{false};
      parallel_for(0, ti, 8, [&](int64_t b, int64_t e) {
        bool local = false;
        for (int64_t r = b; r < e; ++r) {
          const int64_t i = i0 + r;
          local |= neg_weights(S + r * tj, gid.data() + j0, tj, gid[i], eps, thr[i], beta, base, lzn[i], scale,
                               cols ? thr.data() + j0 : nullptr, cols ? lzn.data() + j0 : nullptr, g + r * tj);
        }
        if (local) any = true;
      });
      if (this->rdata) {  // the resident tile (all of B x B): the positives' weights too, each anchor's row its own
        for_each_positive_block([&](const int64_t* a, int64_t na, const int64_t* m, int64_t nmem, const T* S, bool big) {
          rows(big, na, [&](int64_t r) {
            bool local = false;
            for (int64_t j = 0; j < nmem; ++j) {
              const T w = pos_weight(a[r], m[j], S[r * nmem + j]);
              g[a[r] * tj + m[j]] = w;
              local |= w != T(0);
            }
            if (local) any = true;
          });
        });
      }
      if (!any.load()) return;
      if (symmetric && i0 == j0) {
        add_transpose(g, ti);  // a diagonal tile's anchors are its candidates
        add_rows(gp + i0 * D, mm(G, narrow(chat, 0, i0, ti)).template const_data_ptr<T>(), ti, D);
        return;
      }
      add_rows(gp + i0 * D, mm(G, narrow(chat, 0, j0, tj)).template const_data_ptr<T>(), ti, D);
      if (j0 < GR) {
        add_rows(gp + j0 * D, as_contiguous(mm(transposed(G), narrow(chat, 0, i0, ti))).template const_data_ptr<T>(),
                 std::min(tj, GR - j0), D);
      }
    }, /*with_ref=*/!use_cache);
    if (use_cache) {
      const T* c = cache.template const_data_ptr<T>();
      parallel_for(0, B, cpu::grain_for(D), [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i)
          for (int64_t d = 0; d < D; ++d) gp[i * D + d] += scale * c[i * D + d];
      });
    }
    return gall;
  }

  // dL/dx from dL/d(x / max(|x|, eps)) for rows [row0, row0 + rows) of the candidates.
  template <typename scalar_t>
  Tensor normalise_backward(const Tensor& gall, int64_t row0, int64_t rows, const Tensor& like) const {
    Tensor out = empty_as(like, {rows, D});
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const T* g = gall.const_data_ptr<T>() + row0 * D;
    parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* c = row(row0 + r);
        const T* gr = g + r * D;
        const T n = norms[row0 + r];
        if (n > T(kNormEps)) {
          const T dotp = dot_rows(c, gr, D);
          const T inv = T(1) / n;
          for (int64_t d = 0; d < D; ++d) o[r * D + d] = scalar_t((gr[d] - c[d] * dotp) * inv);
        } else {
          for (int64_t d = 0; d < D; ++d) o[r * D + d] = scalar_t(gr[d] / T(kNormEps));
        }
      }
    });
    return out;
  }
};

ScalarType acc_type_of(ScalarType t) { return t == kDouble ? kDouble : kFloat; }

std::tuple<Tensor, Tensor, Tensor, Tensor> ms_loss_cpu(const Tensor& embeddings, const Tensor& labels,
                                                           const std::optional<Tensor>& ref_embeddings,
                                                           const std::optional<Tensor>& ref_labels, double alpha,
                                                           double beta, double base, double epsilon,
                                                           std::string_view mining_name, bool cache_ref_grad,
                                                           bool /*allow_tf32: CUDA only*/) {
  const Mining mining =
      detail::check_ms_loss_args(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, epsilon, mining_name);
  const int64_t B = embeddings.size(0);
  const auto acc = acc_type_of(embeddings.scalar_type());
  Tensor loss = zeros_as(embeddings, {});
  Tensor stats = empty_as(embeddings, {B, 4}, acc);
  Tensor hard_idx = full_as(embeddings, {B, 2}, -1, kLong);
  const bool cache = detail::ms_loss_caches_ref_grad(embeddings, ref_embeddings, mining, cache_ref_grad);
  Tensor ref_grad_cache = cache ? zeros_as(embeddings, {B, embeddings.size(1)}, acc)
                                    : empty_as(embeddings, {0}, acc);
  if (B == 0) return {loss, stats, hard_idx, ref_grad_cache};
  RF_DISPATCH_FLOATING(embeddings.scalar_type(), "ms_loss_cpu", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    MSLossCPU<T> k(mining, alpha, beta, base, epsilon);
    k.template prepare<scalar_t>(embeddings, labels, ref_embeddings, ref_labels);
    const auto st = k.forward(cache);
    if (cache) copy_(ref_grad_cache, st.cache);
    T* sp = stats.mutable_data_ptr<T>();
    int64_t* hp = hard_idx.mutable_data_ptr<int64_t>();
    double total = 0;
    for (int64_t i = 0; i < B; ++i) {
      sp[i * 4 + 0] = st.log_z_pos[i];
      sp[i * 4 + 1] = st.log_z_neg[i];
      sp[i * 4 + 2] = st.min_pos[i];
      sp[i * 4 + 3] = st.max_neg[i];
      if (mining == Mining::kHardest) {
        hp[2 * i] = st.arg_pos[i];
        hp[2 * i + 1] = st.arg_neg[i];
      }
      total += double(st.log_z_pos[i]) / alpha + double(st.log_z_neg[i]) / beta;
    }
    torch::stable::fill_(loss, total / double(B));
  });
  return {loss, stats, hard_idx, ref_grad_cache};
}

std::tuple<Tensor, Tensor> ms_loss_backward_cpu(
    const Tensor& grad_loss, const Tensor& embeddings, const Tensor& labels,
    const std::optional<Tensor>& ref_embeddings, const std::optional<Tensor>& ref_labels,
    const Tensor& stats_, const Tensor& hard_idx_, const Tensor& ref_grad_cache, double alpha,
    double beta, double base, double epsilon, std::string_view mining_name, bool ref_requires_grad,
    bool /*allow_tf32: CUDA only*/) {
  const Mining mining =
      detail::check_ms_loss_args(embeddings, labels, ref_embeddings, ref_labels, alpha, beta, epsilon, mining_name);
  detail::check_ms_loss_backward_args(grad_loss, embeddings, stats_, hard_idx_, ref_grad_cache);
  const int64_t B = embeddings.size(0), D = embeddings.size(1);
  const bool ref_grad = ref_requires_grad && ref_embeddings.has_value();
  const int64_t R = ref_embeddings.has_value() ? ref_embeddings->size(0) : 0;
  Tensor grad_e = zeros_as(embeddings, {B, D});
  Tensor grad_r = ref_grad ? zeros_as(embeddings, {R, D}) : empty_as(embeddings, {0});
  if (B == 0) return {grad_e, grad_r};
  const auto acc = acc_type_of(embeddings.scalar_type());
  const Tensor stats = as_contiguous(to_dtype(stats_, acc));
  const Tensor hard_idx = as_contiguous(hard_idx_);
  const double g = item_double(grad_loss);
  if (mining == Mining::kHardest) {
    const int64_t M = B + R;
    const int64_t* h = hard_idx.const_data_ptr<int64_t>();
    for (int64_t k = 0; k < 2 * B; ++k)
      RF_CHECK(h[k] >= -1 && h[k] < M, "recogfast::_ms_loss_backward: hard_idx holds ", h[k],
                  ", outside [-1, B + R = ", M, ")");
  }
  RF_DISPATCH_FLOATING(embeddings.scalar_type(), "ms_loss_backward_cpu", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    MSLossCPU<T> k(mining, alpha, beta, base, epsilon);
    k.template prepare<scalar_t>(embeddings, labels, ref_embeddings, ref_labels);
    const Tensor gall = k.backward(T(g / double(B)), stats.const_data_ptr<T>(),
                                       hard_idx.const_data_ptr<int64_t>(), ref_grad,
                                       ref_grad_cache.numel() > 0 ? as_contiguous(to_dtype(ref_grad_cache, acc)) : Tensor());
    grad_e = k.template normalise_backward<scalar_t>(gall, 0, B, embeddings);
    if (ref_grad) grad_r = k.template normalise_backward<scalar_t>(gall, B, R, embeddings);
  });
  return {grad_e, grad_r};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(recogfast, CPU, m) {
  m.impl("ms_loss", TORCH_BOX(&ms_loss_cpu));
  m.impl("_ms_loss_backward", TORCH_BOX(&ms_loss_backward_cpu));
}

}  // namespace recogfast
