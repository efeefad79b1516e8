// The fast CPU implementation of wbench's noise stream (the reference is wbench/noise_stream.py).
//
// Row g of a call is the noisy copy addressed by (seed, index[g], copy[g], tag): its 32-bit words are
// Philox4x32-10 (Salmon et al., SC'11) under key (seed, index[g]) at counters (j, copy[g], tag, 0),
// j = 0, 1, ...; variable p is word p % 4 of block p / 4. A word w becomes a unit-scale Laplace
// variable by noise_stream.laplace_from_words: V = ((w & (2^23 - 1)) + 1/2) 2^-23, log V by the same
// float32 operations in the same order (Cody-Waite reduction and an atanh series), negated when bit 31
// of w is set. The copy is then (Levine & Feizi, Definition 3.1, with delta = s L) x plus, in this
// order, + s v[i,j], - s v[i-1,j], + s h[i,j], - s h[i,j-1] (v: the first C (H-1) W variables,
// h: the next C H W as (C, H, W), whose last column is drawn but unused), or x + s L for pixel noise.
// Images are float32 or float64 (the variables are float32, widened before scaling). Every operation
// is a rounded IEEE operation without contraction (-ffp-contract=off), so the copies equal the
// reference's bit for bit. Rows are independent: at::parallel_for splits them over torch's
// own intra-op threads, and the result depends on neither the split nor the thread count.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// one binary, the widest vector unit of the machine it runs on (AVX-512, AVX2 or SSE2)
#define WB_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define WB_CLONES
#endif
#define WB_INLINE static inline __attribute__((always_inline))

// Philox4x32-10 of counters (j, c1, c2, 0) for j < nblocks under key (k0, k1); out[4 j + i] = word i.
WB_INLINE void philox_words(uint32_t key0, uint32_t key1, uint32_t c1, uint32_t c2, int64_t j0, int64_t nblocks,
                            uint32_t* out) {
  for (int64_t j = j0; j < nblocks; j++) {
    uint32_t x0 = static_cast<uint32_t>(j), x1 = c1, x2 = c2, x3 = 0u, k0 = key0, k1 = key1;
    for (int r = 0; r < 10; r++) {
      const uint64_t p0 = static_cast<uint64_t>(kM0) * x0, p1 = static_cast<uint64_t>(kM1) * x2;
      const uint32_t y0 = static_cast<uint32_t>(p1 >> 32) ^ x1 ^ k0;
      const uint32_t y2 = static_cast<uint32_t>(p0 >> 32) ^ x3 ^ k1;
      x1 = static_cast<uint32_t>(p1);
      x3 = static_cast<uint32_t>(p0);
      x0 = y0;
      x2 = y2;
      k0 += kW0;
      k1 += kW1;
    }
    uint32_t* o = out + 4 * j;
    o[0] = x0;
    o[1] = x1;
    o[2] = x2;
    o[3] = x3;
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define WB_AVX512 1

// 16 32-bit products of x and m: high and low halves (AVX-512F has no 32-bit mulhi)
__attribute__((target("avx512f"))) static inline void mulhilo16(__m512i x, __m512i m, __m512i* hi, __m512i* lo) {
  const __m512i even = _mm512_mul_epu32(x, m);                        // lanes 0, 2, ...: 64-bit products
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(x, 32), m);  // lanes 1, 3, ...
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

// philox_words for 16 blocks at a time, then the scalar loop for the rest
__attribute__((target("avx512f"))) static void philox_words_avx512(uint32_t key0, uint32_t key1, uint32_t c1,
                                                                    uint32_t c2, int64_t nblocks, uint32_t* out) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kM0)), m1 = _mm512_set1_epi32(static_cast<int>(kM1));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t j = 0;
  for (; j + 16 <= nblocks; j += 16) {
    __m512i x0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(j)), lane);
    __m512i x1 = _mm512_set1_epi32(static_cast<int>(c1)), x2 = _mm512_set1_epi32(static_cast<int>(c2));
    __m512i x3 = _mm512_setzero_si512();
    uint32_t k0 = key0, k1 = key1;
    for (int r = 0; r < 10; r++) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo16(x0, m0, &hi0, &lo0);
      mulhilo16(x2, m1, &hi1, &lo1);
      x0 = _mm512_ternarylogic_epi32(hi1, x1, _mm512_set1_epi32(static_cast<int>(k0)), 0x96);  // 3-way xor
      x2 = _mm512_ternarylogic_epi32(hi0, x3, _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
      x1 = lo1;
      x3 = lo0;
      k0 += kW0;
      k1 += kW1;
    }
    // transpose: out[4 (j + l) + i] = x_i[l]
    const __m512i t0 = _mm512_unpacklo_epi32(x0, x1), t1 = _mm512_unpackhi_epi32(x0, x1);
    const __m512i t2 = _mm512_unpacklo_epi32(x2, x3), t3 = _mm512_unpackhi_epi32(x2, x3);
    const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
    const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
    const __m512i v0 = _mm512_shuffle_i32x4(u0, u1, 0x44), v1 = _mm512_shuffle_i32x4(u2, u3, 0x44);
    const __m512i v2 = _mm512_shuffle_i32x4(u0, u1, 0xEE), v3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
    _mm512_storeu_si512(out + 4 * j, _mm512_shuffle_i32x4(v0, v1, 0x88));
    _mm512_storeu_si512(out + 4 * j + 16, _mm512_shuffle_i32x4(v0, v1, 0xDD));
    _mm512_storeu_si512(out + 4 * j + 32, _mm512_shuffle_i32x4(v2, v3, 0x88));
    _mm512_storeu_si512(out + 4 * j + 48, _mm512_shuffle_i32x4(v2, v3, 0xDD));
  }
  philox_words(key0, key1, c1, c2, j, nblocks, out);
}
#endif

