/*
 * Fused CPU kernel for smoothing noise: Philox4x32-10 words -> Laplace variables -> noisy copies.
 *
 * For image g of a batch, the noise variables come from the Philox4x32-10 counter-based generator
 * (Salmon et al., SC'11; the Random123 reference, verified against its known-answer vectors in
 * tests/test_fastnoise.py) with key (key0, key1) and counters (j, 0, lo32(g), hi32(g)),
 * j = 0, 1, ...: variable k takes word k % 4 of block k / 4. The stream of an image depends only on
 * the key and on g, never on how a batch is split across calls or threads.
 *
 * A word w becomes a Laplace variable of unit scale by the inverse CDF of wbench.flow.laplace_from_words:
 * V = ((w & (2^23 - 1)) + 1/2) 2^-23 in (0, 1), exact in float32; the draw is log V, negated when
 * bit 31 of w is set. The noisy copy is then (Levine & Feizi, Definition 3.1, with delta = s * L)
 *
 *   flow:  out[c,i,j] = x[c,i,j] + s (v[c,i,j] - v[c,i-1,j] + h[c,i,j] - h[c,i,j-1]),
 *          v: the first C (H-1) W variables as (C, H-1, W); h: the next C H W as (C, H, W), of which
 *          the last column is drawn but not used (so every term is one flat pass over whole rows);
 *   pixel: out[c,i,j] = x[c,i,j] + s L[c,i,j].
 *
 * Everything for one image stays in a small scratch buffer (L1/L2 resident), so the whole batch is a
 * single pass that writes `out`. The functions hold no global state and are safe to call from several
 * threads on disjoint images; wb_noisy_copies_f32_parallel (at the end) runs them on an OpenMP team.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

/* helpers are inlined into each clone below, so they are vectorised for its instruction set */
#define WB_INLINE static inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* one binary, the widest vector unit of the machine it runs on (AVX-512, AVX2, or SSE2) */
#define WB_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define WB_CLONES
#endif

/* Philox4x32-10 of counters (c0 + j, c1 + carry, c2, c3), j = 0 .. nblocks-1; out[4 j + i] = word i. */
WB_INLINE void philox_blocks(uint32_t key0, uint32_t key1, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                             int64_t nblocks, uint32_t *restrict out) {
    for (int64_t j = 0; j < nblocks; j++) {
        uint64_t lo = (uint64_t)c0 + (uint64_t)j;
        uint32_t x0 = (uint32_t)lo, x1 = c1 + (uint32_t)(lo >> 32), x2 = c2, x3 = c3;
        uint32_t k0 = key0, k1 = key1;
        for (int r = 0; r < 10; r++) {
            uint64_t p0 = (uint64_t)PHILOX_M0 * x0, p1 = (uint64_t)PHILOX_M1 * x2;
            uint32_t y0 = (uint32_t)(p1 >> 32) ^ x1 ^ k0, y2 = (uint32_t)(p0 >> 32) ^ x3 ^ k1;
            x1 = (uint32_t)p1;
            x3 = (uint32_t)p0;
            x0 = y0;
            x2 = y2;
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        out[4 * j] = x0;
        out[4 * j + 1] = x1;
        out[4 * j + 2] = x2;
        out[4 * j + 3] = x3;
    }
}

WB_CLONES void wb_philox4x32_10(uint32_t key0, uint32_t key1, uint32_t c0, uint32_t c1, uint32_t c2,
                                uint32_t c3, int64_t nblocks, uint32_t *restrict out) {
    philox_blocks(key0, key1, c0, c1, c2, c3, nblocks, out);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define WB_HAVE_AVX512_PATH 1

/* 16 x 32-bit products of x and the constant m: the high and low halves (AVX-512F has no 32-bit mulhi) */
__attribute__((target("avx512f"))) static inline void mulhilo16(__m512i x, __m512i m, __m512i *hi, __m512i *lo) {
    const __m512i even = _mm512_mul_epu32(x, m);                        /* lanes 0, 2, ...: 64-bit products */
    const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(x, 32), m);  /* lanes 1, 3, ... */
    *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
    *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

/* philox_blocks(key, 0, 0, c2, c3) for 16 blocks at a time (then the scalar loop for the rest) */
__attribute__((target("avx512f"))) static void philox_image_avx512(uint32_t key0, uint32_t key1, uint32_t c2,
                                                                    uint32_t c3, int64_t nblocks, uint32_t *out) {
    const __m512i m0 = _mm512_set1_epi32((int)PHILOX_M0), m1 = _mm512_set1_epi32((int)PHILOX_M1);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int64_t j = 0;
    for (; j + 16 <= nblocks; j += 16) {
        __m512i x0 = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)j), lane), x1 = _mm512_setzero_si512();
        __m512i x2 = _mm512_set1_epi32((int)c2), x3 = _mm512_set1_epi32((int)c3);
        uint32_t k0 = key0, k1 = key1;
        for (int r = 0; r < 10; r++) {
            __m512i hi0, lo0, hi1, lo1;
            mulhilo16(x0, m0, &hi0, &lo0);
            mulhilo16(x2, m1, &hi1, &lo1);
            /* 0x96: three-way xor */
            x0 = _mm512_ternarylogic_epi32(hi1, x1, _mm512_set1_epi32((int)k0), 0x96);
            x2 = _mm512_ternarylogic_epi32(hi0, x3, _mm512_set1_epi32((int)k1), 0x96);
            x1 = lo1;
            x3 = lo0;
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        /* transpose: out[4 (j + l) + i] = x_i[l] */
        const __m512i t0 = _mm512_unpacklo_epi32(x0, x1), t1 = _mm512_unpackhi_epi32(x0, x1);
        const __m512i t2 = _mm512_unpacklo_epi32(x2, x3), t3 = _mm512_unpackhi_epi32(x2, x3);
        const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
        const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
        const __m512i v0 = _mm512_shuffle_i32x4(u0, u1, 0x44), v1 = _mm512_shuffle_i32x4(u2, u3, 0x44);
        const __m512i v2 = _mm512_shuffle_i32x4(u0, u1, 0xEE), v3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
        _mm512_storeu_si512((void *)(out + 4 * j), _mm512_shuffle_i32x4(v0, v1, 0x88));
        _mm512_storeu_si512((void *)(out + 4 * j + 16), _mm512_shuffle_i32x4(v0, v1, 0xDD));
        _mm512_storeu_si512((void *)(out + 4 * j + 32), _mm512_shuffle_i32x4(v2, v3, 0x88));
        _mm512_storeu_si512((void *)(out + 4 * j + 48), _mm512_shuffle_i32x4(v2, v3, 0xDD));
    }
    philox_blocks(key0, key1, (uint32_t)j, 0u, c2, c3, nblocks - j, out + 4 * j);
}
#endif

