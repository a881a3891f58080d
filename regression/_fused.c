/* A CPU full-batch epoch of nn.Linear + MSELoss in one read of the rows: for the residuals
 * r = X w + b - y of float32 rows, out[0:d] += X'r, out[d] += r.r and out[d + 1] += sum(r),
 * in float64, for 1 to MAX_FEATURES features. regression/fused.py calls linreg_fused_sums
 * through ctypes (which releases the GIL, so one call runs on each core); this file is also
 * a Python extension module only so that setuptools builds it (setup.py), and it defines no
 * Python functions.
 *
 * The arithmetic is float32 in vectors of 16 lanes (GCC/Clang vector extensions: one AVX-512
 * register, two AVX2 or four SSE registers), summed over blocks of BLOCK rows, whose sums are
 * then added in float64: the error does not grow with N. Rows are taken 16 at a time, so
 * that the 16 residuals, r.r and sum(r) are vector operations: with 16 or more features the
 * rows' products with w are reduced by a tree of shuffles into one vector of their 16 dot
 * products (not one horizontal sum per row); with 2 to 15, each feature's 16 values are
 * gathered into a vector; one feature is a vector along the rows. The results depend only
 * on the data and the build, not on timing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 512 /* rows summed in float32 before their sums go to float64 */
#define LANES 16
/* The widest rows taken (the per-call accumulators are on the stack: 12 bytes a feature);
 * wider data goes through torch, whose matrix-vector products suit long rows. */
#define MAX_FEATURES 4096
/* Rows read ahead: the loops ask for the cache lines of the row AHEAD rows on (prefetch
 * instructions never fault, past the end included). Without it the two cores read
 * 1e7 x 16 float32 at about 0.7x the speed of torch's X.sum(); with it, at its speed. */
#define AHEAD (8 * LANES)

#define INLINE static inline __attribute__((always_inline)) /* into each build below */

typedef float v16 __attribute__((vector_size(4 * LANES)));
typedef int32_t i16 __attribute__((vector_size(4 * LANES)));

#if defined(__clang__)
#define SHUFFLE(a, b, ...) __builtin_shufflevector((a), (b), __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle((a), (b), (i16){__VA_ARGS__})
#endif

/* combining two vectors of k rows x m lanes each into one of 2k rows x m/2 lanes */
#define HALVES_LO 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define HALVES_HI 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define QUARTERS_LO 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define QUARTERS_HI 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define EIGHTHS_LO 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define EIGHTHS_HI 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define LANES_LO 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define LANES_HI 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
/* after the tree, lane l holds row bitreverse4(l); the reversal is its own inverse */
#define ROW_ORDER 0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15

#define HALVES(a, b) (SHUFFLE(a, b, HALVES_LO) + SHUFFLE(a, b, HALVES_HI))
#define QUARTERS(a, b) (SHUFFLE(a, b, QUARTERS_LO) + SHUFFLE(a, b, QUARTERS_HI))
#define EIGHTHS(a, b) (SHUFFLE(a, b, EIGHTHS_LO) + SHUFFLE(a, b, EIGHTHS_HI))
#define SINGLES(a, b) (SHUFFLE(a, b, LANES_LO) + SHUFFLE(a, b, LANES_HI))

INLINE v16 load(const float *p)
{
    v16 v;
    memcpy(&v, p, sizeof v); /* unaligned: rows of d floats start anywhere */
    return v;
}

INLINE float lane_sum(v16 v)
{
    float total = 0.0f;
    for (int k = 0; k < LANES; k++)
        total += v[k];
    return total;
}

/* The 16 dot products of p[0..15] (each a row's products, lane-wise), in row order. */
INLINE v16 row_sums(const v16 p[LANES])
{
    v16 q[8], s[4], t[2];
    for (int k = 0; k < 8; k++)
        q[k] = HALVES(p[2 * k], p[2 * k + 1]);
    for (int k = 0; k < 4; k++)
        s[k] = QUARTERS(q[2 * k], q[2 * k + 1]);
    for (int k = 0; k < 2; k++)
        t[k] = EIGHTHS(s[2 * k], s[2 * k + 1]);
    v16 sums = SINGLES(t[0], t[1]);
    return SHUFFLE(sums, sums, ROW_ORDER);
}

