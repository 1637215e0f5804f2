// The candidates of the CPU Multi-Similarity loss and the order their similarity tiles are visited in
// (ms_loss_kernel.cpp, its only includer, holds the algorithm): the normalised [M, D] candidate buffer, the
// label groups that positive pairs are found through, and the tile scheduler of the negative pass, which
// groups tiles into rounds of disjoint anchor and candidate blocks so that a round runs in parallel without
// locks. Internal linkage.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <optional>
#include <vector>

#include "ops/cpu/ms_loss_sweeps.h"
#include "ops/stable.h"

namespace recogfast {
namespace {

constexpr int64_t kTile = 256;        // rows and columns of a batch x batch tile (256 KB in fp32)
constexpr int64_t kRefTile = 1024;    // columns of a batch x reference-set tile
constexpr int64_t kSmallGroup = 64;   // label groups up to this size use direct dot products ...
constexpr int64_t kFewAnchors = 16;   // ... and so do groups with this few anchors, whatever their size: a gather of
                                      // the members for aten::mm costs about 16 direct dot products a member
constexpr int64_t kBlockCache = int64_t(1) << 22;  // the most values cache_blocks keeps (16 MB in fp32)
constexpr double kNormEps = 1e-12;    // as torch.nn.functional.normalize

template <typename T>
struct Candidates {
  int64_t B = 0, R = 0, M = 0, D = 0;
  Tensor chat;                 // [M, D] normalised candidates; rows [0, B) are the anchors
  std::vector<T> norms;            // [M] norms before the clamp at kNormEps
  std::vector<int32_t> gid;        // [M] label group of every candidate
  Tensor order;                // [M] int64: candidates sorted by (group, index)
  std::vector<int64_t> gstart;     // members of group g: order[gstart[g], gstart[g + 1])
  std::vector<int64_t> ganchors;   // number of anchors (index < B) in group g: a prefix of its members
  const T* cdata = nullptr;        // chat's data (read through the stable ABI once, not per row)
  // cache_blocks(): every group's similarity block, kept for the passes after the first (the forward's P2 after P1):
  // block_cache[block_offset[g]...] is group g's [anchors x members] block; empty when not kept.
  std::vector<T> block_cache;
  std::vector<int64_t> block_offset;
  // make_resident(): a batch of one tile (no reference set, B <= kTile) forms S = c cᵀ ([B, B]) once a pass, the
  // product its negative pass's one tile would form anyway, and reads the positive blocks from it: no products of
  // their own, and each pass sees the same bits for a pair, positive or negative.
  Tensor resident;
  const T* rdata = nullptr;

  void make_resident() {
    if (R != 0 || B > kTile || rdata) return;
    resident = as_contiguous(mm(chat, transposed(chat)));
    rdata = resident.template const_data_ptr<T>();
  }