/* The words of one image: Philox counters (j, 0, c2, c3), j < nblocks, by the fastest path available. */
static void philox_image(uint32_t key0, uint32_t key1, uint32_t c2, uint32_t c3, int64_t nblocks, uint32_t *out,
                         int simd) {
#ifdef WB_HAVE_AVX512_PATH
    if (simd && __builtin_cpu_supports("avx512f")) {
        philox_image_avx512(key0, key1, c2, c3, nblocks, out);
        return;
    }
#endif
    (void)simd;
    philox_blocks(key0, key1, 0u, 0u, c2, c3, nblocks, out);
}

/* The words of image (lo, hi): for tests of the SIMD path (simd = 1) against the scalar one (0). */
void wb_philox_image_words(uint32_t key0, uint32_t key1, uint32_t image_lo, uint32_t image_hi, int64_t nblocks,
                           uint32_t *out, int simd) {
    philox_image(key0, key1, image_lo, image_hi, nblocks, out, simd);
}

/* unit-scale Laplace draws from words (see the header); `out` may alias `words` */
WB_INLINE void laplace_from_words(int64_t n, const uint32_t *words, float *out) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t w = words[i];
        float l = logf(((float)(w & 0x7FFFFFu) + 0.5f) * 0x1p-23f);
        out[i] = (w >> 31) ? -l : l;
    }
}

WB_INLINE void add_scaled(int64_t n, float *restrict dst, const float *restrict src, float s) {
    for (int64_t i = 0; i < n; i++) dst[i] += s * src[i];
}

/*
 * Noisy copies of images x[g] (x_stride floats apart; 0 broadcasts one image), scale[g * scale_stride],
 * for g = 0 .. n_images-1, written to out (n_images, C, H, W), contiguous. Images are numbered
 * first_image + g in the Philox counter. flow != 0: Wasserstein (flow) noise; 0: pixel noise.
 * Returns 0, or -1 when scratch memory cannot be allocated.
 */
