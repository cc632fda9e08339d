/* Convolution kernels on the conv shapes of CIFAR ResNet-32 (3x3, 16/32/64 channels, 32/16/8
 * spatial): forward, backward-data and backward-weight of each implementation, timed separately,
 * then summed with each shape's multiplicity into the conv time of one training step. Not a
 * test; used to choose the implementation per shape and pass.
 *
 * build: cmake --build <build dir> --target ballast, then
 *   cc -O2 -fopenmp -Iinclude -Isrc bench/bench_conv.c <build dir>/libballast.a \
 *      $(pkg-config --libs yaml-0.1) -ldnnl -lopenblas -lpng -ljpeg -lz -lm -o bench_conv
 *   (add -DBALLAST_HAVE_ONEDNN=1 when the library was built with oneDNN)
 * run:   OMP_NUM_THREADS=2 ./bench_conv [batch] [repeats] */
#include "ballast/ballast.h"

#include "backend/cpu/conv.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    int cin, cout, hw, stride, count;
    bool first; /* the stem conv: no input gradient */
} resnet_conv;

static const resnet_conv shapes[] = {
    {3, 16, 32, 1, 1, true}, {16, 16, 32, 1, 10, false}, {16, 32, 32, 2, 1, false},
    {32, 32, 16, 1, 9, false}, {32, 64, 16, 2, 1, false}, {64, 64, 8, 1, 9, false},
};

/* "shared" is oneDNN as the ops use it in training: the forward pass leaves its copy of x, and
 * one backward call runs both passes (reported under bwdW, with bwdD 0). */
enum { IM2COL, ONEDNN, SHARED, N_IMPLS };
static const char *const impl_names[N_IMPLS] = {"im2col", "oneDNN", "shared"};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    const bl_conv_geom *g;
    float *x, *w, *y, *dx, *dw;
    bool first;
    void *saved; /* the forward pass's copy of x, for SHARED */
    void *work;
} buffers;

/* Runs one pass once; returns 0 when the implementation cannot run it. */
static int run_pass(int impl, bl_conv_pass pass, const buffers *b) {
    const bl_conv_geom *g = b->g;
    if (impl == IM2COL) {
        if (pass == BL_CONV_FWD) cpu_conv2d_fwd_f32(g, b->y, b->x, b->w, NULL, b->work);
        if (pass == BL_CONV_BWD_DATA) cpu_conv2d_bwd_data_f32(g, b->dx, b->y, b->w, NULL, b->work);
        if (pass == BL_CONV_BWD_WEIGHT) cpu_conv2d_bwd_weight_f32(g, b->dw, NULL, b->x, b->y, b->work);
        return 1;
    }
#ifdef BALLAST_HAVE_ONEDNN
    if (impl == SHARED) {
        if (pass == BL_CONV_FWD) return onednn_conv2d_fwd_f32(g, b->y, b->x, b->w, NULL, b->saved, b->work) == BL_OK;
        onednn_saved_input saved = {b->saved, false};
        return onednn_conv2d_bwd_f32(g, b->first ? NULL : b->dx, b->dw, NULL, b->y, b->w, b->x, &saved, b->work) ==
               BL_OK;
    }
    if (pass == BL_CONV_FWD) return onednn_conv2d_fwd_f32(g, b->y, b->x, b->w, NULL, NULL, b->work) == BL_OK;
    if (pass == BL_CONV_BWD_DATA) return onednn_conv2d_bwd_data_f32(g, b->dx, b->y, b->w, NULL, b->work) == BL_OK;
    return onednn_conv2d_bwd_weight_f32(g, b->dw, NULL, b->x, b->y, b->work) == BL_OK;
#else
    return 0;
#endif
}

static size_t workspace(int impl, const bl_conv_geom *g, bl_conv_pass pass, bool *ok) {
    *ok = true;
    if (impl == IM2COL) return cpu_conv2d_workspace(g, pass);
#ifdef BALLAST_HAVE_ONEDNN
    size_t bytes = 0;
    if (impl == SHARED && pass != BL_CONV_FWD)
        *ok = onednn_conv2d_bwd_prepare(g, false, &bytes) == BL_OK;
    else
        *ok = onednn_conv2d_prepare(g, pass, false, &bytes) == BL_OK;
    return bytes;
#else
    *ok = false;
    return 0;
#endif
}