  template <typename scalar_t>
  void normalise(const Tensor& x_, int64_t row0, const char* name) {
    const Tensor x = as_contiguous(x_);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    T* c = chat.mutable_data_ptr<T>() + row0 * D;
    const int64_t rows = x.size(0);
    std::atomic<bool> bad{false};
    parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = xp + r * D;
        // double: no overflow of the squares of finite fp32 values
        const double ss = cpu::dot_row<scalar_t, scalar_t, double>(xr, xr, D);
        if (!std::isfinite(ss)) bad = true;
        const double nrm = std::sqrt(ss);
        norms[row0 + r] = T(nrm);
        const T inv = T(1) / T(std::max(nrm, kNormEps));
        T* cr = c + r * D;
        for (int64_t d = 0; d < D; ++d) cr[d] = T(xr[d]) * inv;
      }
    });
    RF_CHECK(!bad.load(), "recogfast::ms_loss: ", name, " contains NaN or inf");
  }

  template <typename scalar_t>
  void prepare(const Tensor& emb, const Tensor& labels, const std::optional<Tensor>& ref,
               const std::optional<Tensor>& ref_labels) {
    B = emb.size(0);
    D = emb.size(1);
    R = ref.has_value() ? ref->size(0) : 0;
    M = B + R;
    chat = empty_as(emb, {M, D}, scalar_type_of<T>());
    norms.assign(M, T(0));
    normalise<scalar_t>(emb, 0, "embeddings");
    if (R > 0) normalise<scalar_t>(*ref, B, "ref_embeddings");
    // Label groups.
    std::vector<int64_t> lab(M);
    {
      const Tensor l = as_contiguous(to_dtype(labels, kLong));
      std::copy(l.const_data_ptr<int64_t>(), l.const_data_ptr<int64_t>() + B, lab.begin());
      if (R > 0) {
        const Tensor rl = as_contiguous(to_dtype(*ref_labels, kLong));
        std::copy(rl.const_data_ptr<int64_t>(), rl.const_data_ptr<int64_t>() + R, lab.begin() + B);
      }
    }
    order = empty({M}, kLong, Device(torch::headeronly::DeviceType::CPU));
    int64_t* ord = order.mutable_data_ptr<int64_t>();
    std::iota(ord, ord + M, int64_t(0));
    std::stable_sort(ord, ord + M, [&](int64_t a, int64_t b) { return lab[a] < lab[b]; });
    gid.assign(M, 0);
    gstart.clear();
    ganchors.clear();
    for (int64_t k = 0; k < M; ++k) {
      if (k == 0 || lab[ord[k]] != lab[ord[k - 1]]) {
        gstart.push_back(k);
        ganchors.push_back(0);
      }
      gid[ord[k]] = int32_t(gstart.size() - 1);
      if (ord[k] < B) ++ganchors.back();
    }
    gstart.push_back(M);
    cdata = chat.const_data_ptr<T>();
  }

  const T* row(int64_t i) const { return cdata + i * D; }

  // One pair's dot product (the hardest backward), in the small groups' arithmetic (ms_loss_sweeps.h dots_impl).
  T dot(int64_t i, int64_t j) const { return dot_rows(row(i), row(j), D); }

  // Group g's [anchors x members] similarity block into S (row-major, nm columns).
  void small_gram(int64_t g, T* S) const {
    const int64_t* m = order.const_data_ptr<int64_t>() + gstart[g];
    const int64_t na = ganchors[g], nm = gstart[g + 1] - gstart[g];
    std::vector<const T*> rows(nm);
    for (int64_t j = 0; j < nm; ++j) rows[j] = row(m[j]);
    gram(rows.data(), na, nm, D, S, nm);
  }

  bool has_positives(int64_t g) const { return ganchors[g] > 0 && gstart[g + 1] - gstart[g] >= 2; }
  bool small_group(int64_t g) const {
    return has_positives(g) && (gstart[g + 1] - gstart[g] <= kSmallGroup || ganchors[g] <= kFewAnchors);
  }

  // Computes and keeps every group's block for the passes that follow, when they hold at most kBlockCache values.
  // A large group's block is formed chunk by chunk as big_chunks() forms it, so a pass that recomputes it (the
  // backward) sees the same bits.
  void cache_blocks() {
    if (rdata) return;  // read from the resident S instead
    const int64_t G = int64_t(ganchors.size());
    block_offset.assign(G + 1, 0);
    for (int64_t g = 0; g < G; ++g)
      block_offset[g + 1] = block_offset[g] + (has_positives(g) ? ganchors[g] * (gstart[g + 1] - gstart[g]) : 0);
    if (block_offset[G] > kBlockCache) {
      block_offset.clear();  // recomputed in each pass instead
      return;
    }
    block_cache.resize(block_offset[G]);
    parallel_for(0, G, 4, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g)
        if (small_group(g)) small_gram(g, block_cache.data() + block_offset[g]);
    });
    for (int64_t g = 0; g < G; ++g) {
      if (!has_positives(g) || small_group(g)) continue;
      const int64_t nm = gstart[g + 1] - gstart[g];
      T* block = block_cache.data() + block_offset[g];
      big_chunks(g, [&](int64_t a0, int64_t ta, int64_t m0, int64_t tm, const T* S) {
        for (int64_t r = 0; r < ta; ++r) std::copy(S + r * tm, S + (r + 1) * tm, block + (a0 + r) * nm + m0);
      });
    }
  }

  // Calls chunk(a0, ta, m0, tm, S [ta x tm]) for the aten::mm chunks of a large group's block: anchors [a0, a0 + ta)
  // against members [m0, m0 + tm). A group whose members are all anchors (no reference set) and at most kRefTile is
  // one square chunk (the backward then needs one product for both sides); others are kTile x kRefTile chunks.
  template <typename Fn>
  void big_chunks(int64_t g, const Fn& chunk) const {
    const int64_t na = ganchors[g], nm = gstart[g + 1] - gstart[g];
    const int64_t rows_per = na == nm && nm <= kRefTile ? na : kTile;
    for (int64_t a0 = 0; a0 < na; a0 += rows_per) {
      const int64_t ta = std::min(rows_per, na - a0);
      const Tensor A = index_select(chat, 0, narrow(order, 0, gstart[g] + a0, ta));
      for (int64_t m0 = 0; m0 < nm; m0 += kRefTile) {
        const int64_t tm = std::min(kRefTile, nm - m0);
        const Tensor Cm = ta == nm ? A : index_select(chat, 0, narrow(order, 0, gstart[g] + m0, tm));
        const Tensor S = as_contiguous(mm(A, transposed(Cm)));
        chunk(a0, ta, m0, tm, S.template const_data_ptr<T>());
      }
    }
  }

  // Calls fn(anchor ids, na, member ids, nm, S [na x nm] row-major, big) for every block of positive
  // candidates: each label group's anchors against all its members (the anchor itself included; fn skips
  // it). Small groups run in parallel, one group per thread and big == false; big groups run one after the
  // other in tiles from aten::mm with big == true (fn may then parallelise over rows).
  template <typename Fn>
  void for_each_positive_block(const Fn& fn) const {
    const int64_t G = int64_t(ganchors.size());
    std::vector<int64_t> small, big;
    for (int64_t g = 0; g < G; ++g)
      if (has_positives(g)) (small_group(g) ? small : big).push_back(g);
    const int64_t* ord = order.const_data_ptr<int64_t>();
    const bool cached = !block_offset.empty();
    // Group g's block: gathered from the resident S, kept from an earlier pass, or multiplied now (small groups).
    auto block_of = [&](int64_t g, std::vector<T>& S) -> const T* {
      const int64_t na = ganchors[g], nm = gstart[g + 1] - gstart[g];
      if (cached) return block_cache.data() + block_offset[g];  // (never with a resident S: cache_blocks)
      S.resize(na * nm);
      if (rdata) {
        const int64_t* m = ord + gstart[g];
        for (int64_t a = 0; a < na; ++a)
          for (int64_t j = 0; j < nm; ++j) S[a * nm + j] = rdata[m[a] * B + m[j]];
      } else {
        small_gram(g, S.data());
      }
      return S.data();
    };
    parallel_for(0, int64_t(small.size()), 4, [&](int64_t begin, int64_t end) {
      std::vector<T> S;
      for (int64_t k = begin; k < end; ++k) {
        const int64_t g = small[k];
        fn(ord + gstart[g], ganchors[g], ord + gstart[g], gstart[g + 1] - gstart[g], block_of(g, S), false);
      }
    });
    for (const int64_t g : big) {
      if (rdata || cached) {  // the whole block at once
        std::vector<T> S;
        fn(ord + gstart[g], ganchors[g], ord + gstart[g], gstart[g + 1] - gstart[g], block_of(g, S), true);
        continue;
      }
      big_chunks(g, [&](int64_t a0, int64_t ta, int64_t m0, int64_t tm, const T* S) {
        fn(ord + gstart[g] + a0, ta, ord + gstart[g] + m0, tm, S, true);
      });
    }
  }

  // Runs row_fn(r) for r in [0, n): in parallel when `parallel`, else in this thread.
  template <typename Fn>
  static void rows(bool parallel, int64_t n, const Fn& row_fn) {
    if (parallel) {
      parallel_for(0, n, 8, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) row_fn(r);
      });
    } else {
      for (int64_t r = 0; r < n; ++r) row_fn(r);
    }
  }

  // Visits every similarity tile of the negative pass: tile(i0, ti, j0, tj, S, symmetric) with S [ti x tj]
  // row-major. Batch x batch tiles (j0 >= i0 only) and batch x reference tiles come in rounds whose tiles
  // touch disjoint anchor blocks and disjoint candidate blocks; the tiles of a round run in parallel, one
  // per thread (aten::mm and parallel_for inside a task run single-threaded), so the whole pass opens a
  // handful of parallel regions instead of several per tile, and a task may update the per-anchor state of
  // its rows and columns, and their gradient rows, without locks.
  template <typename Fn>
  void for_each_tile(const Fn& tile, bool with_ref = true) const {
    struct Task {
      int64_t i0, ti, j0, tj;
      bool symmetric;
    };
    if (rdata) {  // one tile, already formed
      tile(0, B, 0, B, rdata, true);
      return;
    }
    const int64_t nb = (B + kTile - 1) / kTile, nr = (R + kRefTile - 1) / kRefTile;
    auto sym = [&](int64_t I, int64_t J) {
      return Task{I * kTile, std::min(kTile, B - I * kTile), J * kTile, std::min(kTile, B - J * kTile), true};
    };
    std::vector<std::vector<Task>> rounds;
    // Diagonal tiles are disjoint from each other.
    rounds.emplace_back();
    for (int64_t I = 0; I < nb; ++I) rounds.back().push_back(sym(I, I));
    // Off-diagonal pairs by the circle method of round-robin tournaments: n - 1 rounds of n / 2 pairs.
    const int64_t n = nb + (nb % 2);
    for (int64_t r = 0; r + 1 < n; ++r) {
      rounds.emplace_back();
      for (int64_t k = 0; k < n / 2; ++k) {
        auto pos = [&](int64_t p) { return p == n - 1 ? n - 1 : (p + r) % (n - 1); };
        int64_t I = pos(k), J = pos(n - 1 - k);
        if (I > J) std::swap(I, J);
        if (J < nb) rounds.back().push_back(sym(I, J));
      }
    }
    // Batch x reference tiles: round q holds the tiles (I, J) with (I + J) mod K == q, K = max(nb, nr).
    const int64_t K = std::max(nb, nr);
    for (int64_t q = 0; q < K && nr > 0 && with_ref; ++q) {
      rounds.emplace_back();
      for (int64_t I = 0; I < nb; ++I) {
        const int64_t J = ((q - I) % K + K) % K;
        if (J >= nr) continue;
        const int64_t j0 = B + J * kRefTile;
        rounds.back().push_back(Task{I * kTile, std::min(kTile, B - I * kTile), j0, std::min(kRefTile, M - j0), false});
      }
    }
    const int64_t threads = num_threads();
    for (const auto& round : rounds) {
      if (int64_t(round.size()) < threads) {
        // Too few tiles to go around (small batches, long reference sets): one tile at a time, each with
        // the threads inside it (aten::mm and the row/column sweeps are parallel when not nested).
        for (const Task& t : round) {
          const Tensor S = as_contiguous(mm(narrow(chat, 0, t.i0, t.ti), transposed(narrow(chat, 0, t.j0, t.tj))));
          tile(t.i0, t.ti, t.j0, t.tj, S.const_data_ptr<T>(), t.symmetric);
        }
        continue;
      }
      parallel_for(0, int64_t(round.size()), 1, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          const Task& t = round[k];
          const Tensor S = as_contiguous(mm(narrow(chat, 0, t.i0, t.ti), transposed(narrow(chat, 0, t.j0, t.tj))));
          tile(t.i0, t.ti, t.j0, t.tj, S.const_data_ptr<T>(), t.symmetric);
        }
      });
    }
  }
};

}  // namespace
}  // namespace recogfast