// The words of one copy by the fastest path of this CPU (all paths give the same words).
static void copy_words(uint32_t key0, uint32_t key1, uint32_t c1, uint32_t c2, int64_t nblocks, uint32_t* out) {
#ifdef WB_AVX512
  if (__builtin_cpu_supports("avx512f")) {
    philox_words_avx512(key0, key1, c1, c2, nblocks, out);
    return;
  }
#endif
  philox_words(key0, key1, c1, c2, 0, nblocks, out);
}

WB_INLINE float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

WB_INLINE uint32_t float_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

// The constants of noise_stream.laplace_from_words, as float32 bit patterns.
constexpr uint32_t kSqrt2 = 0x3FB504F3u, kLn2Hi = 0x3F317200u, kLn2Lo = 0x35BFBE8Eu;
constexpr uint32_t kC11 = 0x3E3A2E8Cu, kC9 = 0x3E638E39u, kC7 = 0x3E924925u, kC5 = 0x3ECCCCCDu,
                   kC3 = 0x3F2AAAABu;

// Unit-scale Laplace variables from words, in place (`io` holds words on entry, floats on exit).
WB_INLINE void laplace_from_words(int64_t n, uint32_t* io) {
  const float sqrt2 = bits_to_float(kSqrt2), ln2_hi = bits_to_float(kLn2Hi), ln2_lo = bits_to_float(kLn2Lo);
  const float c11 = bits_to_float(kC11), c9 = bits_to_float(kC9), c7 = bits_to_float(kC7);
  const float c5 = bits_to_float(kC5), c3 = bits_to_float(kC3);
  for (int64_t i = 0; i < n; i++) {
    const uint32_t w = io[i];
    const float u = static_cast<float>(static_cast<int32_t>(w & 0x7FFFFFu)) + 0.5f;  // exact
    const uint32_t ub = float_to_bits(u);
    const int32_t e = static_cast<int32_t>(ub >> 23) - 127;
    const float m0 = bits_to_float((ub & 0x7FFFFFu) | 0x3F800000u);  // u = 2^e m0, m0 in [1, 2)
    const bool big = m0 > sqrt2;
    const float m = big ? m0 * 0.5f : m0;
    const float big_e = static_cast<float>(e - 23 + (big ? 1 : 0));  // V = 2^E m, m in (0.70, 1.42]
    const float f = m - 1.0f;
    const float s = f / (m + 1.0f);
    const float z = s * s;
    float t = c11 * z;
    t = t + c9;
    t = t * z;
    t = t + c7;
    t = t * z;
    t = t + c5;
    t = t * z;
    t = t + c3;
    const float r = (s * z) * t;
    const float log_m = (s + s) + r;                                  // 2 atanh(s) = log m
    const float log_v = big_e * ln2_hi + (log_m + big_e * ln2_lo);  // log V < 0
    io[i] = float_to_bits(log_v) ^ (w & 0x80000000u);                // bit 31 of w: the sign
  }
}

