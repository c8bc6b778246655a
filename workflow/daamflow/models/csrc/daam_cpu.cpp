// DAAM gate on CPU, forward and analytic backward, for x of shape (B, H, n, d), contiguous, float32 or float64.
//
// The same mathematics as daamflow.models.daam._DAAMFunction (its docstring has the formulas; docs/paper-notes.md
// section 1.2-1.5 the model), organised for memory traffic and registers: each (b, h) block (n x d, contiguous) is
// taken in strips of VECS SIMD vectors of features (32 float32 with AVX-512). A strip's n rows are read once from
// memory and stay in L1; its per-feature statistics live in registers while every output of the strip is computed.
// The cost is then the arithmetic per element (about 13 vector operations forward, 20 backward, most of them the 2^x),
// which the float32 code keeps low with AVX-512 where the CPU has it (exp2_nonpos, inv_sqrt).
// The forward writes y (and the gate G only when asked); the backward re-reads x (nothing but x is saved: the
// statistics are recomputed), reads dy and writes dx. That is the traffic floor: 2 + 3 tensors (large calls write
// with streaming stores, which spare the read a normal store makes first).
// The parameter gradients are sums over the batch, taken in an order fixed by the shape alone (see backward), so the
// result does not depend on the number of threads.
//
// Built by daamflow/models/_kernels.py (plain C ABI, loaded with ctypes). A head of one layer gives s = 0 and
// x - mu = 0 exactly (as the eager path): u = -delta r sqrt(kappa), the gate is 1 at delta = 0 and the gradient on
// delta 0 there.
//
// The score is kept in base 2, u' = u sqrt(log2 e), so that G = 2^(-u'^2) (see _DAAMFunction); the sums P1', P2' over
// u' are converted once per (b, h, feature).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace {

constexpr double LOG2E = 1.4426950408889634;

// One SIMD register of T in the GCC/Clang vector extension: AVX-512, else AVX, else SSE width.
#if defined(__AVX512F__)
constexpr int VEC_BYTES = 64;
#elif defined(__AVX__)
constexpr int VEC_BYTES = 32;
#else
constexpr int VEC_BYTES = 16;
#endif
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(VEC_BYTES)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t LANES = VEC_BYTES / sizeof(T);

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
inline Vec<T> splat(T s) {
  return Vec<T>{} + s;
}

// A store of one vector; `stream`: a non-temporal one, which needs p aligned to the vector (see STREAM_BYTES).
template <typename T>
inline void put(T* p, Vec<T> v, bool stream) {
  if (stream) {
    if constexpr (std::is_same_v<T, float>) {
#if defined(__AVX512F__)
      return _mm512_stream_ps(p, (__m512)v);
#elif defined(__AVX__)
      return _mm256_stream_ps(p, (__m256)v);
#elif defined(__SSE2__)
      return _mm_stream_ps(p, (__m128)v);
#endif
    } else {
#if defined(__AVX512F__)
      return _mm512_stream_pd(p, (__m512d)v);
#elif defined(__AVX__)
      return _mm256_stream_pd(p, (__m256d)v);
#elif defined(__SSE2__)
      return _mm_stream_pd(p, (__m128d)v);
#endif
    }
  }
  std::memcpy(p, &v, sizeof v);
}

