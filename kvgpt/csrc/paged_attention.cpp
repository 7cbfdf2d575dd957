// Paged attention on the CPU: queries read their sequence's keys and values where they sit in the block pool, one
// block at a time, with an online softmax (FlashAttention's running max and sum). Nothing is gathered and no
// (T, S) score matrix exists: per work item, a few floats of state and one block of scores.
//
// Two shapes of work, as in every attention library (decode and prefill kernels):
//   decode_item  one query (a decode row), a range of KV heads: a matrix-vector product, memory-bound;
//                vectorised along D, whole slots (every head of a token) read in memory order.
//   tile_item    up to 16 / group consecutive queries of one sequence (a prompt chunk), one KV head: a small matrix
//                product; keys are loaded once for the whole tile and the loops run along the tile's rows.
//
// Registered as torch.ops.kvgpt.paged_attention(q, k_pool, v_pool, block_tables, query_row, query_pos, scale):
//   q            (1, H, N, D) last dim contiguous (any strides for H and N: a view of the fused qkv projection)
//   k_pool/v_pool (num_blocks, block_size, Hkv, D) contiguous, H % Hkv == 0 (grouped-query attention)
//   block_tables (R, M) int64, query_row (N,) int64, query_pos (N,) int64
//   -> out (1, H, N, D), stored as (N, H, D): query i attends to keys 0 .. query_pos[i] of row query_row[i].
// Built at first use by kvgpt/paged_kernel.py. Introduced in notebooks/14_attention_kernels.ipynb.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// exp(x) for x <= 0, in a form the compiler vectorises (std::exp is a scalar libm call): x = n ln2 + r with
// |r| <= ln2 / 2, exp(r) by Cephes' expf polynomial (about 1 ulp), 2^n written straight into the exponent bits.
// Below -87 the result would be denormal: it is clamped there (a weight below 1e-38 next to a weight of 1).
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;  // Cody-Waite: ln2 split in two for exactness
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Every index the kernel will follow is checked here, before any key is read (ValueError in Python).
void check_indices(const at::Tensor& tables, const at::Tensor& rows, const at::Tensor& pos, int64_t num_blocks,
                   int64_t block_size) {
  const int64_t R = tables.size(0), M = tables.size(1), N = rows.size(0);
  const int64_t* t = tables.data_ptr<int64_t>();
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t* p = pos.data_ptr<int64_t>();
  for (int64_t e = 0; e < R * M; ++e)
    TORCH_CHECK_VALUE(t[e] >= 0 && t[e] < num_blocks, "block_tables[", e / M, ", ", e % M, "]=", t[e],
                      ": must be a block id in 0..", num_blocks - 1);
  for (int64_t i = 0; i < N; ++i) {
    TORCH_CHECK_VALUE(r[i] >= 0 && r[i] < R, "query_row[", i, "]=", r[i], ": must be a row of block_tables, 0..",
                      R - 1);
    TORCH_CHECK_VALUE(p[i] >= 0 && p[i] < M * block_size, "query_pos[", i, "]=", p[i],
                      ": must be a position its table row holds, 0..", M * block_size - 1);
  }
}

// Ask for the cache lines of p[0 .. n) ahead of their use. Blocks are scattered over the pool, so the hardware
// prefetcher, which follows addresses that advance regularly, loses the stream at every block boundary.
template <typename T>
inline void prefetch(const T* p, int64_t n) {
#if defined(__GNUC__)
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < n * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(c + b);
#endif
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kRows = 16;  // (query, head) rows of a tile item: 16 floats, one AVX-512 register
typedef float Rows __attribute__((vector_size(kRows * sizeof(float))));  // GCC/clang vectors: kRows lanes

// One decode query i against KV heads kh0 .. kh1 - 1 and the `group` query heads that share each of them.
// kD > 0: the head dim is a compile-time constant, so the loops over d unroll into a few vector instructions.
template <typename scalar_t, int64_t kD>
void decode_item(const scalar_t* q, int64_t q_sn, int64_t q_sh, const scalar_t* k, const scalar_t* v,
                 const int64_t* table, int64_t last, int64_t i, int64_t kh0, int64_t kh1, int64_t group, int64_t Hkv,
                 int64_t head_dim, int64_t bs, float scale, scalar_t* out, float* buf) {
  const int64_t D = kD > 0 ? kD : head_dim, slot = Hkv * D, h0 = kh0 * group, heads = (kh1 - kh0) * group;
  float *qf = buf, *acc = qf + heads * D, *s = acc + heads * D, *m = s + heads * bs, *l = m + heads;
  for (int64_t j = 0; j < heads; ++j) {
    const scalar_t* qj = q + i * q_sn + (h0 + j) * q_sh;
    for (int64_t d = 0; d < D; ++d) qf[j * D + d] = static_cast<float>(qj[d]) * scale;
    std::fill(acc + j * D, acc + (j + 1) * D, 0.f);
    m[j] = kNegInf;
    l[j] = 0.f;
  }
  for (int64_t start = 0; start <= last; start += bs) {  // the sequence's blocks, in order
    const int64_t n = std::min(bs, last + 1 - start);   // keys of this block the query may see
    const int64_t base = table[start / bs] * bs * slot;
    const int64_t next = start + bs <= last ? table[start / bs + 1] * bs * slot : -1;  // fetched meanwhile
    for (int64_t c = 0; c < n; ++c) {  // scores s[j][c] = q_j . k_c, for every head j of the item
      const scalar_t* kc = k + base + c * slot;
      if (next >= 0) prefetch(k + next + c * slot + kh0 * D, (kh1 - kh0) * D);
      for (int64_t j = 0; j < heads; ++j) {
        const float* qj = qf + j * D;
        const scalar_t* kj = kc + (kh0 + j / group) * D;
        float dot = 0.f;
        for (int64_t d = 0; d < D; ++d) dot += qj[d] * static_cast<float>(kj[d]);
        s[j * bs + c] = dot;
      }
    }
    for (int64_t j = 0; j < heads; ++j) {  // online softmax: new max, rescale the old sums, this block's weights
      float* sj = s + j * bs;
      float m_new = m[j];
      for (int64_t c = 0; c < n; ++c) m_new = std::max(m_new, sj[c]);
      const float alpha = std::exp(m[j] - m_new);  // 0 on the first block (m = -inf)
      float sum = 0.f;
      for (int64_t c = 0; c < n; ++c) {
        sj[c] = exp_nonpositive(sj[c] - m_new);
        sum += sj[c];
      }
      l[j] = l[j] * alpha + sum;
      m[j] = m_new;
      float* aj = acc + j * D;
      for (int64_t d = 0; d < D; ++d) aj[d] *= alpha;
    }
    for (int64_t c = 0; c < n; ++c) {  // acc_j += weight * v_c, walking the block's values in order
      const scalar_t* vc = v + base + c * slot;
      if (next >= 0) prefetch(v + next + c * slot + kh0 * D, (kh1 - kh0) * D);
      for (int64_t j = 0; j < heads; ++j) {
        const float p = s[j * bs + c];
        const scalar_t* vj = vc + (kh0 + j / group) * D;
        float* aj = acc + j * D;
        for (int64_t d = 0; d < D; ++d) aj[d] += p * static_cast<float>(vj[d]);
      }
    }
  }
  for (int64_t j = 0; j < heads; ++j) {
    scalar_t* oj = out + (i * Hkv * group + h0 + j) * D;
    for (int64_t d = 0; d < D; ++d) oj[d] = static_cast<scalar_t>(acc[j * D + d] / l[j]);
  }
}

// Queries i0 .. i0 + nq - 1 of one sequence against KV head kh: W = nq * group <= kRows rows (row w = query
// i0 + w / group, head kh * group + w % group; rows past W repeat row 0 and are dropped). The queries are stored
// transposed (qt[d][w]), so a key's scores for all rows are D multiply-adds of a broadcast k[d] with one column
// of kRows floats (a vector register): no horizontal sums, and each key loaded once for the whole tile.
template <typename scalar_t, int64_t kD>
void tile_item(const scalar_t* q, int64_t q_sn, int64_t q_sh, const scalar_t* k, const scalar_t* v,
               const int64_t* table, const int64_t* pos, int64_t i0, int64_t nq, int64_t kh, int64_t group,
               int64_t Hkv, int64_t head_dim, int64_t bs, float scale, scalar_t* out, float* buf) {
  const int64_t D = kD > 0 ? kD : head_dim, slot = Hkv * D, W = nq * group;
  float *qt = buf, *s = qt + D * kRows, *acc = s + bs * kRows;
  float m[kRows], l[kRows], row_pos[kRows], m_new[kRows], alpha[kRows], sum[kRows];
  int64_t last = 0;
  for (int64_t w = 0; w < kRows; ++w) {
    const int64_t r = w < W ? w : 0;
    const scalar_t* qw = q + (i0 + r / group) * q_sn + (kh * group + r % group) * q_sh;
    for (int64_t d = 0; d < D; ++d) qt[d * kRows + w] = static_cast<float>(qw[d]) * scale;
    row_pos[w] = static_cast<float>(pos[r / group]);  // exact below 2^24 positions
    last = std::max(last, pos[r / group]);
    m[w] = kNegInf;
    l[w] = 0.f;
  }
  std::fill(acc, acc + W * D, 0.f);
  for (int64_t start = 0; start <= last; start += bs) {
    const int64_t n = std::min(bs, last + 1 - start);
    const int64_t base = (table[start / bs] * bs * Hkv + kh) * D;
    if (start + bs <= last)  // the next block's keys and values of head kh, fetched while this block is computed
      for (int64_t c = 0; c < bs; ++c) {
        prefetch(k + (table[start / bs + 1] * bs * Hkv + kh) * D + c * slot, D);
        prefetch(v + (table[start / bs + 1] * bs * Hkv + kh) * D + c * slot, D);
      }
    for (int64_t c0 = 0; c0 < n; c0 += 4) {  // s[c][w] = q_w . k_c, four keys at a time (four independent sums)
      const int64_t nc = std::min<int64_t>(4, n - c0);
      const scalar_t* kc[4];
      for (int64_t j = 0; j < 4; ++j) kc[j] = k + base + (c0 + std::min(j, nc - 1)) * slot;
      Rows dot0 = {}, dot1 = {}, dot2 = {}, dot3 = {};  // named, so they live in registers
      for (int64_t d = 0; d < D; ++d) {
        Rows qd;
        std::memcpy(&qd, qt + d * kRows, sizeof(qd));
        dot0 += qd * static_cast<float>(kc[0][d]);  // vector * scalar: the scalar is broadcast
        dot1 += qd * static_cast<float>(kc[1][d]);
        dot2 += qd * static_cast<float>(kc[2][d]);
        dot3 += qd * static_cast<float>(kc[3][d]);
      }
      const Rows dots[4] = {dot0, dot1, dot2, dot3};
      for (int64_t j = 0; j < nc; ++j) {  // hide (-inf) key start + c where it is past row w's position
        const float key = static_cast<float>(start + c0 + j);
        float* sc = s + (c0 + j) * kRows;
        std::memcpy(sc, &dots[j], sizeof(Rows));
        for (int64_t w = 0; w < kRows; ++w) sc[w] = key <= row_pos[w] ? sc[w] : kNegInf;
      }
    }
    std::copy(m, m + kRows, m_new);
    for (int64_t c = 0; c < n; ++c)
      for (int64_t w = 0; w < kRows; ++w) m_new[w] = std::max(m_new[w], s[c * kRows + w]);
    for (int64_t w = 0; w < kRows; ++w) {
      alpha[w] = std::exp(m[w] - m_new[w]);  // key 0 is visible to every row: m_new is finite
      sum[w] = 0.f;
    }
    for (int64_t c = 0; c < n; ++c)
      for (int64_t w = 0; w < kRows; ++w) {
        const float x = s[c * kRows + w];
        s[c * kRows + w] = x > kNegInf ? exp_nonpositive(x - m_new[w]) : 0.f;
        sum[w] += s[c * kRows + w];
      }
    for (int64_t w = 0; w < kRows; ++w) {
      l[w] = l[w] * alpha[w] + sum[w];
      m[w] = m_new[w];
    }
    for (int64_t w = 0; w < W; ++w) {  // acc_w = alpha_w acc_w + sum_c p[c][w] v_c
      float* aw = acc + w * D;
      float a[kD > 0 ? kD : 1];
      float* ar = kD > 0 ? a : aw;  // a local copy (registers) when D is known, else in place
      for (int64_t d = 0; d < D; ++d) ar[d] = aw[d] * alpha[w];
      for (int64_t c = 0; c < n; ++c) {
        const float p = s[c * kRows + w];
        const scalar_t* vc = v + base + c * slot;
        for (int64_t d = 0; d < D; ++d) ar[d] += p * static_cast<float>(vc[d]);
      }
      if (kD > 0) std::copy(ar, ar + D, aw);
    }
  }
  for (int64_t w = 0; w < W; ++w) {
    scalar_t* o = out + ((i0 + w / group) * Hkv * group + kh * group + w % group) * D;
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(acc[w * D + d] / l[w]);
  }
}

struct Item {
  int64_t i0, nq, kh0, kh1;  // queries i0 .. i0 + nq - 1, KV heads kh0 .. kh1 - 1
};

// Consecutive queries of one sequence form tiles of up to kRows / group: a tile of several queries is one item per
// KV head; a lone query (a decode row) is one item for all heads, split only when too few items would leave
// threads idle (the CPU's small version of flash-decoding's split, along heads instead of keys).
std::vector<Item> plan(const int64_t* rows, int64_t N, int64_t Hkv, int64_t group, int64_t threads) {
  const int64_t kTile = std::max<int64_t>(1, kRows / group);  // queries per tile: their heads fill kRows rows
  std::vector<std::pair<int64_t, int64_t>> tiles;
  for (int64_t i = 0; i < N;) {
    int64_t j = i + 1;
    while (j < N && j - i < kTile && rows[j] == rows[i]) ++j;
    tiles.emplace_back(i, j - i);
    i = j;
  }
  int64_t work = 0;
  for (const auto& t : tiles) work += t.second == 1 ? 1 : Hkv;
  const int64_t splits = std::clamp<int64_t>((4 * threads + work - 1) / work, 1, Hkv);
  const int64_t per = (Hkv + splits - 1) / splits;
  std::vector<Item> items;
  for (const auto& t : tiles)
    for (int64_t kh = 0; kh < Hkv; kh += t.second == 1 ? per : 1)
      items.push_back({t.first, t.second, kh, std::min(Hkv, kh + (t.second == 1 ? per : 1))});
  return items;
}

at::Tensor paged_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                           const at::Tensor& block_tables, const at::Tensor& query_row, const at::Tensor& query_pos,
                           double scale) {
  TORCH_CHECK_VALUE(q.dim() == 4 && q.size(0) == 1 && q.stride(3) == 1,
                    "q must be (1, H, N, D) with a contiguous last dim");
  TORCH_CHECK_VALUE(k_pool.dim() == 4 && k_pool.is_contiguous() && v_pool.sizes() == k_pool.sizes() &&
                        v_pool.is_contiguous(),
                    "k_pool and v_pool must be one contiguous (blocks, block_size, Hkv, D)");
  TORCH_CHECK_VALUE(q.scalar_type() == k_pool.scalar_type() && q.scalar_type() == v_pool.scalar_type(),
                    "q, k_pool and v_pool must share one dtype");
  const int64_t H = q.size(1), N = q.size(2), D = q.size(3), Hkv = k_pool.size(2), bs = k_pool.size(1);
  TORCH_CHECK_VALUE(k_pool.size(3) == D && Hkv > 0 && H % Hkv == 0, "k_pool's (Hkv, D) must fit q's (H, D)");
  for (const at::Tensor* t : {&block_tables, &query_row, &query_pos})
    TORCH_CHECK_VALUE(t->scalar_type() == at::kLong && t->is_contiguous(), "indices must be contiguous int64");
  TORCH_CHECK_VALUE(block_tables.dim() == 2 && query_row.dim() == 1 && query_pos.dim() == 1 &&
                        query_row.size(0) == N && query_pos.size(0) == N,
                    "block_tables must be (R, M), query_row and query_pos (N,)");
  check_indices(block_tables, query_row, query_pos, k_pool.size(0), bs);
  // (1, H, N, D) as the model expects it, over (N, H, D) memory: merging the heads afterwards is a free view
  at::Tensor out = at::empty({1, N, H, D}, q.options()).transpose(1, 2);
  if (N == 0) return out;
  const int64_t group = H / Hkv, threads = at::get_num_threads();
  const int64_t* rows = query_row.data_ptr<int64_t>();
  const std::vector<Item> items = plan(rows, N, Hkv, group, threads);
  const int64_t buf_size = std::max(H * (2 * D + bs + 2), kRows * (2 * D + bs));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "kvgpt_paged_attention", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k_pool.data_ptr<scalar_t>();
    const scalar_t* vp = v_pool.data_ptr<scalar_t>();
    const int64_t* tables = block_tables.data_ptr<int64_t>();
    const int64_t* pos = query_pos.data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t M = block_tables.size(1), q_sn = q.stride(2), q_sh = q.stride(1);
    const float sc = static_cast<float>(scale);
    const auto decode = D == 32 ? decode_item<scalar_t, 32> : D == 64 ? decode_item<scalar_t, 64>
                      : D == 128 ? decode_item<scalar_t, 128> : decode_item<scalar_t, 0>;
    const auto tile = D == 32 ? tile_item<scalar_t, 32> : D == 64 ? tile_item<scalar_t, 64>
                    : D == 128 ? tile_item<scalar_t, 128> : tile_item<scalar_t, 0>;
    const int64_t total = static_cast<int64_t>(items.size());
    std::atomic<int64_t> next{0};  // items are taken one by one: ragged rows keep every thread busy
    at::parallel_for(0, std::min(total, threads), 1, [&](int64_t, int64_t) {
      std::vector<float> buf(buf_size);
      for (int64_t n = next++; n < total; n = next++) {
        const Item& it = items[n];
        const int64_t* table = tables + rows[it.i0] * M;
        if (it.nq == 1)
          decode(qp, q_sn, q_sh, kp, vp, table, pos[it.i0], it.i0, it.kh0, it.kh1, group, Hkv, D, bs, sc, op,
                 buf.data());
        else
          tile(qp, q_sn, q_sh, kp, vp, table, pos + it.i0, it.i0, it.nq, it.kh0, group, Hkv, D, bs, sc, op,
               buf.data());
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(kvgpt, m) {
  m.def("paged_attention(Tensor q, Tensor k_pool, Tensor v_pool, Tensor block_tables, Tensor query_row, "
        "Tensor query_pos, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(kvgpt, CPU, m) { m.impl("paged_attention", &paged_attention); }
