/* Fused multi-tensor CPU steps of complex momentum and complex Adam (the fused=True path of
   metaopt.optim.ComplexMomentum / ComplexAdam on CPU), built by metaopt/optim/_cpu_kernels.py.

   A step walks all tensors of a param group as one index space, split evenly across OpenMP threads,
   and reads and writes every element once: complex momentum moves 7 passes (p, g, μr, μi read; p, μr,
   μi written), complex Adam 9. ptrs holds the data pointers of the group's tensors list after list
   (params, grads, then each state buffer), n tensors per list; s holds the step's hyperparameters.
   The arithmetic is that of _fused_complex_momentum / _fused_complex_adam, operation for operation. */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef void (*span_fn)(void **ptrs, int64_t n, int64_t t, int64_t lo, int64_t hi, const double *s);

static void for_all_elements(span_fn span, void **ptrs, const int64_t *sizes, int64_t n, const double *s,
                             int threads) {
    int64_t total = 0;
    for (int64_t t = 0; t < n; ++t) total += sizes[t];
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        int id = 0, count = 1;
#ifdef _OPENMP
        id = omp_get_thread_num();
        count = omp_get_num_threads();
#endif
        /* Boundaries on multiples of 16 elements, so that no two threads write one cache line. */
        int64_t begin = (total * id / count) & ~(int64_t)15;
        int64_t end = id + 1 == count ? total : (total * (id + 1) / count) & ~(int64_t)15;
        int64_t offset = 0;
        for (int64_t t = 0; t < n && offset < end; offset += sizes[t], ++t) {
            int64_t lo = (begin > offset ? begin : offset) - offset;
            int64_t hi = (end < offset + sizes[t] ? end : offset + sizes[t]) - offset;
            if (lo < hi) span(ptrs, n, t, lo, hi, s);
        }
    }
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