// 2^t for t <= 0 (t = -u'^2) in float32: t = k + f, k = round(t), |f| <= 1/2; 2^f by a degree-6 polynomial (a
// weighted least-squares fit of 2^f on Chebyshev nodes of [-1/2, 1/2]; relative error < 1e-7 evaluated in float32,
// about the library exp2's 1 ulp), scaled by 2^k. A NaN stays NaN.
// With AVX-512: k by vrndscaleps, 2^k applied by vscalefps (underflowing to subnormals and 0 as exp2 does; t is
// clamped at -1e30, so that -inf gives 0, not inf - inf). Without: adding MAGIC = 1.5 2^23 + 127 rounds t to an integer
// whose low mantissa bits hold k + 127, the exponent of 2^k, shifted into place by 23; t is clamped at -125 (a gate
// below 2^-125 = 2.4e-38 is returned as that).
inline Vec<float> exp2_nonpos(Vec<float> t) {
  const auto poly = [](Vec<float> f) {
    Vec<float> p = splat(1.5337577e-4f);
    p = p * f + 1.3399860e-3f;
    p = p * f + 9.6185198e-3f;
    p = p * f + 5.5503290e-2f;
    p = p * f + 2.4022646e-1f;
    p = p * f + 6.9314718e-1f;
    return p * f + 1.0f;
  };
#if defined(__AVX512F__)
  const __m512 tc = _mm512_max_ps(_mm512_set1_ps(-1e30f), (__m512)t);  // this operand order passes a NaN through
  const __m512 k = _mm512_roundscale_ps(tc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return (Vec<float>)_mm512_scalef_ps((__m512)poly((Vec<float>)_mm512_sub_ps(tc, k)), k);
#else
  const Vec<float> magic = splat(12583039.0f), bottom = splat(-125.0f);
  t = bottom > t ? bottom : t;
  const Vec<float> m = magic + t;
  typedef uint32_t U __attribute__((vector_size(VEC_BYTES)));
  return poly(t - (m - magic)) * (Vec<float>)((U)m << 23);  // t - k is exact (Sterbenz)
#endif
}

// float64: the reference-precision path (tests), the library's exp2.
inline Vec<double> exp2_nonpos(Vec<double> t) {
  Vec<double> r = {};
  for (int64_t i = 0; i < LANES<double>; ++i) r[i] = std::exp2(t[i]);
  return r;
}

// 1 / sqrt(v) for v > 0. float32 with AVX-512: vrsqrt14ps and a Newton step (within about 1 ulp; a square root and a
// division cost several times more, once per feature of every block). Otherwise the correctly rounded operations.
template <typename T>
inline Vec<T> inv_sqrt(Vec<T> v) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    const Vec<float> y = (Vec<float>)_mm512_rsqrt14_ps((__m512)v);
    return (y * 0.5f) * (1.0f - (v * y) * y) + y;
  }
#endif
  Vec<T> r = {};
  for (int64_t i = 0; i < LANES<T>; ++i) r[i] = T(1) / std::sqrt(v[i]);  // vectorised (-fno-math-errno)
  return r;
}

// A strip is VECS vectors of features side by side: their independent chains (the 2^x polynomial) overlap.
constexpr int VECS = 2;
template <typename T>
constexpr int64_t WIDTH = VECS * LANES<T>;

// Per-feature constants of one strip: the score u' = x ax + c (ax = a = r sqrt(kappa'), c = -(mu + delta) a; for a
// head of one layer ax = 0 and c = -delta a, so that x - mu is exactly 0), and for the backward a, mu and
// cs = 2 ln2 sign(s) r^2 / n.
template <typename T>
struct Strip {
  Vec<T> ax[VECS], c[VECS], a[VECS], mu[VECS], cs[VECS];
};

// The statistics of the strip of rows x[l * ld, l * ld + WIDTH), l < n: r = (|s| + 1e-8 + eps)^(-1/2) with
// n s = S2 - S1^2 / n (the eager path's formula, see daam.py; a contracted FMA in it multiplies by 1/n = 1 exactly for
// n = 1, giving s = 0). delta, sk: the strip's delta and sqrt(kappa').
template <typename T>
inline Strip<T> strip_stats(const T* x, int64_t ld, int64_t n, const T* delta, const T* sk, T floor_) {
  constexpr int64_t L = LANES<T>;
  const T inv_n = T(1) / T(n);
  Vec<T> s1[VECS] = {}, s2[VECS] = {};
  for (int64_t l = 0; l < n; ++l)
    for (int k = 0; k < VECS; ++k) {
      const Vec<T> v = load(x + l * ld + k * L);
      s1[k] += v;
      s2[k] += v * v;
    }
  typedef std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t> Bits __attribute__((vector_size(VEC_BYTES)));
  const Vec<T> zero = {}, one = splat(T(1)), abs_mask = (Vec<T>)((Bits{} - 1) >> 1);
  Strip<T> st;
  for (int k = 0; k < VECS; ++k) {
    const Vec<T> sn = s2[k] - (s1[k] * s1[k]) * inv_n;
    const Vec<T> r = inv_sqrt<T>((Vec<T>)((Bits)sn & (Bits)abs_mask) * inv_n + floor_);
    const Vec<T> dl = load(delta + k * L);
    st.mu[k] = s1[k] * inv_n;
    st.a[k] = r * load(sk + k * L);
    st.ax[k] = n > 1 ? st.a[k] : zero;
    st.c[k] = zero - (n > 1 ? s1[k] * inv_n + dl : dl) * st.a[k];
    st.cs[k] = (sn > zero ? one : (sn < zero ? -one : zero)) * (r * r) * (T(2 / LOG2E) * inv_n);
  }
  return st;
}