WB_CLONES int wb_noisy_copies_f32(const float *x, int64_t x_stride, const float *scale, int64_t scale_stride,
                                  float *out, int64_t n_images, int64_t channels, int64_t height, int64_t width,
                                  uint32_t key0, uint32_t key1, uint64_t first_image, int flow) {
    const int64_t plane = height * width, pixels = channels * plane;
    const int64_t n_v = channels * (height - 1) * width; /* vertical flows, (C, H-1, W) */
    const int64_t per_image = flow ? n_v + pixels : pixels; /* + horizontal flows, padded to (C, H, W) */
    const int64_t nblocks = (per_image + 3) / 4;
    float *noise = (float *)malloc(sizeof(float) * (size_t)(4 * nblocks));
    if (noise == NULL) return -1;
    uint32_t *words = (uint32_t *)noise; /* transformed in place */
    for (int64_t g = 0; g < n_images; g++) {
        const uint64_t image = first_image + (uint64_t)g;
        const float s = scale[g * scale_stride];
        float *oi = out + g * pixels;
        philox_image(key0, key1, (uint32_t)image, (uint32_t)(image >> 32), nblocks, words, 1);
        laplace_from_words(per_image, words, noise);
        memcpy(oi, x + g * x_stride, sizeof(float) * (size_t)pixels);
        if (!flow) {
            add_scaled(pixels, oi, noise, s);
            continue;
        }
        for (int64_t c = 0; c < channels; c++) {
            float *o = oi + c * plane;
            const float *v = noise + c * (plane - width); /* (H-1, W): row i moves mass between rows i, i+1 */
            float *h = noise + n_v + c * plane;           /* (H, W), column W-1 unused */
            /* rows are contiguous, so each term of Definition 3.1 is one flat, vectorised pass */
            add_scaled(plane - width, o, v, s);          /* + v[i, j] */
            add_scaled(plane - width, o + width, v, -s); /* - v[i-1, j] */
            for (int64_t i = 0; i < height; i++) h[i * width + width - 1] = 0.0f;
            add_scaled(plane, o, h, s);              /* + h[i, j] */
            add_scaled(plane - 1, o + 1, h, -s);     /* - h[i, j-1]; the zero column ends each row */
        }
    }
    free(noise);
    return 0;
}

/*
 * wb_noisy_copies_f32 on `threads` threads of the caller's OpenMP runtime: `gomp_parallel` is the address
 * of libgomp's GOMP_parallel (the entry point that `#pragma omp parallel` compiles to) in the runtime
 * that torch already uses, so the work runs on torch's own intra-op team (no second thread pool
 * competing for the cores). Images are handed out in chunks through an atomic counter; since every
 * image has its own Philox stream, the result does not depend on the number of threads.
 */
typedef void (*gomp_parallel_t)(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);

struct parallel_job {
    const float *x;
    int64_t x_stride;
    const float *scale;
    int64_t scale_stride;
    float *out;
    int64_t n_images, channels, height, width, chunk;
    uint32_t key0, key1;
    uint64_t first_image;
    int flow;
    int64_t next; /* the next unclaimed image */
    int status;
};

static void parallel_worker(void *data) {
    struct parallel_job *job = (struct parallel_job *)data;
    const int64_t pixels = job->channels * job->height * job->width;
    for (;;) {
        const int64_t lo = __atomic_fetch_add(&job->next, job->chunk, __ATOMIC_RELAXED);
        if (lo >= job->n_images) return;
        const int64_t n = job->n_images - lo < job->chunk ? job->n_images - lo : job->chunk;
        if (wb_noisy_copies_f32(job->x + lo * job->x_stride, job->x_stride, job->scale + lo * job->scale_stride,
                                job->scale_stride, job->out + lo * pixels, n, job->channels, job->height,
                                job->width, job->key0, job->key1, job->first_image + (uint64_t)lo, job->flow))
            __atomic_store_n(&job->status, -1, __ATOMIC_RELAXED);
    }
}

int wb_noisy_copies_f32_parallel(const float *x, int64_t x_stride, const float *scale, int64_t scale_stride,
                                 float *out, int64_t n_images, int64_t channels, int64_t height, int64_t width,
                                 uint32_t key0, uint32_t key1, uint64_t first_image, int flow, void *gomp_parallel,
                                 unsigned threads, int64_t chunk) {
    struct parallel_job job = {x,      x_stride, scale, scale_stride, out,  n_images,    channels, height,
                               width,  chunk,    key0,  key1,         first_image, flow, 0,  0};
    ((gomp_parallel_t)gomp_parallel)(parallel_worker, &job, threads, 0u);
    return job.status;
}
