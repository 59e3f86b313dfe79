/* Fused multi-tensor CPU steps of complex momentum and complex Adam (the fused=True path of
   metaopt.optim.ComplexMomentum / ComplexAdam on CPU), built by metaopt/optim/_cpu_kernels.py.

   A step walks all tensors of a param group as one index space, split evenly across OpenMP threads,
   and reads and writes every element once: complex momentum moves 7 passes (p, g, μr, μi read; p, μr,
   μi written), complex Adam 9. ptrs holds the data pointers of the group's tensors list after list
   (params, grads, then each state buffer), n tensors per list; s holds the step's hyperparameters.
   The arithmetic is that of _fused_complex_momentum / _fused_complex_adam, operation for operation. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef void (*span_fn)(void **ptrs, int64_t n, int64_t t, int64_t lo, int64_t hi, const double *s);
typedef void (*visit_fn)(const void *context, int64_t t, int64_t lo, int64_t hi);

static int64_t total_elements(const int64_t *sizes, int64_t n) {
    int64_t total = 0;
    for (int64_t t = 0; t < n; ++t) total += sizes[t];
    return total;
}

/* In a parallel region: visit this thread's even share of all n tensors' elements as (tensor, lo, hi)
   spans, one per tensor it touches. Boundaries on multiples of 16 elements, so that no two threads write
   one cache line. */
static void visit_this_threads_spans(visit_fn visit, const void *context, const int64_t *sizes, int64_t n,
                                     int64_t total) {
    int id = 0, count = 1;
#ifdef _OPENMP
    id = omp_get_thread_num();
    count = omp_get_num_threads();
#endif
    int64_t begin = (total * id / count) & ~(int64_t)15;
    int64_t end = id + 1 == count ? total : (total * (id + 1) / count) & ~(int64_t)15;
    int64_t offset = 0;
    for (int64_t t = 0; t < n && offset < end; offset += sizes[t], ++t) {
        int64_t lo = (begin > offset ? begin : offset) - offset;
        int64_t hi = (end < offset + sizes[t] ? end : offset + sizes[t]) - offset;
        if (lo < hi) visit(context, t, lo, hi);
    }
}

typedef struct {
    span_fn span;
    void **ptrs;
    int64_t n;
    const double *s;
} plain_args;

static void plain_span(const void *context, int64_t t, int64_t lo, int64_t hi) {
    const plain_args *a = (const plain_args *)context;
    a->span(a->ptrs, a->n, t, lo, hi, a->s);
}

static void for_all_elements(span_fn span, void **ptrs, const int64_t *sizes, int64_t n, const double *s,
                             int threads) {
    plain_args a = {span, ptrs, n, s};
    int64_t total = total_elements(sizes, n);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    visit_this_threads_spans(plain_span, &a, sizes, n, total);
}

#define COMPLEX_MOMENTUM_SPAN(NAME, T)                                                                  \
    static void NAME(void **ptrs, int64_t n, int64_t t, int64_t lo, int64_t hi, const double *s) {     \
        T *restrict p = (T *)ptrs[t] + lo;                                                             \
        const T *restrict g = (const T *)ptrs[n + t] + lo;                                             \
        T *restrict mr = (T *)ptrs[2 * n + t] + lo;                                                    \
        T *restrict mi = (T *)ptrs[3 * n + t] + lo;                                                    \
        const T beta_r = (T)s[0], beta_i = (T)s[1], lr = (T)s[2], weight_decay = (T)s[3];              \
        for (int64_t i = 0; i < hi - lo; ++i) {                                                        \
            T grad = g[i] + p[i] * weight_decay;                                                       \
            T real = (mr[i] * beta_r - mi[i] * beta_i) - grad;                                         \
            T imag = mr[i] * beta_i + mi[i] * beta_r;                                                  \
            p[i] = p[i] + real * lr;                                                                   \
            mr[i] = real;                                                                              \
            mi[i] = imag;                                                                              \
        }                                                                                              \
    }