// Rows [begin, end) of noisy_copies, in T (float or double; the variables are float32, then widened).
template <typename T>
WB_INLINE void noisy_rows(const T* x, int64_t x_stride, const T* scale, int64_t scale_stride,
                          const int64_t* index, const int64_t* copy, uint32_t seed, uint32_t tag, bool flow, T* out,
                          int64_t begin, int64_t end, int64_t channels, int64_t height, int64_t width) {
  const int64_t plane = height * width, pixels = channels * plane;
  const int64_t n_v = channels * (height - 1) * width;
  const int64_t per_copy = flow ? n_v + pixels : pixels;
  const int64_t nblocks = (per_copy + 3) / 4;
  std::vector<uint32_t> scratch(static_cast<size_t>(4 * nblocks));
  std::vector<T> widened(sizeof(T) == sizeof(float) ? 0 : static_cast<size_t>(per_copy));
  uint32_t* words = scratch.data();
  for (int64_t g = begin; g < end; g++) {
    copy_words(seed, static_cast<uint32_t>(index[g]), static_cast<uint32_t>(copy[g]), tag, nblocks, words);
    laplace_from_words(per_copy, words);
    const T* lap = reinterpret_cast<const T*>(words);
    if constexpr (sizeof(T) != sizeof(float)) {
      const float* single = reinterpret_cast<const float*>(words);
      for (int64_t i = 0; i < per_copy; i++) widened[static_cast<size_t>(i)] = static_cast<T>(single[i]);
      lap = widened.data();
    }
    const T s = scale[g * scale_stride];
    T* o = out + g * pixels;
    std::memcpy(o, x + g * x_stride, sizeof(T) * static_cast<size_t>(pixels));
    if (!flow) {
      for (int64_t i = 0; i < pixels; i++) o[i] = o[i] + s * lap[i];
      continue;
    }
    for (int64_t c = 0; c < channels; c++) {
      T* oc = o + c * plane;
      const T* v = lap + c * (plane - width);  // (H-1, W)
      const T* h = lap + n_v + c * plane;      // (H, W); column W-1 unused
      for (int64_t i = 0; i < plane - width; i++) oc[i] = oc[i] + s * v[i];                  // + v[i, j]
      for (int64_t i = 0; i < plane - width; i++) oc[width + i] = oc[width + i] - s * v[i];  // - v[i-1, j]
      for (int64_t r = 0; r < height; r++) {
        T* row = oc + r * width;
        const T* hr = h + r * width;
        for (int64_t j = 0; j + 1 < width; j++) row[j] = row[j] + s * hr[j];          // + h[i, j]
        for (int64_t j = 0; j + 1 < width; j++) row[j + 1] = row[j + 1] - s * hr[j];  // - h[i, j-1]
      }
    }
  }
}

WB_CLONES void noisy_rows_f32(const float* x, int64_t x_stride, const float* scale, int64_t scale_stride,
                              const int64_t* index, const int64_t* copy, uint32_t seed, uint32_t tag, bool flow,
                              float* out, int64_t begin, int64_t end, int64_t channels, int64_t height,
                              int64_t width) {
  noisy_rows(x, x_stride, scale, scale_stride, index, copy, seed, tag, flow, out, begin, end, channels, height, width);
}

WB_CLONES void noisy_rows_f64(const double* x, int64_t x_stride, const double* scale, int64_t scale_stride,
                              const int64_t* index, const int64_t* copy, uint32_t seed, uint32_t tag, bool flow,
                              double* out, int64_t begin, int64_t end, int64_t channels, int64_t height,
                              int64_t width) {
  noisy_rows(x, x_stride, scale, scale_stride, index, copy, seed, tag, flow, out, begin, end, channels, height, width);
}

void check_rows(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t rows) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous(), name,
              " must be a contiguous CPU tensor of ", dtype, ", got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.dim() >= 1 && (t.size(0) == rows || (rows >= 0 && t.size(0) == 1)), name, " has ",
              t.size(0), " rows, expected ", rows);
}