/* Median seconds of one pass, or NAN when the implementation cannot run it. */
static double time_pass(int impl, bl_conv_pass pass, const bl_conv_geom *g, buffers *b, int repeats) {
    bool ok;
    size_t bytes = workspace(impl, g, pass, &ok);
    if (!ok) return NAN;
    b->work = aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    double times[64];
    if (repeats > 64) repeats = 64;
    if (!run_pass(impl, pass, b)) { /* warm-up: first-touch of buffers, primitive JIT */
        fprintf(stderr, "%s failed: %s\n", impl_names[impl], bl_last_error());
        free(b->work);
        return NAN;
    }
    for (int r = 0; r < repeats; r++) {
        double t0 = now();
        run_pass(impl, pass, b);
        times[r] = now() - t0;
    }
    free(b->work);
    qsort(times, (size_t)repeats, sizeof times[0], compare_doubles);
    return times[repeats / 2];
}

static float *random_floats(size_t n, unsigned seed) {
    float *p = aligned_alloc(64, (n * sizeof *p + 63) / 64 * 64);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
    }
    return p;
}

int main(int argc, char **argv) {
    int batch = argc > 1 ? atoi(argv[1]) : 128, repeats = argc > 2 ? atoi(argv[2]) : 5;
    printf("# conv kernels, ResNet-32 shapes, batch %d, %d threads, median of %d\n", batch, omp_get_max_threads(),
           repeats);
    printf("%-18s %5s %-7s %9s %9s %9s %8s %8s %8s\n", "shape", "count", "impl", "fwd ms", "bwdD ms", "bwdW ms",
           "fwd GF/s", "bwdD", "bwdW");
    double step[N_IMPLS][3] = {{0}}, best_step = 0, flop_step = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const resnet_conv *c = &shapes[s];
        bl_conv_geom g = {.N = batch, .C = c->cin, .H = c->hw, .W = c->hw, .O = c->cout, .KH = 3, .KW = 3,
                          .stride_h = c->stride, .stride_w = c->stride, .pad_h = 1, .pad_w = 1, .dilation_h = 1,
                          .dilation_w = 1, .groups = 1};
        bl_conv_geom_output_size(&g);
        size_t nx = (size_t)(g.N * g.C * g.H * g.W), ny = (size_t)(g.N * g.O * g.OH * g.OW);
        size_t nw = (size_t)(g.O * g.C * g.KH * g.KW);
        buffers b = {&g,       random_floats(nx, 1), random_floats(nw, 2), random_floats(ny, 3),
                     random_floats(nx, 4), random_floats(nw, 5), c->first, random_floats(nx + 64, 6), NULL};
        double flop = 2.0 * (double)ny * (double)(g.C * g.KH * g.KW);
        flop_step += c->count * flop * (c->first ? 2 : 3);
        double best = INFINITY;
        for (int impl = 0; impl < N_IMPLS; impl++) {
            double t[3];
            for (int pass = 0; pass < 3; pass++) {
                bool skip = pass == BL_CONV_BWD_DATA && (c->first || impl == SHARED);
                t[pass] = skip ? 0 : time_pass(impl, pass, &g, &b, repeats);
                step[impl][pass] += c->count * t[pass];
            }
            if (t[0] + t[1] + t[2] < best) best = t[0] + t[1] + t[2];
            char name[32];
            snprintf(name, sizeof name, "%d->%d %dx%d s%d", c->cin, c->cout, c->hw, c->hw, c->stride);
            printf("%-18s %5d %-7s %9.2f %9.2f %9.2f %8.1f %8.1f %8.1f\n", name, c->count, impl_names[impl],
                   t[0] * 1e3, t[1] * 1e3, t[2] * 1e3, flop / t[0] * 1e-9, t[1] > 0 ? flop / t[1] * 1e-9 : 0,
                   flop / t[2] * 1e-9);
            fflush(stdout);
        }
        best_step += c->count * best;
        free(b.x), free(b.w), free(b.y), free(b.dx), free(b.dw), free(b.saved);
    }
    for (int impl = 0; impl < N_IMPLS; impl++) {
        double total = step[impl][0] + step[impl][1] + step[impl][2];
        printf("%-7s step conv time: fwd %.1f + bwdD %.1f + bwdW %.1f = %.1f ms (%.1f GFLOP/s)\n", impl_names[impl],
               step[impl][0] * 1e3, step[impl][1] * 1e3, step[impl][2] * 1e3, total * 1e3, flop_step / total * 1e-9);
    }
    printf("best per shape: %.1f ms (%.1f GFLOP/s), conv-only ceiling %.0f img/s\n", best_step * 1e3,
           flop_step / best_step * 1e-9, batch / best_step);
    return 0;
}
