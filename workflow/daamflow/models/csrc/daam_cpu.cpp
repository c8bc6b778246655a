// DAAM gate on CPU, forward and analytic backward, for x of shape (B, H, n, d), contiguous, float32 or float64.
//
// The same mathematics as daamflow.models.daam._DAAMFunction (its docstring has the formulas; docs/paper-notes.md
// section 1.2-1.5 the model), organised for memory traffic: the (b, h) blocks (n x d, contiguous) are taken in
// memory order, each in tiles of at most TILE features; a tile's n x TILE values of x are read once from memory and
// stay in L1 while the per-feature statistics and then every output of the tile are computed; the next tile is
// prefetched meanwhile. The forward writes y (and the gate G only when asked); the backward re-reads x (nothing but x
// is saved: the statistics are recomputed from the cached block), reads dy and writes dx. That is the traffic floor:
// 2 + 3 tensors (large calls write with streaming stores, which spare the read a normal store makes first).
// The parameter gradients are sums over the batch, taken in an order fixed by the shape alone (see backward), so the
// result does not depend on the number of threads.
//
// Built by daamflow/models/_kernels.py (plain C ABI, loaded with ctypes). A head of one layer gives s = 0 and
// x - mu = 0 exactly (mu = x; a contracted FMA in S2 - S1^2 / n multiplies by 1/n = 1 exactly), as the eager path:
// u = -delta r sqrt(kappa), the gate is 1 at delta = 0 and the gradient on delta 0 there.
//
// The score is kept in base 2, u' = u sqrt(log2 e), so that G = 2^(-u'^2) (see _DAAMFunction); the sums P1', P2' over
// u' are converted once per (b, h, feature).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t TILE = 256;
constexpr double LOG2E = 1.4426950408889634;

// 2^t for t <= 0 in float32: t = k + f, k = round(t), |f| <= 1/2; 2^f by a degree-6 polynomial (a weighted
// least-squares fit of 2^f on Chebyshev nodes of [-1/2, 1/2]; relative error < 1e-7 evaluated in float32, about the
// library exp2's 1 ulp), scaled by 2^k through the exponent bits. t is clamped at -125 (a gate below 2^-125 = 2.4e-38
// is returned as that). A NaN passes through: k converts to INT_MIN, whose shifted bits are 0.
// Written so that GCC vectorises it.
inline float exp2_nonpos(float t) {
  const float tc = t < -125.0f ? -125.0f : t;
  const float k = std::nearbyint(tc);
  const float f = tc - k;
  float p = 1.5337577e-4f;
  p = p * f + 1.3399860e-3f;
  p = p * f + 9.6185198e-3f;
  p = p * f + 5.5503290e-2f;
  p = p * f + 2.4022646e-1f;
  p = p * f + 6.9314718e-1f;
  p = p * f + 1.0f;
  uint32_t bits;
  std::memcpy(&bits, &p, sizeof bits);
  bits += static_cast<uint32_t>(static_cast<int32_t>(k)) << 23;
  float r;
  std::memcpy(&r, &bits, sizeof r);
  return r;
}

inline double exp2_nonpos(double t) { return std::exp2(t); }  // float64: the reference-precision path (tests)

// Per-feature statistics of one (b, h, tile) block: mu, r = (|s| + 1e-8 + eps)^(-1/2), sign(s), with
// n s = S2 - S1^2 / n (the eager path's formula, see daam.py).
template <typename T>
inline void block_stats(const T* __restrict x, int64_t n, int64_t d, int64_t w, T floor_, T* __restrict mu,
                        T* __restrict r, T* __restrict sgn) {
  const T inv_n = T(1) / T(n);
  T s1[TILE], s2[TILE];
#pragma omp simd
  for (int64_t j = 0; j < w; ++j) s1[j] = s2[j] = T(0);
  for (int64_t l = 0; l < n; ++l) {
    const T* xl = x + l * d;
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) {
      s1[j] += xl[j];
      s2[j] += xl[j] * xl[j];
    }
  }
#pragma omp simd
  for (int64_t j = 0; j < w; ++j) {
    const T sn = s2[j] - (s1[j] * s1[j]) * inv_n;
    mu[j] = s1[j] * inv_n;
    r[j] = T(1) / std::sqrt(std::fabs(sn) * inv_n + floor_);
    sgn[j] = T((sn > T(0)) - (sn < T(0)));
  }
}