#define COMPLEX_ADAM_SPAN(NAME, T, SQRT)                                                                \
    static void NAME(void **ptrs, int64_t n, int64_t t, int64_t lo, int64_t hi, const double *s) {     \
        T *restrict p = (T *)ptrs[t] + lo;                                                             \
        const T *restrict g = (const T *)ptrs[n + t] + lo;                                             \
        T *restrict mr = (T *)ptrs[2 * n + t] + lo;                                                    \
        T *restrict mi = (T *)ptrs[3 * n + t] + lo;                                                    \
        T *restrict v = (T *)ptrs[4 * n + t] + lo;                                                     \
        const T beta_r = (T)s[0], beta_i = (T)s[1], beta2 = (T)s[2], eps = (T)s[3];                    \
        const T weight_decay = (T)s[4], step_size = (T)s[5], correction2 = (T)s[6], ratio = (T)s[7];   \
        const T one_minus_beta_r = (T)1 - beta_r, one_minus_beta2 = (T)1 - beta2;                      \
        for (int64_t i = 0; i < hi - lo; ++i) {                                                        \
            T grad = g[i] + p[i] * weight_decay;                                                       \
            T difference = grad - mr[i];                                                               \
            T real = (mr[i] + difference * one_minus_beta_r) - mi[i] * beta_i;                         \
            T imag = mi[i] * beta_r - difference * beta_i;                                             \
            T square = v[i] * beta2 + (grad * grad) * one_minus_beta2;                                 \
            T denom = SQRT(square) / correction2 + eps;                                                \
            p[i] = p[i] + ((real + imag * ratio) / denom) * step_size;                                 \
            mr[i] = real;                                                                              \
            mi[i] = imag;                                                                              \
            v[i] = square;                                                                             \
        }                                                                                              \
    }

COMPLEX_MOMENTUM_SPAN(complex_momentum_float, float)
COMPLEX_MOMENTUM_SPAN(complex_momentum_double, double)
COMPLEX_ADAM_SPAN(complex_adam_float, float, sqrtf)
COMPLEX_ADAM_SPAN(complex_adam_double, double, sqrt)

void complex_momentum_step(int is_double, void **ptrs, const int64_t *sizes, int64_t n, const double *s,
                           int threads) {
    for_all_elements(is_double ? complex_momentum_double : complex_momentum_float, ptrs, sizes, n, s, threads);
}

void complex_adam_step(int is_double, void **ptrs, const int64_t *sizes, int64_t n, const double *s,
                       int threads) {
    for_all_elements(is_double ? complex_adam_double : complex_adam_float, ptrs, sizes, n, s, threads);
}

/* The learned optimizer's step (metaopt.optim.functional.learned with one hidden layer: the fused path of
   metaopt.optim.LearnedOptimizer on CPU). Two passes over the group's tensors, each split evenly across
   the threads: the first updates the momenta and the second moment in place and sums, per tensor, the
   squares its features are normalised by; the second builds every element's features, runs the MLP on
   them in blocks of LEARNED_BLOCK elements (the block's lanes are the vector lanes: the weights are
   broadcast, the hidden activations stay in registers) and moves the parameter. Nothing is allocated
   per element; the arithmetic is the functional core's, up to the order of the MLP's sums and, in
   float32, exp/tanh computed here to about an ulp (vectorizable; float64 calls libm).
   ptrs: params, grads, momenta (K rows of the parameter's size each), second moments, n tensors per list.
   s: [0..3] the time features, [4] 1 - β2^t, [5] the step's scale × lr, [6] form (0 direction, 1 adam),
   [7] hidden width, [8..10] momentum decays, [11] β2, [12] ε, [13] the first output's bound (direction:
   B; adam: the correction C), [14] the log-magnitude's bound (S; adam: M). w: the flat weights in the
   params' dtype. sums: n * 6 doubles of scratch. */