at::Tensor noisy_copies(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& index,
                        const at::Tensor& copy, int64_t seed, int64_t tag, bool flow, at::Tensor out) {
  TORCH_CHECK(out.dim() == 4, "out must be (N, C, H, W)");
  const int64_t n = out.size(0), channels = out.size(1), height = out.size(2), width = out.size(3);
  const at::ScalarType dtype = out.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "out must be float32 or float64, got ", dtype);
  check_rows(out, "out", dtype, n);
  check_rows(x, "x", dtype, n);
  check_rows(scale, "scale", dtype, n);
  TORCH_CHECK(x.dim() == 4 && x.size(1) == channels && x.size(2) == height && x.size(3) == width,
              "x and out differ in (C, H, W)");
  TORCH_CHECK(index.dim() == 1 && copy.dim() == 1 && index.size(0) == n && copy.size(0) == n,
              "index and copy must have one entry per row of out");
  check_rows(index, "index", at::kLong, n);
  check_rows(copy, "copy", at::kLong, n);
  TORCH_CHECK(seed >= 0 && seed < (int64_t{1} << 32) && tag >= 0 && tag < (int64_t{1} << 32),
              "seed and tag must be 32-bit unsigned");
  const int64_t* ip = index.data_ptr<int64_t>();
  const int64_t* cp = copy.data_ptr<int64_t>();
  const int64_t x_stride = x.size(0) == 1 ? 0 : channels * height * width;
  const int64_t s_stride = scale.size(0) == 1 ? 0 : 1;
  const auto key = static_cast<uint32_t>(seed);
  const auto tg = static_cast<uint32_t>(tag);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    if (dtype == at::kFloat) {
      noisy_rows_f32(x.data_ptr<float>(), x_stride, scale.data_ptr<float>(), s_stride, ip, cp, key, tg, flow,
                     out.data_ptr<float>(), begin, end, channels, height, width);
    } else {
      noisy_rows_f64(x.data_ptr<double>(), x_stride, scale.data_ptr<double>(), s_stride, ip, cp, key, tg, flow,
                     out.data_ptr<double>(), begin, end, channels, height, width);
    }
  });
  return out;
}

// The first 4 * blocks words of each row's stream, as int64 in [0, 2^32): for the tests against the
// reference.
at::Tensor stream_words(const at::Tensor& index, const at::Tensor& copy, int64_t seed, int64_t tag,
                        int64_t blocks) {
  const int64_t n = index.size(0);
  check_rows(index, "index", at::kLong, n);
  check_rows(copy, "copy", at::kLong, n);
  TORCH_CHECK(copy.size(0) == n && blocks >= 0, "one copy per index, blocks >= 0");
  at::Tensor out = at::empty({n, 4 * blocks}, index.options());
  std::vector<uint32_t> words(static_cast<size_t>(4 * blocks));
  for (int64_t g = 0; g < n; g++) {
    copy_words(static_cast<uint32_t>(seed), static_cast<uint32_t>(index.data_ptr<int64_t>()[g]),
               static_cast<uint32_t>(copy.data_ptr<int64_t>()[g]), static_cast<uint32_t>(tag), blocks, words.data());
    int64_t* row = out.data_ptr<int64_t>() + g * 4 * blocks;
    for (int64_t i = 0; i < 4 * blocks; i++) row[i] = words[static_cast<size_t>(i)];
  }
  return out;
}

// Unit-scale Laplace variables of int64 words in [0, 2^32), as float32: for the tests.
at::Tensor laplace_words(const at::Tensor& words) {
  TORCH_CHECK(words.device().is_cpu() && words.scalar_type() == at::kLong && words.is_contiguous(),
              "words must be a contiguous CPU int64 tensor");
  const int64_t n = words.numel();
  std::vector<uint32_t> buf(static_cast<size_t>(n));
  const int64_t* wp = words.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; i++) buf[static_cast<size_t>(i)] = static_cast<uint32_t>(wp[i]);
  laplace_from_words(n, buf.data());
  at::Tensor out = at::empty(words.sizes(), words.options().dtype(at::kFloat));
  std::memcpy(out.data_ptr<float>(), buf.data(), sizeof(float) * static_cast<size_t>(n));
  return out;
}

}  // namespace

TORCH_LIBRARY(wbench_noise, m) {
  m.def("noisy_copies(Tensor x, Tensor scale, Tensor index, Tensor copy, int seed, int tag, bool flow, "
        "Tensor(a!) out) -> Tensor(a!)");
  m.def("stream_words(Tensor index, Tensor copy, int seed, int tag, int blocks) -> Tensor");
  m.def("laplace_words(Tensor words) -> Tensor");
}

TORCH_LIBRARY_IMPL(wbench_noise, CPU, m) {
  m.impl("noisy_copies", noisy_copies);
  m.impl("stream_words", stream_words);
  m.impl("laplace_words", laplace_words);
}