// A buffer of `size` T of the calling thread (slot: which of its buffers), kept across calls: a fresh allocation of
// this size would cost page faults on every call.
template <typename T>
T* scratch(int64_t size, int slot) {
  thread_local std::vector<T> buffers[2];
  if (int64_t(buffers[slot].size()) < size) buffers[slot].resize(size);
  return buffers[slot].data();
}

// sqrt(kappa') for every (head, feature): kappa' = log2(e) kappa, kappa = 1 / (2 xi), or 1 / (2 xi^2) (prose formula).
template <typename T>
const T* sqrt_kappa(const T* __restrict xi, int64_t size, bool squared) {
  T* __restrict sk = scratch<T>(size, 0);
#pragma omp simd
  for (int64_t i = 0; i < size; ++i) sk[i] = std::sqrt(T(0.5 * LOG2E) / (squared ? xi[i] * xi[i] : xi[i]));
  return sk;
}

// A call whose tensors (inputs and outputs) exceed this many bytes, a common last-level cache size, writes its output
// with non-temporal stores: the output would leave the cache before anything reads it, and a normal store first reads
// each line it writes (one more tensor of traffic). Smaller calls (a training batch) leave the output in cache.
// Streaming needs every vector aligned: the outputs 64-byte aligned and d a multiple of WIDTH.
constexpr int64_t STREAM_BYTES = int64_t(32) << 20;

template <typename T>
bool use_streaming(int64_t tensors, int64_t numel, int64_t d, std::initializer_list<const T*> outs) {
  if (tensors * numel * int64_t(sizeof(T)) <= STREAM_BYTES || d % WIDTH<T>) return false;
  return std::all_of(outs.begin(), outs.end(), [](const T* p) { return !p || !(reinterpret_cast<uintptr_t>(p) & 63); });
}

// Orders a thread's streaming stores before the end of the parallel region (they bypass the usual store ordering).
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Software prefetch AHEAD bytes ahead in each row of a block's input tensors (x, and dy in the backward), past a row's
// end into the same row of the block processed next (`next` elements on; 0: none). A row of a common size (1024 float32)
// is one 4 KiB page, at whose end the hardware prefetcher stops: measured 19 % off the forward, 11 % off the backward
// at (256, 24, 1024), one thread (1 and 4 KiB ahead: less).
constexpr int64_t AHEAD = 2048;

template <typename T>
struct Ahead {
  const T* in[2];
  int64_t next;
};

// One (b, h) block, n x d: the strips of its full WIDTHs in order, each as body(j, stats), the statistics of the next
// strip computed before the current strip's rows, so that their long dependency chain (the sums over the rows, the
// inverse square root) overlaps those rows instead of stalling the next strip; then the last w < WIDTH features, if
// any, as tail(j, w). x: the block's x; delta, sk: its head's delta and sqrt(kappa').
template <typename T, typename Body, typename TailBody>
inline void for_strips(const T* x, int64_t n, int64_t d, const T* delta, const T* sk, T floor_, const Ahead<T>& ahead,
                       Body body, TailBody tail) {
  constexpr int64_t W = WIDTH<T>;
  const int64_t full = d - d % W;
  Strip<T> next;
  if (full) next = strip_stats(x, d, n, delta, sk, floor_);
  for (int64_t j = 0; j < full; j += W) {
    const int64_t at = j + AHEAD / int64_t(sizeof(T)), at_off = at < d ? at : ahead.next + at - d;
    for (const T* in : ahead.in)
      if (in)
        for (int64_t l = 0; l < n; ++l)
          for (int64_t i = 0; i < W; i += 64 / int64_t(sizeof(T))) __builtin_prefetch(in + at_off + l * d + i);
    const Strip<T> st = next;
    if (j + W < full) next = strip_stats(x + j + W, d, n, delta + j + W, sk + j + W, floor_);
    body(j, st);
  }
  if (full < d) tail(full, d - full);
}