#define LEARNED_FEATURES 14
#define LEARNED_BLOCK 16
#define LEARNED_MAX_HIDDEN 256
/* Each loop over a block's lanes is a vector loop (unrolled first and vectorized across it, the block
   turns into scalar code) */
#define LEARNED_SIMD _Pragma("omp simd")

static inline float exp_float(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    /* n = round(x / ln 2) by the magic-number trick (vectorizes without SSE4.1's round) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720
                          + r * (1.0f / 5040)))))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float tanh_float(float x) {
    float a = x < 0 ? -x : x;
    float t = exp_float(-2.0f * (a < 20.0f ? a : 20.0f));
    float big = (1.0f - t) / (1.0f + t);
    float a2 = a * a;  /* below 0.1 the series: 1 - t would lose the leading digits */
    float small = a * (1.0f + a2 * (-1.0f / 3 + a2 * (2.0f / 15 + a2 * (-17.0f / 315))));
    float y = a < 0.1f ? small : big;
    return x < 0 ? -y : y;
}

#define LEARNED_SPANS(SUFFIX, T, SQRT, EXP, TANH)                                                         \
    static void learned_moments_##SUFFIX(void **ptrs, int64_t n, int64_t t, int64_t lo, int64_t hi,         \
                                         const double *s, const int64_t *sizes, double *sums) {           \
        int64_t size = sizes[t];                                                                        \
        const T *restrict p = (const T *)ptrs[t] + lo;                                                  \
        const T *restrict g = (const T *)ptrs[n + t] + lo;                                              \
        T *restrict m0 = (T *)ptrs[2 * n + t] + lo, *restrict m1 = m0 + size, *restrict m2 = m1 + size;  \
        T *restrict v = (T *)ptrs[3 * n + t] + lo;                                                      \
        const T d0 = (T)s[8], d1 = (T)s[9], d2 = (T)s[10];                                              \
        const T c0 = (T)1 - d0, c1 = (T)1 - d1, c2 = (T)1 - d2, b2 = (T)s[11], cb2 = (T)(1 - s[11]);       \
        double sg = 0, sp = 0, s0 = 0, s1 = 0, s2 = 0, sv = 0;                                          \
        for (int64_t i = 0; i < hi - lo; ++i) {                                                         \
            T gi = g[i];                                                                                \
            T a0 = d0 * m0[i] + c0 * gi, a1 = d1 * m1[i] + c1 * gi, a2 = d2 * m2[i] + c2 * gi;          \
            T vi = b2 * v[i] + cb2 * gi * gi;                                                           \
            m0[i] = a0; m1[i] = a1; m2[i] = a2; v[i] = vi;                                              \
            sg += (double)gi * gi; sp += (double)p[i] * p[i];                                           \
            s0 += (double)a0 * a0; s1 += (double)a1 * a1; s2 += (double)a2 * a2; sv += vi;              \
        }                                                                                               \
        sums[0] += sg; sums[1] += sp; sums[2] += s0; sums[3] += s1; sums[4] += s2; sums[5] += sv;        \
    }                                                                                                   \
                                                                                                        \
    /* LEARNED_BLOCK elements' step (delta, to subtract from p): features, MLP and output map, every loop    \
       over the block's lanes (vectorized).  */                                                         \
    static inline void learned_block_##SUFFIX(const T *restrict g, const T *restrict p, const T *restrict m0,\
                                              const T *restrict m1, const T *restrict m2,                \
                                              const T *restrict v, T *restrict delta, const double *s,     \
                                              const T *restrict k, const T *restrict w) {               \
        const int hidden = (int)s[7];                                                                   \
        const T bias = (T)s[4], step = (T)s[5], eps = (T)s[12], bound0 = (T)s[13], bound1 = (T)s[14];     \
        const T *w0 = w, *b0 = w0 + hidden * LEARNED_FEATURES, *wo = b0 + hidden, *bo = wo + 2 * hidden,  \
                *skip = bo + 2;                                                                         \
        T f[LEARNED_FEATURES][LEARNED_BLOCK], o0[LEARNED_BLOCK], o1[LEARNED_BLOCK];                     \
        LEARNED_SIMD for (int e = 0; e < LEARNED_BLOCK; ++e) {                                                       \
            T root = SQRT(v[e] / bias), denominator = root + eps;                                       \
            f[0][e] = g[e] * k[0]; f[1][e] = p[e] * k[1]; f[2][e] = m0[e] * k[2]; f[3][e] = m1[e] * k[3];  \
            f[4][e] = m2[e] * k[4]; f[5][e] = root * k[5];                                              \
            f[6][e] = g[e] / denominator; f[7][e] = m0[e] / denominator;                                \
            f[8][e] = m1[e] / denominator; f[9][e] = m2[e] / denominator;                               \
            f[10][e] = (T)s[0]; f[11][e] = (T)s[1]; f[12][e] = (T)s[2]; f[13][e] = (T)s[3];             \
        }                                                                                               \
        LEARNED_SIMD for (int e = 0; e < LEARNED_BLOCK; ++e) { o0[e] = bo[0]; o1[e] = bo[1]; }                        \
        for (int q = 0; q < LEARNED_FEATURES; ++q)                                                      \
            LEARNED_SIMD for (int e = 0; e < LEARNED_BLOCK; ++e) {                                                   \
                o0[e] += skip[q] * f[q][e];                                                             \
                o1[e] += skip[LEARNED_FEATURES + q] * f[q][e];                                          \
            }                                                                                           \
        for (int j = 0; j < hidden; ++j) {                                                              \
            T h[LEARNED_BLOCK];                                                                         \
            const T *row = w0 + j * LEARNED_FEATURES;                                                   \
            LEARNED_SIMD for (int e = 0; e < LEARNED_BLOCK; ++e) h[e] = b0[j];                                       \
            for (int q = 0; q < LEARNED_FEATURES; ++q)                                                  \
                LEARNED_SIMD for (int e = 0; e < LEARNED_BLOCK; ++e) h[e] += row[q] * f[q][e];                       \
            LEARNED_SIMD for (int e = 0; e < LEARNED_BLOCK; ++e) {                                                   \
                T relu = h[e] > 0 ? h[e] : 0;                                                           \
                o0[e] += wo[j] * relu;                                                                  \
                o1[e] += wo[hidden + j] * relu;                                                         \
            }                                                                                           \
        }                                                                                               \
        if (s[6] != 0) { /* adam: a·((1 + C·tanh d)·exp(M·tanh(s/M))) */                                \
            LEARNED_SIMD for (int e = 0; e < LEARNED_BLOCK; ++e)                                                     \
                delta[e] = f[8][e] * (((T)1 + bound0 * TANH(o0[e])) * EXP(bound1 * TANH(o1[e] / bound1))) \
                           * step;                                                                      \
        } else { /* direction: B·tanh(d/B)·exp(S·tanh(s/S)) */                                          \
            LEARNED_SIMD for (int e = 0; e < LEARNED_BLOCK; ++e)                                                     \
                delta[e] = bound0 * TANH(o0[e] / bound0) * EXP(bound1 * TANH(o1[e] / bound1)) * step;     \
        }                                                                                               \
    }                                                                                                   \
                                                                                                        \
    static void learned_update_##SUFFIX(void **ptrs, int64_t n, int64_t t, int64_t lo, int64_t hi,          \
                                        const double *s, const int64_t *sizes, const double *scales,     \
                                        const T *restrict w) {                                           \
        int64_t size = sizes[t], length = hi - lo, full = length - length % LEARNED_BLOCK;              \
        T *restrict p = (T *)ptrs[t] + lo;                                                              \
        const T *restrict g = (const T *)ptrs[n + t] + lo;                                              \
        const T *restrict m0 = (const T *)ptrs[2 * n + t] + lo, *restrict m1 = m0 + size,                \
                *restrict m2 = m1 + size;                                                               \
        const T *restrict v = (const T *)ptrs[3 * n + t] + lo;                                          \
        T k[6], delta[LEARNED_BLOCK];                                                                   \
        for (int q = 0; q < 6; ++q) k[q] = (T)scales[q];                                                \
        for (int64_t b = 0; b < full; b += LEARNED_BLOCK) {                                             \
            learned_block_##SUFFIX(g + b, p + b, m0 + b, m1 + b, m2 + b, v + b, delta, s, k, w);          \
            for (int e = 0; e < LEARNED_BLOCK; ++e) p[b + e] -= delta[e];                               \
        }                                                                                               \
        if (full < length) { /* the last partial block, through zero-padded copies */                   \
            T in[6][LEARNED_BLOCK] = {{0}};                                                             \
            for (int64_t i = full; i < length; ++i) {                                                   \
                in[0][i - full] = g[i]; in[1][i - full] = p[i]; in[2][i - full] = m0[i];                 \
                in[3][i - full] = m1[i]; in[4][i - full] = m2[i]; in[5][i - full] = v[i];                \
            }                                                                                           \
            learned_block_##SUFFIX(in[0], in[1], in[2], in[3], in[4], in[5], delta, s, k, w);             \
            for (int64_t i = full; i < length; ++i) p[i] -= delta[i - full];                            \
        }                                                                                               \
    }

