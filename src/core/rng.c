/* Counter-based random streams. Each draw hashes (key, counter) with two rounds of the splitmix64
 * finalizer, so a stream is reproducible from (seed, purpose) alone and independent of how many
 * draws other streams made. */
#include "internal.h"

#include <math.h>

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

bl_rng bl_rng_make(uint64_t seed, uint64_t purpose) {
    return (bl_rng){mix64(mix64(seed + 0x9e3779b97f4a7c15ull) ^ (purpose * 0xd1b54a32d192ed03ull)), 0};
}

uint64_t bl_rng_u64(bl_rng *r) { return mix64(r->key ^ mix64(r->counter++ + 0x9e3779b97f4a7c15ull)); }

double bl_rng_uniform(bl_rng *r) { return (double)(bl_rng_u64(r) >> 11) * 0x1.0p-53; }

double bl_rng_normal(bl_rng *r) {
    /* Box-Muller; one draw per call keeps the stream position simple to reason about. */
    double u1 = 1.0 - bl_rng_uniform(r), u2 = bl_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

double bl_rng_gamma(bl_rng *r, double shape) {
    if (!(shape > 0)) return NAN;
    /* Shape < 1 from shape + 1: G(a) = G(a + 1) U^(1/a). */
    if (shape < 1) return bl_rng_gamma(r, shape + 1) * pow(1.0 - bl_rng_uniform(r), 1.0 / shape);
    /* Marsaglia and Tsang (2000): a squeezed rejection from a transformed normal. */
    const double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double z = bl_rng_normal(r), v = 1.0 + c * z;
        if (v <= 0) continue;
        v = v * v * v;
        double u = 1.0 - bl_rng_uniform(r);
        if (log(u) < 0.5 * z * z + d - d * v + d * log(v)) return d * v;
    }
}

double bl_rng_beta(bl_rng *r, double a, double b) {
    double x = bl_rng_gamma(r, a), y = bl_rng_gamma(r, b);
    return x / (x + y);
}

int64_t bl_rng_below(bl_rng *r, int64_t n) {
    if (n <= 1) return 0;
    /* Rejection sampling removes modulo bias. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % (uint64_t)n;
    uint64_t x;
    do x = bl_rng_u64(r);
    while (x >= limit);
    return (int64_t)(x % (uint64_t)n);
}

void bl_rng_shuffle(bl_rng *r, int64_t *idx, int64_t n) {
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = bl_rng_below(r, i + 1), t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
}

int bl_fill_uniform_(bl_tensor *t, bl_rng *r, double lo, double hi) {
    BL_CHECK_RC(t && bl_dtype_is_float(t->dtype), "bl_fill_uniform_: needs a float tensor");
    for (int64_t i = 0, n = bl_numel(t); i < n; i++) bl_set_flat(t, i, lo + (hi - lo) * bl_rng_uniform(r));
    return BL_OK;
}

int bl_fill_normal_(bl_tensor *t, bl_rng *r, double mean, double std) {
    BL_CHECK_RC(t && bl_dtype_is_float(t->dtype), "bl_fill_normal_: needs a float tensor");
    for (int64_t i = 0, n = bl_numel(t); i < n; i++) bl_set_flat(t, i, mean + std * bl_rng_normal(r));
    return BL_OK;
}