// The last w < WIDTH features of a block go through the same strip code on a zero-padded copy (ld = WIDTH): Tail
// holds the copies of one thread, `in` the inputs (x, and dy in the backward), `out` the outputs.
template <typename T>
struct Tail {
  static constexpr int64_t W = WIDTH<T>;
  std::vector<T> in[2], out[2];
  T delta[W], sk[W];

  explicit Tail(int64_t n) {
    for (auto* v : {&in[0], &in[1], &out[0], &out[1]}) v->assign(n * W, T(0));
  }
  // copies rows of src (stride d), w values each, into dst, leaving the padding as it is
  static void gather(std::vector<T>& dst, const T* src, int64_t n, int64_t d, int64_t w) {
    for (int64_t l = 0; l < n; ++l) std::memcpy(dst.data() + l * W, src + l * d, w * sizeof(T));
  }
  static void scatter(T* dst, const std::vector<T>& src, int64_t n, int64_t d, int64_t w) {
    for (int64_t l = 0; l < n; ++l) std::memcpy(dst + l * d, src.data() + l * W, w * sizeof(T));
  }
  // the statistics of the copy in in[0], with delta and sqrt(kappa') padded by 0 and 1 (finite in the padding)
  Strip<T> stats(const T* delta_j, const T* sk_j, int64_t n, int64_t w, T floor_) {
    for (int64_t i = 0; i < W; ++i) {
      delta[i] = i < w ? delta_j[i] : T(0);
      sk[i] = i < w ? sk_j[i] : T(1);
    }
    return strip_stats(in[0].data(), W, n, delta, sk, floor_);
  }
};

// y (and the gate) of one strip: rows of x at stride ldx, of the outputs at stride ldo.
template <typename T, bool WITH_GATE>
inline void forward_strip(const Strip<T>& st, const T* x, int64_t ldx, T* y, T* gate, int64_t ldo, int64_t n,
                          bool stream) {
  constexpr int64_t L = LANES<T>;
  for (int64_t l = 0; l < n; ++l)
    for (int k = 0; k < VECS; ++k) {
      const Vec<T> v = load(x + l * ldx + k * L);
      const Vec<T> u = v * st.ax[k] + st.c[k];
      const Vec<T> g = exp2_nonpos(Vec<T>{} - u * u);
      put(y + l * ldo + k * L, v * g, stream);
      if (WITH_GATE) put(gate + l * ldo + k * L, g, stream);
    }
}

// Parallel over the (b, h) blocks in memory order (each thread streams one contiguous range).
template <typename T, bool WITH_GATE>
void forward(const T* x, const T* delta, const T* xi, T* y, T* gate, int64_t B, int64_t H, int64_t n, int64_t d,
             double eps, bool squared, int threads) {
  constexpr int64_t W = WIDTH<T>;
  const T floor_ = T(1e-8 + eps);
  const T* sk = sqrt_kappa(xi, H * d, squared);
  const bool stream = use_streaming<T>(WITH_GATE ? 3 : 2, B * H * n * d, d, {y, gate});
#pragma omp parallel num_threads(threads) if (B * H * n * d > 65536)
  {
    Tail<T> tail(d % W ? n : 0);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < B * H; ++blk) {
      const int64_t h = blk % H, off = blk * n * d;
      for_strips(
          x + off, n, d, delta + h * d, sk + h * d, floor_, Ahead<T>{{x + off, nullptr}, blk + 1 < B * H ? n * d : 0},
          [&](int64_t j, const Strip<T>& st) {
            forward_strip<T, WITH_GATE>(st, x + off + j, d, y + off + j, WITH_GATE ? gate + off + j : nullptr, d, n,
                                        stream);
          },
          [&](int64_t j, int64_t w) {
            Tail<T>::gather(tail.in[0], x + off + j, n, d, w);
            const Strip<T> st = tail.stats(delta + h * d + j, sk + h * d + j, n, w, floor_);
            forward_strip<T, WITH_GATE>(st, tail.in[0].data(), W, tail.out[0].data(), tail.out[1].data(), W, n, false);
            Tail<T>::scatter(y + off + j, tail.out[0], n, d, w);
            if (WITH_GATE) Tail<T>::scatter(gate + off + j, tail.out[1], n, d, w);
          });
    }
    if (stream) stream_fence();
  }
}