// sqrt(kappa') for every (head, feature): kappa' = log2(e) kappa, kappa = 1 / (2 xi), or 1 / (2 xi^2) (prose formula).
template <typename T>
std::vector<T> sqrt_kappa(const T* __restrict xi, int64_t size, bool squared) {
  std::vector<T> sk(size);
#pragma omp simd
  for (int64_t i = 0; i < size; ++i) sk[i] = std::sqrt(T(0.5 * LOG2E) / (squared ? xi[i] * xi[i] : xi[i]));
  return sk;
}

// Tensors a tile loop streams through, whose next tile is prefetched while the current one is computed (one tile
// ahead covers the memory latency; the hardware prefetchers alone lose time at every tile and block boundary).
template <typename T>
struct Streams {
  const T* in[2];  // x, and dy in the backward (else null)
  T* out;          // y or dx (null: none)
};

// A call whose tensors (inputs and outputs) exceed this many bytes, a common last-level cache size, writes its output
// with non-temporal stores: the output would leave the cache before anything reads it, and a normal store first reads
// each line it writes (one more tensor of traffic). Smaller calls (a training batch) leave the output in cache.
constexpr int64_t STREAM_BYTES = int64_t(32) << 20;

// dst[0, w) = src[0, w), with streaming stores for the 64-byte-aligned (AVX: 32) full vectors where available.
inline void stream_copy(float* dst, const float* src, int64_t w) {
  int64_t j = 0;
#if defined(__AVX512F__)
  for (; j < w && (reinterpret_cast<uintptr_t>(dst + j) & 63); ++j) dst[j] = src[j];
  for (; j + 16 <= w; j += 16) _mm512_stream_ps(dst + j, _mm512_loadu_ps(src + j));
#elif defined(__AVX__)
  for (; j < w && (reinterpret_cast<uintptr_t>(dst + j) & 31); ++j) dst[j] = src[j];
  for (; j + 8 <= w; j += 8) _mm256_stream_ps(dst + j, _mm256_loadu_ps(src + j));
#endif
  for (; j < w; ++j) dst[j] = src[j];
}

inline void stream_copy(double* dst, const double* src, int64_t w) {
  int64_t j = 0;
#if defined(__AVX512F__)
  for (; j < w && (reinterpret_cast<uintptr_t>(dst + j) & 63); ++j) dst[j] = src[j];
  for (; j + 8 <= w; j += 8) _mm512_stream_pd(dst + j, _mm512_loadu_pd(src + j));
#elif defined(__AVX__)
  for (; j < w && (reinterpret_cast<uintptr_t>(dst + j) & 31); ++j) dst[j] = src[j];
  for (; j + 4 <= w; j += 4) _mm256_stream_pd(dst + j, _mm256_loadu_pd(src + j));
#endif
  for (; j < w; ++j) dst[j] = src[j];
}

// Orders a thread's streaming stores before the end of the parallel region (they bypass the usual store ordering).
inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}

template <typename T>
inline void prefetch_tile(const T* p, int64_t n, int64_t d, int64_t w, bool write) {
  for (int64_t l = 0; l < n; ++l)
    for (int64_t j = 0; j < w; j += 64 / int64_t(sizeof(T))) {
      if (write)
        __builtin_prefetch(p + l * d + j, 1, 3);
      else
        __builtin_prefetch(p + l * d + j, 0, 3);
    }
}

// One (b, h) block, n x d at offset off, tile by tile: fills a = r sqrt(kappa') and mu, calls body(j0, w, ...) per
// tile. next_off: the offset of the block processed after this one (-1: none), whose first tile is prefetched.
template <typename T, typename Body>
inline void for_tiles(const Streams<T>& st, int64_t off, int64_t next_off, int64_t n, int64_t d, T floor_,
                      const T* sk_h, Body body) {
  T mu[TILE], r[TILE], sgn[TILE], a[TILE];
  for (int64_t j0 = 0; j0 < d; j0 += TILE) {
    const int64_t w = (d - j0 < TILE) ? d - j0 : TILE;
    const int64_t pf = j0 + TILE < d ? off + j0 + TILE : next_off;
    if (pf >= 0) {
      const int64_t pw = j0 + TILE < d ? std::min(TILE, d - j0 - TILE) : std::min(TILE, d);
      for (const T* in : st.in)
        if (in) prefetch_tile(in + pf, n, d, pw, false);
      if (st.out) prefetch_tile(st.out + pf, n, d, pw, true);
    }
    block_stats(st.in[0] + off + j0, n, d, w, floor_, mu, r, sgn);
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) a[j] = r[j] * sk_h[j0 + j];
    body(j0, w, mu, r, sgn, a);
  }
}

// Parallel over the (b, h) blocks in memory order (each thread streams one contiguous range).
template <typename T, bool WITH_GATE>
void forward(const T* x, const T* delta, const T* xi, T* y, T* gate, int64_t B, int64_t H, int64_t n, int64_t d,
             double eps, bool squared, int threads) {
  const T floor_ = T(1e-8 + eps);
  const std::vector<T> sk = sqrt_kappa(xi, H * d, squared);
  const bool stream = (WITH_GATE ? 3 : 2) * B * H * n * d * int64_t(sizeof(T)) > STREAM_BYTES;
  const Streams<T> st{{x, nullptr}, stream ? nullptr : y};
#pragma omp parallel for schedule(static) num_threads(threads) if (B * H * n * d > 65536)
  for (int64_t blk = 0; blk < B * H; ++blk) {
    const int64_t h = blk % H, off = blk * n * d;
    T yt[TILE];
    const int64_t next = blk + 1 < B * H ? off + n * d : -1;
    for_tiles(st, off, next, n, d, floor_, sk.data() + h * d, [&](int64_t j0, int64_t w, const T* mu, const T*,
                                                                   const T*, const T* a) {
      const T* dl = delta + h * d + j0;
      for (int64_t l = 0; l < n; ++l) {
        const T* xl = x + off + l * d + j0;
        T* yl = stream ? yt : y + off + l * d + j0;
        T* gl = WITH_GATE ? gate + off + l * d + j0 : nullptr;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) {
          const T u = ((xl[j] - mu[j]) - dl[j]) * a[j];  // u' (sk carries sqrt(log2 e))
          const T g = exp2_nonpos(-(u * u));
          yl[j] = xl[j] * g;
          if (WITH_GATE) gl[j] = g;
        }
        if (stream) stream_copy(y + off + l * d + j0, yt, w);
      }
    });
    if (stream) stream_fence();
  }
}

