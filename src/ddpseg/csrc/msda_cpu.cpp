// Single-level deformable attention sampling on the CPU: forward gather and its backward, fused.
//
// Plain C ABI over raw pointers (loaded with ctypes by ddpseg/native.py), no torch headers, so it
// builds in about a second with any C++17 compiler. The arithmetic mirrors the portable PyTorch
// path (ms_deform_attn._single_level + F.embedding_bag) operation by operation:
//
//   loc   = ref + offset / size                      (size = (W, H))
//   xy    = ((2·loc − 1 + 1)·size − 1) / 2           (grid_sample's source index, align_corners=False)
//   xy0   = floor(xy), frac = xy − xy0
//   corner columns clamp(xy0 + 1, 0, W + 1), clamp(xy0 + 2, 0, W + 1) in a map with a one-pixel zero
//   border (rows likewise); weights att·(1 − fy)·(1 − fx), att·(1 − fy)·fx, att·fy·(1 − fx), att·fy·fx
//   out   = Σ over points and corners, in that order, of weight · table row, one fused multiply-add
//           per term when the build has FMA (as the embedding_bag kernel of x86 PyTorch builds does)
//
// Built with -ffp-contract=off so no other operation is fused. The attention softmax stays in
// PyTorch (its vectorised exp is not reproduced here).
//
// Table rows are head-major: (head·(H + 2) + y)·(W + 2) + x + table_offset, each `dim` values.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define DDPSEG_AVX2 1
#endif

namespace {

template <typename T>
inline T madd(T w, T v, T acc) {
#ifdef __FMA__
  return std::fma(w, v, acc);
#else
  return acc + w * v;
#endif
}

// queries per block: a block's corners are computed in one vectorisable pass, then gathered head by
// head, so the block's projections stay in cache while each head reads its own plane of the table
constexpr int64_t kBlock = 64;

struct Layout {
  int64_t n, samp_stride, heads, points, height, width, dim, table_offset;
};

// The corners of every sample of queries [q0, q1), sample s = (q − q0)·heads·points + head·points + point.
template <typename T>
struct BlockCorners {
  std::vector<int64_t> row[4];
  std::vector<T> weight[4], fx, fy;

  explicit BlockCorners(int64_t samples) {
    for (int j = 0; j < 4; ++j) {
      row[j].resize(samples);
      weight[j].resize(samples);
    }
    fx.resize(samples);
    fy.resize(samples);
  }

  // samples of heads [m0, m1) only
  void compute(const T* samp, const T* att, const T* ref, int64_t q0, int64_t q1, int64_t m0, int64_t m1,
               const Layout& L) {
    const int64_t hp = L.heads * L.points, plane = (L.height + 2) * (L.width + 2);
    const T w = static_cast<T>(L.width), h = static_cast<T>(L.height);
    // the floors are clamped to [-1, size + 1] before the integer conversion; the corner clamps below
    // then give what clamping the unbounded floors gives
    const T x_hi = static_cast<T>(L.width + 1), y_hi = static_cast<T>(L.height + 1);
    for (int64_t q = q0; q < q1; ++q) {
      const T* off = samp + q * L.samp_stride;
      const T* a = att + q * hp;
      const T ref_x = ref[2 * q], ref_y = ref[2 * q + 1];
      const int64_t s0 = (q - q0) * hp;
      int64_t* r00 = row[0].data() + s0;
      int64_t* r01 = row[1].data() + s0;
      int64_t* r10 = row[2].data() + s0;
      int64_t* r11 = row[3].data() + s0;
      T* w00 = weight[0].data() + s0;
      T* w01 = weight[1].data() + s0;
      T* w10 = weight[2].data() + s0;
      T* w11 = weight[3].data() + s0;
      T* fxs = fx.data() + s0;
      T* fys = fy.data() + s0;
      for (int64_t k = m0 * L.points; k < m1 * L.points; ++k) {
        const T loc_x = ref_x + off[2 * k] / w;
        const T loc_y = ref_y + off[2 * k + 1] / h;
        const T grid_x = 2 * loc_x - 1;
        const T grid_y = 2 * loc_y - 1;
        const T sx = ((grid_x + 1) * w - 1) / 2;
        const T sy = ((grid_y + 1) * h - 1) / 2;
        const T floor_x = std::floor(sx), floor_y = std::floor(sy);
        const T frac_x = sx - floor_x, frac_y = sy - floor_y;
        // +1: the border
        const int64_t x0r = static_cast<int64_t>(std::min(std::max(floor_x + 1, T(-1)), x_hi));
        const int64_t y0r = static_cast<int64_t>(std::min(std::max(floor_y + 1, T(-1)), y_hi));
        const int64_t x0 = std::min<int64_t>(std::max<int64_t>(x0r, 0), L.width + 1);
        const int64_t x1 = std::min<int64_t>(std::max<int64_t>(x0r + 1, 0), L.width + 1);
        const int64_t base = (k / L.points) * plane + L.table_offset;
        const int64_t y0 = base + std::min<int64_t>(std::max<int64_t>(y0r, 0), L.height + 1) * (L.width + 2);
        const int64_t y1 = base + std::min<int64_t>(std::max<int64_t>(y0r + 1, 0), L.height + 1) * (L.width + 2);
        r00[k] = y0 + x0;
        r01[k] = y0 + x1;
        r10[k] = y1 + x0;
        r11[k] = y1 + x1;
        const T a_y0 = a[k] * (1 - frac_y);
        const T a_y1 = a[k] * frac_y;
        w00[k] = a_y0 * (1 - frac_x);
        w01[k] = a_y0 * frac_x;
        w10[k] = a_y1 * (1 - frac_x);
        w11[k] = a_y1 * frac_x;
        fxs[k] = frac_x;
        fys[k] = frac_y;
      }
    }
  }
};

// Σ a·b in kLanes interleaved partial sums (a fixed order the compiler can vectorise without
// reassociating), then the partial sums in order.
constexpr int kLanes = 8;

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T part[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes)
    for (int l = 0; l < kLanes; ++l) part[l] += a[d + l] * b[d + l];
  T sum = 0;
  for (; d < n; ++d) sum += a[d] * b[d];
  for (int l = 0; l < kLanes; ++l) sum += part[l];
  return sum;
}

#ifdef DDPSEG_AVX2
// The forward sum of one (query, head) for 32-float rows, in 4 registers: the same fused
// multiply-adds in the same order as the generic loop.
inline void gather32(const float* table, const BlockCorners<float>& c, int64_t s0, int64_t points, float* dst) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t s = s0; s < s0 + points; ++s) {
    for (int j = 0; j < 4; ++j) {
      const float* row = table + c.row[j][s] * 32;
      const __m256 w = _mm256_set1_ps(c.weight[j][s]);
      a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row), a0);
      a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 8), a1);
      a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 16), a2);
      a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 24), a3);
    }
  }
  _mm256_storeu_ps(dst, a0);
  _mm256_storeu_ps(dst + 8, a1);
  _mm256_storeu_ps(dst + 16, a2);
  _mm256_storeu_ps(dst + 24, a3);
}

// Backward of one corner for 32-float rows: g_row += w·g, and returns Σ g·row.
inline float scatter_dot32(const __m256 g[4], float w, const float* row, float* g_row) {
  const __m256 wv = _mm256_set1_ps(w);
  __m256 sum = _mm256_mul_ps(g[0], _mm256_loadu_ps(row));
  for (int i = 0; i < 4; ++i) {
    if (i > 0) sum = _mm256_fmadd_ps(g[i], _mm256_loadu_ps(row + 8 * i), sum);
    _mm256_storeu_ps(g_row + 8 * i, _mm256_fmadd_ps(wv, g[i], _mm256_loadu_ps(g_row + 8 * i)));
  }
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
  const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)));
}
#endif