// acc[0, w) += v[0, w) in double, v: the strip's VECS vectors.
template <typename T>
inline void accumulate(double* __restrict acc, const Vec<T>* v, int64_t w) {
  T vals[WIDTH<T>];
  std::memcpy(vals, v, sizeof vals);
#pragma omp simd
  for (int64_t i = 0; i < w; ++i) acc[i] += double(vals[i]);
}

// With q = dy y and, per (b, h, feature), rk = r sqrt(kappa), P1 = sum_l q u, P2 = sum_l q u^2:
//   g_delta = sum_b 2 rk P1,  g_xi = sum_b P2 / xi (2 P2 / xi for xi^2),  g_s = sign(s) r^2 P2,
//   dx = dy G - 2 rk q u + (2 g_s / n) (x - mu) + (2 rk P1) / n.
// In base 2 (a = rk sqrt(log2 e), u' = u sqrt(log2 e)): 2 rk P1 = 2 ln2 a P1', P2 = ln2 P2', 2 rk q u = 2 ln2 a q u',
// 2 g_s / n = cs P2'.
// One strip: adds its g_delta and P2' (w features) to acc_gd, acc_p2; writes dx (rows at stride ldo) when gx is set.
// buf: 2 VECS n vectors, dy G and q u' of every row, kept for the dx pass.
template <typename T>
inline void backward_strip(const Strip<T>& st, const T* x, const T* gy, int64_t ldx, T* gx, int64_t ldo, int64_t n,
                           bool stream, Vec<T>* buf, double* acc_gd, double* acc_p2, int64_t w) {
  constexpr int64_t L = LANES<T>;
  const T inv_n = T(1) / T(n), ln2x2 = T(2 / LOG2E);
  Vec<T> p1[VECS] = {}, p2[VECS] = {};
  for (int64_t l = 0; l < n; ++l)
    for (int k = 0; k < VECS; ++k) {
      const Vec<T> v = load(x + l * ldx + k * L);
      const Vec<T> u = v * st.ax[k] + st.c[k];
      const Vec<T> gyg = load(gy + l * ldx + k * L) * exp2_nonpos(Vec<T>{} - u * u);
      const Vec<T> qu = gyg * (v * u);
      p1[k] += qu;
      p2[k] += qu * u;
      buf[(2 * l) * VECS + k] = gyg;
      buf[(2 * l + 1) * VECS + k] = qu;
    }
  Vec<T> a2[VECS], gdb[VECS], cx[VECS], e[VECS];
  for (int k = 0; k < VECS; ++k) {
    a2[k] = ln2x2 * st.a[k];
    gdb[k] = a2[k] * p1[k];  // g_delta of this b
    cx[k] = st.cs[k] * p2[k];
    e[k] = gdb[k] * inv_n - cx[k] * st.mu[k];
  }
  accumulate<T>(acc_gd, gdb, w);
  accumulate<T>(acc_p2, p2, w);
  if (!gx) return;
  for (int64_t l = 0; l < n; ++l)
    for (int k = 0; k < VECS; ++k)
      put(gx + l * ldo + k * L,
          buf[(2 * l) * VECS + k] - a2[k] * buf[(2 * l + 1) * VECS + k] + (cx[k] * load(x + l * ldx + k * L) + e[k]),
          stream);
}

// The batch sums: tasks (batch chunk, head), the chunks fixed by the shape alone (about 32 tasks, each of at least
// CHUNK_ROWS rows of x per feature, so that zeroing and adding up its partial row costs little next to its work), each
// summing its b in order into its own row of a partial-sum buffer; the rows are added in order at the end. The result
// is the same for any number of threads. (A task's rows, 2 d doubles, stay in L1; taking the blocks in memory order
// instead would sum into all H heads' rows, measured slower.)
constexpr int64_t CHUNK_ROWS = 32;

template <typename T>
void backward(const T* x, const T* gy, const T* delta, const T* xi, T* gx, T* g_delta, T* g_xi, int64_t B, int64_t H,
              int64_t n, int64_t d, double eps, bool squared, int threads) {
  constexpr int64_t W = WIDTH<T>;
  const T floor_ = T(1e-8 + eps);
  const int64_t hd = H * d;
  const T* sk = sqrt_kappa(xi, hd, squared);
  const int64_t chunks = std::max<int64_t>(1, std::min({B, (32 + H - 1) / H, B * n / CHUNK_ROWS}));
  const int64_t per = (B + chunks - 1) / chunks;
  double* part = scratch<double>(2 * chunks * hd, 1);  // task t: g_delta row at 2 t d, P2' row after it
  const bool stream = gx && use_streaming<T>(3, B * H * n * d, d, {gx});
  const double c_xi = (squared ? 2.0 : 1.0) / LOG2E;
#pragma omp parallel num_threads(threads) if (B * H * n * d > 65536)
  {
    std::vector<Vec<T>> buf(2 * VECS * n);
    Tail<T> tail(d % W ? n : 0);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < chunks * H; ++task) {
      const int64_t c = task / H, h = task % H;
      double* acc_gd = part + 2 * task * d;
      double* acc_p2 = acc_gd + d;
      std::fill(acc_gd, acc_gd + 2 * d, 0.0);
      for (int64_t b = c * per; b < std::min(B, (c + 1) * per); ++b) {
        const int64_t off = (b * H + h) * n * d;
        T* gx_b = gx ? gx + off : nullptr;
        for_strips(
            x + off, n, d, delta + h * d, sk + h * d, floor_,
            Ahead<T>{{x + off, gy + off}, b + 1 < std::min(B, (c + 1) * per) ? H * n * d : 0},
            [&](int64_t j, const Strip<T>& st) {
              backward_strip(st, x + off + j, gy + off + j, d, gx_b ? gx_b + j : nullptr, d, n, stream, buf.data(),
                             acc_gd + j, acc_p2 + j, W);
            },
            [&](int64_t j, int64_t w) {
              Tail<T>::gather(tail.in[0], x + off + j, n, d, w);
              Tail<T>::gather(tail.in[1], gy + off + j, n, d, w);
              const Strip<T> st = tail.stats(delta + h * d + j, sk + h * d + j, n, w, floor_);
              backward_strip(st, tail.in[0].data(), tail.in[1].data(), W, gx_b ? tail.out[0].data() : nullptr, W, n,
                             false, buf.data(), acc_gd + j, acc_p2 + j, w);
              if (gx_b) Tail<T>::scatter(gx_b + j, tail.out[0], n, d, w);
            });
      }
    }
    if (stream) stream_fence();
#pragma omp for collapse(2) schedule(static)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < d; ++j) {  // rows (c, h) of every chunk c, in order
        double gd = 0.0, p2 = 0.0;
        for (int64_t c = 0; c < chunks; ++c) {
          gd += part[2 * (c * H + h) * d + j];
          p2 += part[(2 * (c * H + h) + 1) * d + j];
        }
        g_delta[h * d + j] = T(gd);
        g_xi[h * d + j] = T(p2 * c_xi / double(xi[h * d + j]));
      }
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
  backward<float>(x, gy, delta, xi, gx, g_delta, g_xi, B, H, n, d, eps, squared != 0, threads);
}

void daam_backward_f64(const double* x, const double* gy, const double* delta, const double* xi, double* gx,
                       double* g_delta, double* g_xi, int64_t B, int64_t H, int64_t n, int64_t d, double eps,
                       int squared, int threads) {
  backward<double>(x, gy, delta, xi, gx, g_delta, g_xi, B, H, n, d, eps, squared != 0, threads);
}

}  // extern "C"