// With q = dy y and, per (b, h, feature), rk = r sqrt(kappa), P1 = sum_l q u, P2 = sum_l q u^2:
//   g_delta = sum_b 2 rk P1,  g_xi = sum_b P2 / xi (2 P2 / xi for xi^2),  g_s = sign(s) r^2 P2,
//   dx = dy G - 2 rk q u + (2 g_s / n) (x - mu) + (2 rk P1) / n.
// In base 2 (a = rk sqrt(log2 e), u' = u sqrt(log2 e)): 2 rk P1 = 2 ln2 a P1', P2 = ln2 P2', 2 rk q u = 2 ln2 a q u'.
// The batch sums: tasks (batch chunk, head), the chunks fixed by the shape alone (about 32 tasks), each summing its
// b in order into its own row of a partial-sum buffer; the rows are added in order at the end. The result is the same
// for any number of threads.
template <typename T, bool WITH_DX>
void backward(const T* x, const T* gy, const T* delta, const T* xi, T* gx, T* g_delta, T* g_xi, int64_t B, int64_t H,
              int64_t n, int64_t d, double eps, bool squared, int threads) {
  const T floor_ = T(1e-8 + eps), inv_n = T(1) / T(n), ln2 = T(1 / LOG2E);
  const std::vector<T> sk = sqrt_kappa(xi, H * d, squared);
  const int64_t chunks = std::min(B, std::max<int64_t>(1, (32 + H - 1) / H)), per = (B + chunks - 1) / chunks;
  std::vector<double> part_gd(chunks * H * d, 0.0), part_p2(chunks * H * d, 0.0);
  const bool stream = WITH_DX && 3 * B * H * n * d * int64_t(sizeof(T)) > STREAM_BYTES;
#pragma omp parallel num_threads(threads) if (B * H * n * d > 65536)
  {
    // per thread: dy G and q u' of one tile of a block, kept for the dx pass
    std::vector<T> gyg_buf(WITH_DX ? n * TILE : 0), qu_buf(WITH_DX ? n * TILE : 0);
    T* gyg = gyg_buf.data();
    T* qu = qu_buf.data();
    const Streams<T> st{{x, gy}, stream ? nullptr : gx};
    T dxt[TILE];
#pragma omp for schedule(static)
    for (int64_t task = 0; task < chunks * H; ++task) {
      const int64_t c = task / H, h = task % H;
      double* acc_gd = part_gd.data() + task * d;  // row (c, h)
      double* acc_p2 = part_p2.data() + task * d;
      const int64_t b_end = std::min(B, (c + 1) * per);
      for (int64_t b = c * per; b < b_end; ++b) {
        const int64_t off = (b * H + h) * n * d;
        const int64_t next = b + 1 < b_end ? off + H * n * d : -1;
        for_tiles(st, off, next, n, d, floor_, sk.data() + h * d, [&](int64_t j0, int64_t w, const T* mu,
                                                                       const T* r, const T* sgn, const T* a) {
          const T* dl = delta + h * d + j0;
          T p1[TILE], p2[TILE], a2[TILE], cx[TILE], e[TILE];
#pragma omp simd
          for (int64_t j = 0; j < w; ++j) p1[j] = p2[j] = T(0);
          for (int64_t l = 0; l < n; ++l) {
            const T* xl = x + off + l * d + j0;
            const T* gl = gy + off + l * d + j0;
            T* gyg_l = gyg + l * TILE;
            T* qu_l = qu + l * TILE;
#pragma omp simd
            for (int64_t j = 0; j < w; ++j) {
              const T u = ((xl[j] - mu[j]) - dl[j]) * a[j];
              const T g = exp2_nonpos(-(u * u));
              const T quj = gl[j] * (xl[j] * g) * u;
              p1[j] += quj;
              p2[j] += quj * u;
              if (WITH_DX) {
                gyg_l[j] = gl[j] * g;
                qu_l[j] = quj;
              }
            }
          }
#pragma omp simd
          for (int64_t j = 0; j < w; ++j) {
            a2[j] = T(2) * ln2 * a[j];
            const T gdb = a2[j] * p1[j];                                 // g_delta of this b
            cx[j] = T(2) * ln2 * sgn[j] * r[j] * r[j] * p2[j] * inv_n;  // 2 g_s / n
            e[j] = gdb * inv_n - cx[j] * mu[j];
            acc_gd[j0 + j] += double(gdb);
            acc_p2[j0 + j] += double(p2[j]);
          }
          if (!WITH_DX) return;
          for (int64_t l = 0; l < n; ++l) {
            const T* xl = x + off + l * d + j0;
            const T* gyg_l = gyg + l * TILE;
            const T* qu_l = qu + l * TILE;
            T* dxl = stream ? dxt : gx + off + l * d + j0;
#pragma omp simd
            for (int64_t j = 0; j < w; ++j) dxl[j] = gyg_l[j] - a2[j] * qu_l[j] + cx[j] * xl[j] + e[j];
            if (stream) stream_copy(gx + off + l * d + j0, dxt, w);
          }
        });
      }
      if (stream) stream_fence();
    }
  }
  const double c_xi = (squared ? 2.0 : 1.0) / LOG2E;
  for (int64_t i = 0; i < H * d; ++i) {
    double gd = 0.0, p2 = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      gd += part_gd[c * H * d + i];
      p2 += part_p2[c * H * d + i];
    }
    g_delta[i] = T(gd);
    g_xi[i] = T(p2 * c_xi / double(xi[i]));
  }
}

}  // namespace

extern "C" {

void daam_forward_f32(const float* x, const float* delta, const float* xi, float* y, float* gate, int64_t B,
                      int64_t H, int64_t n, int64_t d, double eps, int squared, int threads) {
  (gate ? forward<float, true> : forward<float, false>)(x, delta, xi, y, gate, B, H, n, d, eps, squared != 0,
                                                        threads);
}

void daam_forward_f64(const double* x, const double* delta, const double* xi, double* y, double* gate, int64_t B,
                      int64_t H, int64_t n, int64_t d, double eps, int squared, int threads) {
  (gate ? forward<double, true> : forward<double, false>)(x, delta, xi, y, gate, B, H, n, d, eps, squared != 0,
                                                          threads);
}

void daam_backward_f32(const float* x, const float* gy, const float* delta, const float* xi, float* gx,
                       float* g_delta, float* g_xi, int64_t B, int64_t H, int64_t n, int64_t d, double eps,
                       int squared, int threads) {
  (gx ? backward<float, true> : backward<float, false>)(x, gy, delta, xi, gx, g_delta, g_xi, B, H, n, d, eps,
                                                        squared != 0, threads);
}

void daam_backward_f64(const double* x, const double* gy, const double* delta, const double* xi, double* gx,
                       double* g_delta, double* g_xi, int64_t B, int64_t H, int64_t n, int64_t d, double eps,
                       int squared, int threads) {
  (gx ? backward<double, true> : backward<double, false>)(x, gy, delta, xi, gx, g_delta, g_xi, B, H, n, d, eps,
                                                          squared != 0, threads);
}

}  // extern "C"