/* Asks for the cache lines of the group of 16 rows of d floats AHEAD rows after x. */
INLINE void prefetch_group(const float *x, int64_t d)
{
    for (int64_t o = 0; o < LANES * d; o += LANES) /* a cache line each */
        __builtin_prefetch(x + AHEAD * d + o);
}

/* Rows [from, m) of a block (those after its groups of 16), one at a time:
 * acc[j] += r x[j], *loss += r^2 and *total += r. */
INLINE void single_rows(const float *Xb, const float *yb, int64_t from, int64_t m, int64_t d,
                        const float *w, float b, float *acc, float *loss, float *total)
{
    for (int64_t i = from; i < m; i++) {
        const float *x = Xb + i * d;
        float r = b - yb[i];
        for (int64_t j = 0; j < d; j++)
            r += x[j] * w[j];
        *loss += r * r;
        *total += r;
        for (int64_t j = 0; j < d; j++)
            acc[j] += r * x[j];
    }
}

INLINE void finish(double *out, int64_t d, double loss, double total)
{
    out[d] += loss;
    out[d + 1] += total;
}

/* One feature column: everything along the rows, 16 at a time. */
INLINE void column(const float *x, const float *y, int64_t n, float w, float b, double *out)
{
    double grad_total = 0.0, loss_total = 0.0, sum_total = 0.0;
    const v16 zero = {0};
    for (int64_t first = 0; first < n; first += BLOCK) {
        int64_t m = n - first < BLOCK ? n - first : BLOCK;
        const float *xb = x + first, *yb = y + first;
        v16 g = zero, loss = zero, total = zero;
        int64_t i = 0;
        for (; i + LANES <= m; i += LANES) {
            __builtin_prefetch(xb + i + AHEAD);
            __builtin_prefetch(yb + i + AHEAD);
            v16 xv = load(xb + i);
            v16 r = xv * w + (b - load(yb + i));
            g += r * xv;
            loss += r * r;
            total += r;
        }
        float g_tail = 0.0f, loss_tail = 0.0f, total_tail = 0.0f;
        for (; i < m; i++) {
            float r = xb[i] * w + (b - yb[i]);
            g_tail += r * xb[i];
            loss_tail += r * r;
            total_tail += r;
        }
        grad_total += lane_sum(g) + g_tail;
        loss_total += lane_sum(loss) + loss_tail;
        sum_total += lane_sum(total) + total_tail;
    }
    out[0] += grad_total;
    out[1] += loss_total;
    out[2] += sum_total;
}

/* Any width: the columns in chunks of 16 (vectors), the d % 16 left over one by one. */
INLINE void rows(const float *X, const float *y, int64_t n, int64_t d, const float *w, float b,
                 double *out)
{
    const int64_t chunks = d / LANES, tail = chunks * LANES;
    const v16 zero = {0};
    v16 acc[chunks > 0 ? chunks : 1];
    float acc_tail[d]; /* the columns after the chunks, and the rows after the groups */
    double loss_total = 0.0, sum_total = 0.0;
    for (int64_t first = 0; first < n; first += BLOCK) {
        int64_t m = n - first < BLOCK ? n - first : BLOCK;
        const float *Xb = X + first * d, *yb = y + first;
        for (int64_t c = 0; c < chunks; c++)
            acc[c] = zero;
        for (int64_t j = 0; j < d; j++)
            acc_tail[j] = 0.0f;
        v16 loss = zero, total = zero;
        int64_t i = 0;
        for (; i + LANES <= m; i += LANES) {
            const float *x = Xb + i * d;
            prefetch_group(x, d);
            v16 p[LANES];
            for (int k = 0; k < LANES; k++)
                p[k] = zero;
            for (int64_t c = 0; c < chunks; c++) {
                v16 wc = load(w + c * LANES);
                for (int k = 0; k < LANES; k++)
                    p[k] += load(x + k * d + c * LANES) * wc;
            }
            v16 dots = row_sums(p);
            for (int64_t j = tail; j < d; j++)
                for (int k = 0; k < LANES; k++)
                    dots[k] += x[k * d + j] * w[j];
            v16 r = dots + (b - load(yb + i));
            loss += r * r;
            total += r;
            for (int64_t c = 0; c < chunks; c++) {
                v16 a = acc[c];
                for (int k = 0; k < LANES; k++)
                    a += r[k] * load(x + k * d + c * LANES);
                acc[c] = a;
            }
            for (int64_t j = tail; j < d; j++) {
                float a = 0.0f;
                for (int k = 0; k < LANES; k++)
                    a += r[k] * x[k * d + j];
                acc_tail[j] += a;
            }
        }
        float loss_tail = 0.0f, total_tail = 0.0f;
        single_rows(Xb, yb, i, m, d, w, b, acc_tail, &loss_tail, &total_tail);
        for (int64_t c = 0; c < chunks; c++)
            for (int k = 0; k < LANES; k++)
                out[c * LANES + k] += acc[c][k];
        for (int64_t j = 0; j < d; j++)
            out[j] += acc_tail[j];
        loss_total += lane_sum(loss) + loss_tail;
        sum_total += lane_sum(total) + total_tail;
    }
    finish(out, d, loss_total, sum_total);
}