template <typename F>
void parallel_for(int64_t n, int threads, F fn) {
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  if (threads == 1) {
    fn(0, 0, n);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t step = (n + threads - 1) / threads;
  for (int t = 1; t < threads; ++t) {
    const int64_t a = std::min(n, t * step), b = std::min(n, (t + 1) * step);
    pool.emplace_back(fn, t, a, b);
  }
  fn(0, 0, std::min(n, step));
  for (auto& th : pool) th.join();
}

// samp: (n, samp_stride) with offsets (heads, points, 2) first; att: (n, heads, points); ref: (n, 2).
// DIM > 0: the row length known at compile time, so a query's sum stays in registers.
template <typename T, int DIM>
void forward_impl(const T* samp, const T* att, const T* ref, const T* table, const Layout& L, T* out, int threads) {
  const int64_t dim = DIM > 0 ? DIM : L.dim;
  const int64_t hp = L.heads * L.points;
  // threads split the heads: each writes its own output columns
  parallel_for(L.heads, threads, [&](int, int64_t m0, int64_t m1) {
    BlockCorners<T> c(kBlock * hp);
    T local[DIM > 0 ? DIM : 1];
    for (int64_t qb = 0; qb < L.n; qb += kBlock) {
      const int64_t qe = std::min(L.n, qb + kBlock);
      c.compute(samp, att, ref, qb, qe, m0, m1, L);
      for (int64_t m = m0; m < m1; ++m) {
        for (int64_t q = qb; q < qe; ++q) {
          T* dst = out + (q * L.heads + m) * dim;
          T* acc = DIM > 0 ? local : dst;
          std::fill(acc, acc + dim, T(0));
          const int64_t s0 = (q - qb) * hp + m * L.points;
#ifdef DDPSEG_AVX2
          if constexpr (std::is_same_v<T, float> && DIM == 32) {
            gather32(table, c, s0, L.points, dst);
            continue;
          }
#endif
          for (int64_t s = s0; s < s0 + L.points; ++s) {
            for (int j = 0; j < 4; ++j) {
              const T* row = table + c.row[j][s] * dim;
              const T wj = c.weight[j][s];
              for (int64_t d = 0; d < dim; ++d) acc[d] = madd(wj, row[d], acc[d]);
            }
          }
          if (DIM > 0) std::copy(acc, acc + dim, dst);
        }
      }
    }
  });
}

template <typename T>
void forward(const T* samp, const T* att, const T* ref, const T* table, const Layout& L, T* out, int threads) {
  if (L.dim == 32)
    forward_impl<T, 32>(samp, att, ref, table, L, out, threads);
  else
    forward_impl<T, 0>(samp, att, ref, table, L, out, threads);
}

// grad: (n, heads, dim) gradient of the output. Accumulates into g_table (rows, dim) and writes g_samp
// (n, samp_stride = heads·points·3): offsets' gradient (heads, points, 2), then the attention logits'
// (heads, points), through the softmax whose output is `att`.
template <typename T>
void backward(const T* samp, const T* att, const T* ref, const T* table, const T* grad, const Layout& L, int64_t rows,
              T* g_table, T* g_samp, int threads) {
  (void)rows;  // g_table's row count: every row a sample reaches exists (the border absorbs the rest)
  const int64_t dim = L.dim, hp = L.heads * L.points;
  // threads split the heads: a head's samples scatter only into its own plane of g_table and write
  // only its own entries of g_samp, so nothing is shared and the sums do not depend on the thread count
  T* gt = g_table;
  parallel_for(L.heads, threads, [&](int, int64_t m0, int64_t m1) {
    BlockCorners<T> c(kBlock * hp);
    std::vector<T> g_att(L.points);
    for (int64_t qb = 0; qb < L.n; qb += kBlock) {
      const int64_t qe = std::min(L.n, qb + kBlock);
      c.compute(samp, att, ref, qb, qe, m0, m1, L);
      for (int64_t m = m0; m < m1; ++m) {
        for (int64_t q = qb; q < qe; ++q) {
          T* g_off = g_samp + q * L.samp_stride;
          T* g_logit = g_off + 2 * hp;
          const T* a = att + q * hp;
          const T* g = grad + (q * L.heads + m) * dim;
#ifdef DDPSEG_AVX2
          __m256 g8[4];
          constexpr bool fast = std::is_same_v<T, float>;
          if constexpr (fast)
            if (dim == 32)
              for (int i = 0; i < 4; ++i) g8[i] = _mm256_loadu_ps(g + 8 * i);
#endif
          T weighted = 0;
          for (int64_t p = 0; p < L.points; ++p) {
            const int64_t k = m * L.points + p, s = (q - qb) * hp + k;
            T gw[4];
            for (int j = 0; j < 4; ++j) {
              const int64_t r = c.row[j][s] * dim;
              const T wj = c.weight[j][s];
              T* g_row = gt + r;
#ifdef DDPSEG_AVX2
              if constexpr (fast) {
                if (dim == 32) {
                  gw[j] = scatter_dot32(g8, wj, table + r, g_row);
                  continue;
                }
              }
#endif
              for (int64_t d = 0; d < dim; ++d) g_row[d] += wj * g[d];
              gw[j] = dot(g, table + r, dim);
            }
            const T fx = c.fx[s], fy = c.fy[s];
            const T a_y0 = a[k] * (1 - fy), a_y1 = a[k] * fy;
            const T g_y0 = gw[0] * (1 - fx) + gw[1] * fx;
            const T g_y1 = gw[2] * (1 - fx) + gw[3] * fx;
            g_off[2 * k] = a_y0 * (gw[1] - gw[0]) + a_y1 * (gw[3] - gw[2]);
            g_off[2 * k + 1] = a[k] * (g_y1 - g_y0);
            g_att[p] = g_y0 * (1 - fy) + g_y1 * fy;
            weighted += a[k] * g_att[p];
          }
          for (int64_t p = 0; p < L.points; ++p) {
            const int64_t k = m * L.points + p;
            g_logit[k] = a[k] * (g_att[p] - weighted);
          }
        }
      }
    }
  });
}

}  // namespace

extern "C" {

int ddpseg_msda_has_fma() {
#ifdef __FMA__
  return 1;
#else
  return 0;
#endif
}

#define DDPSEG_MSDA(SUFFIX, T)                                                                                      \
  void ddpseg_msda_forward_##SUFFIX(const T* samp, const T* att, const T* ref, const T* table, int64_t n,           \
                                    int64_t samp_stride, int64_t heads, int64_t points, int64_t height,             \
                                    int64_t width, int64_t dim, int64_t table_offset, T* out, int threads) {        \
    forward<T>(samp, att, ref, table, Layout{n, samp_stride, heads, points, height, width, dim, table_offset}, out, \
               threads);                                                                                            \
  }                                                                                                                 \
  void ddpseg_msda_backward_##SUFFIX(const T* samp, const T* att, const T* ref, const T* table, const T* grad,      \
                                     int64_t n, int64_t samp_stride, int64_t heads, int64_t points, int64_t height, \
                                     int64_t width, int64_t dim, int64_t rows, T* g_table, T* g_samp,               \
                                     int threads) {                                                                 \
    backward<T>(samp, att, ref, table, grad, Layout{n, samp_stride, heads, points, height, width, dim, 0}, rows,    \
                g_table, g_samp, threads);                                                                          \
  }

DDPSEG_MSDA(f32, float)
DDPSEG_MSDA(f64, double)

}  // extern "C"