LEARNED_SPANS(float, float, sqrtf, exp_float, tanh_float)
LEARNED_SPANS(double, double, sqrt, exp, tanh)

typedef struct {
    int is_double;
    void **ptrs;
    const int64_t *sizes;
    int64_t n;
    const double *s;
    const void *w;
    double *sums;
} learned_args;

static void learned_moments_span(const void *context, int64_t t, int64_t lo, int64_t hi) {
    const learned_args *a = (const learned_args *)context;
    double mine[6] = {0, 0, 0, 0, 0, 0};
    if (a->is_double) learned_moments_double(a->ptrs, a->n, t, lo, hi, a->s, a->sizes, mine);
    else learned_moments_float(a->ptrs, a->n, t, lo, hi, a->s, a->sizes, mine);
    for (int k = 0; k < 6; ++k) {  /* a thread's spans are contiguous: at most one per tensor */
#ifdef _OPENMP
#pragma omp atomic
#endif
        a->sums[6 * t + k] += mine[k];
    }
}

static void learned_update_span(const void *context, int64_t t, int64_t lo, int64_t hi) {
    const learned_args *a = (const learned_args *)context;
    if (a->is_double)
        learned_update_double(a->ptrs, a->n, t, lo, hi, a->s, a->sizes, a->sums + 6 * t, (const double *)a->w);
    else
        learned_update_float(a->ptrs, a->n, t, lo, hi, a->s, a->sizes, a->sums + 6 * t, (const float *)a->w);
}

void learned_step(int is_double, void **ptrs, const int64_t *sizes, int64_t n, const double *s, int threads,
                  const void *w, double *sums) {
    learned_args a = {is_double, ptrs, sizes, n, s, w, sums};
    int64_t total = total_elements(sizes, n);
    if ((int)s[7] < 1 || (int)s[7] > LEARNED_MAX_HIDDEN) return;
    for (int64_t i = 0; i < 6 * n; ++i) sums[i] = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        visit_this_threads_spans(learned_moments_span, &a, sizes, n, total);
#ifdef _OPENMP
#pragma omp barrier
#pragma omp single
#endif
        for (int64_t t = 0; t < n; ++t) {
            /* 1/√(mean square + 1e-12) of g, p, m_k and √v̂ (Σ√v̂² = Σv / (1 - β2^t)) */
            sums[6 * t + 5] /= s[4];
            for (int k = 0; k < 6; ++k) sums[6 * t + k] = 1.0 / sqrt(sums[6 * t + k] / (double)sizes[t] + 1e-12);
        }
        visit_this_threads_spans(learned_update_span, &a, sizes, n, total);
    }
}