/* Narrow rows (2 to 15 features): 16 rows at a time, each feature's 16 values gathered into
 * a vector (the rows are then along the lanes, as in column()). */
INLINE void narrow(const float *X, const float *y, int64_t n, int64_t d, const float *w, float b,
                   double *out)
{
    const v16 zero = {0};
    v16 acc[LANES - 1];
    float acc_tail[LANES - 1];
    double loss_total = 0.0, sum_total = 0.0;
    for (int64_t first = 0; first < n; first += BLOCK) {
        int64_t m = n - first < BLOCK ? n - first : BLOCK;
        const float *Xb = X + first * d, *yb = y + first;
        for (int64_t j = 0; j < d; j++) {
            acc[j] = zero;
            acc_tail[j] = 0.0f;
        }
        v16 loss = zero, total = zero;
        int64_t i = 0;
        for (; i + LANES <= m; i += LANES) {
            const float *x = Xb + i * d;
            prefetch_group(x, d);
            v16 cols[LANES - 1];
            v16 r = b - load(yb + i);
            for (int64_t j = 0; j < d; j++) {
                v16 c;
                for (int k = 0; k < LANES; k++)
                    c[k] = x[k * d + j];
                cols[j] = c;
                r += c * w[j];
            }
            loss += r * r;
            total += r;
            for (int64_t j = 0; j < d; j++)
                acc[j] += r * cols[j];
        }
        float loss_tail = 0.0f, total_tail = 0.0f;
        single_rows(Xb, yb, i, m, d, w, b, acc_tail, &loss_tail, &total_tail);
        for (int64_t j = 0; j < d; j++)
            out[j] += lane_sum(acc[j]) + acc_tail[j];
        loss_total += lane_sum(loss) + loss_tail;
        sum_total += lane_sum(total) + total_tail;
    }
    finish(out, d, loss_total, sum_total);
}

/* One build per instruction set on x86-64 Linux, picked at load time by the CPU it runs on. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
int
linreg_fused_sums(const float *X, const float *y, int64_t n, int64_t d, const float *w,
                  float b, double *out)
{
    if (d < 1 || d > MAX_FEATURES)
        return -1;
    if (d == 1)
        column(X, y, n, w[0], b, out);
    else if (d < LANES)
        narrow(X, y, n, d, w, b, out);
    else if (d == LANES) /* a constant width: the chunk loops unrolled, acc in a register */
        rows(X, y, n, LANES, w, b, out);
    else if (d == 2 * LANES)
        rows(X, y, n, 2 * LANES, w, b, out);
    else
        rows(X, y, n, d, w, b, out);
    return 0;
}

int linreg_fused_max_features(void) { return MAX_FEATURES; }

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fused", NULL, -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }
