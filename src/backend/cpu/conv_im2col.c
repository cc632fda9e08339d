/* Convolution as matrix products (see conv.h). For one image and one group, the forward pass is
 *   y (O/groups, OH*OW) = w (O/groups, C/groups*KH*KW) @ col (C/groups*KH*KW, OH*OW)
 * where col is the image unfolded by im2col; backward-data multiplies by w^T and folds the columns
 * back (col2im), backward-weight multiplies dy by col^T. Images are independent, so they are
 * spread over the threads with one single-threaded GEMM each: the per-image products are small
 * and skinny (M = O/groups), and a threaded GEMM on them spends more time waking threads than
 * computing. With fewer images than threads the loop runs serially and the GEMM uses the threads.
 * A 1x1, stride-1, unpadded convolution needs no unfolding: the image already is its column
 * matrix. */
#include "conv.h"

#include "backend/cpu/gemm.h"

#include <omp.h>
#include <string.h>

/* Scratch per thread is padded to whole cache lines so threads never share one. */
#define FLOATS_PER_LINE 16

static bool is_pointwise(const bl_conv_geom *g) {
    return g->KH == 1 && g->KW == 1 && g->stride_h == 1 && g->stride_w == 1 && g->pad_h == 0 && g->pad_w == 0;
}

/* Threads the image loop runs on: all of them, unless there are fewer images than threads. */
static int image_threads(const bl_conv_geom *g) {
    int t = omp_get_max_threads();
    return g->N >= t ? t : 1;
}

static int64_t round_to_line(int64_t floats) {
    return (floats + FLOATS_PER_LINE - 1) / FLOATS_PER_LINE * FLOATS_PER_LINE;
}

static int64_t col_floats(const bl_conv_geom *g) {
    return is_pointwise(g) ? 0 : round_to_line(g->C * g->KH * g->KW * g->OH * g->OW);
}

static int64_t weight_floats(const bl_conv_geom *g) {
    return round_to_line(g->O * (g->C / g->groups) * g->KH * g->KW);
}

/* Floats of scratch one thread uses in `pass`. Backward-weight threads other than the first also
 * keep a private weight gradient, summed at the end. */
static int64_t thread_floats(const bl_conv_geom *g, bl_conv_pass pass) {
    return col_floats(g) + (pass == BL_CONV_BWD_WEIGHT ? weight_floats(g) : 0);
}

size_t cpu_conv2d_workspace(const bl_conv_geom *g, bl_conv_pass pass) {
    return (size_t)(thread_floats(g, pass) * image_threads(g)) * sizeof(float);
}

/* The output columns [lo, hi) whose tap at offset `off` (= k * dilation - pad) reads inside an
 * input row of `size` elements: 0 <= o * stride + off < size. */
static void valid_range(int64_t off, int64_t stride, int64_t size, int64_t out_size, int64_t *lo, int64_t *hi) {
    int64_t first = off >= 0 ? 0 : (-off + stride - 1) / stride;
    int64_t last = size - 1 - off < 0 ? 0 : (size - 1 - off) / stride + 1;
    *lo = first < out_size ? first : out_size;
    *hi = last < out_size ? last : out_size;
    if (*hi < *lo) *hi = *lo;
}

/* col (C*KH*KW, OH*OW) = the patches of one image x (C, H, W): row (c, kh, kw) holds, for each
 * output position, the input element that tap reads, or 0 where it reads padding. */
static void im2col(const bl_conv_geom *g, float *col, const float *x) {
    int64_t ohw = g->OH * g->OW;
    for (int64_t c = 0; c < g->C; c++)
        for (int64_t kh = 0; kh < g->KH; kh++)
            for (int64_t kw = 0; kw < g->KW; kw++) {
                float *row = col + ((c * g->KH + kh) * g->KW + kw) * ohw;
                int64_t off_w = kw * g->dilation_w - g->pad_w, lo, hi;
                valid_range(off_w, g->stride_w, g->W, g->OW, &lo, &hi);
                for (int64_t oh = 0; oh < g->OH; oh++) {
                    float *dst = row + oh * g->OW;
                    int64_t ih = oh * g->stride_h - g->pad_h + kh * g->dilation_h;
                    if (ih < 0 || ih >= g->H) {
                        memset(dst, 0, (size_t)g->OW * sizeof *dst);
                        continue;
                    }
                    const float *src = x + (c * g->H + ih) * g->W + off_w;
                    for (int64_t ow = 0; ow < lo; ow++) dst[ow] = 0.0f;
                    if (g->stride_w == 1) {
                        memcpy(dst + lo, src + lo, (size_t)(hi - lo) * sizeof *dst);
                    } else {
                        for (int64_t ow = lo; ow < hi; ow++) dst[ow] = src[ow * g->stride_w];
                    }
                    for (int64_t ow = hi; ow < g->OW; ow++) dst[ow] = 0.0f;
                }
            }
}

/* x (C, H, W) += col folded back: the adjoint of im2col (padding entries are dropped). */
static void col2im(const bl_conv_geom *g, float *x, const float *col) {
    int64_t ohw = g->OH * g->OW;
    for (int64_t c = 0; c < g->C; c++)
        for (int64_t kh = 0; kh < g->KH; kh++)
            for (int64_t kw = 0; kw < g->KW; kw++) {
                const float *row = col + ((c * g->KH + kh) * g->KW + kw) * ohw;
                int64_t off_w = kw * g->dilation_w - g->pad_w, lo, hi;
                valid_range(off_w, g->stride_w, g->W, g->OW, &lo, &hi);
                for (int64_t oh = 0; oh < g->OH; oh++) {
                    int64_t ih = oh * g->stride_h - g->pad_h + kh * g->dilation_h;
                    if (ih < 0 || ih >= g->H) continue;
                    const float *src = row + oh * g->OW;
                    float *dst = x + (c * g->H + ih) * g->W + off_w;
                    for (int64_t ow = lo; ow < hi; ow++) dst[ow * g->stride_w] += src[ow];
                }
            }
}

static void add_channel_bias(int64_t C, int64_t HW, float *t, const float *bias) {
    for (int64_t c = 0; c < C; c++)
        for (int64_t i = 0; i < HW; i++) t[c * HW + i] += bias[c];
}

/* One image: y (O, OH*OW) from x (C, H, W); col is this thread's scratch. */
static void fwd_image(const bl_conv_geom *g, float *y, const float *x, const float *w, const float *bias,
                      float *col) {
    int64_t og = g->O / g->groups, ckk = g->C / g->groups * g->KH * g->KW, ohw = g->OH * g->OW;
    const float *cols = x;
    if (!is_pointwise(g)) {
        im2col(g, col, x);
        cols = col;
    }
    for (int64_t grp = 0; grp < g->groups; grp++) {
        float *yg = y + grp * og * ohw;
        float beta = 0.0f;
        if (bias) {
            /* Start from the bias and let the product accumulate onto it: no second pass. */
            for (int64_t o = 0; o < og; o++)
                for (int64_t i = 0; i < ohw; i++) yg[o * ohw + i] = bias[grp * og + o];
            beta = 1.0f;
        }
        bl_gemm_f32(false, false, og, ohw, ckk, 1.0f, w + grp * og * ckk, ckk, cols + grp * ckk * ohw, ohw, beta,
                    yg, ohw);
    }
}

void cpu_conv2d_fwd_f32(const bl_conv_geom *g, float *y, const float *x, const float *w, const float *bias,
                        void *work) {
    int nt = image_threads(g);
    int64_t per_thread = thread_floats(g, BL_CONV_FWD);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t n = 0; n < g->N; n++)
        fwd_image(g, y + n * g->O * g->OH * g->OW, x + n * g->C * g->H * g->W, w, bias,
                  (float *)work + omp_get_thread_num() * per_thread);
}

/* One image: dx (C, H, W) from dy (O, OH*OW). */
static void bwd_data_image(const bl_conv_geom *g, float *dx, const float *dy, const float *w, const float *bias,
                           float *col) {
    int64_t og = g->O / g->groups, ckk = g->C / g->groups * g->KH * g->KW, ohw = g->OH * g->OW;
    bool pointwise = is_pointwise(g);
    float *cols = pointwise ? dx : col;
    for (int64_t grp = 0; grp < g->groups; grp++)
        bl_gemm_f32(true, false, ckk, ohw, og, 1.0f, w + grp * og * ckk, ckk, dy + grp * og * ohw, ohw, 0.0f,
                    cols + grp * ckk * ohw, ohw);
    if (!pointwise) {
        memset(dx, 0, (size_t)(g->C * g->H * g->W) * sizeof *dx);
        col2im(g, dx, col);
    }
    if (bias) add_channel_bias(g->C, g->H * g->W, dx, bias);
}

void cpu_conv2d_bwd_data_f32(const bl_conv_geom *g, float *dx, const float *dy, const float *w, const float *bias,
                             void *work) {
    int nt = image_threads(g);
    int64_t per_thread = thread_floats(g, BL_CONV_BWD_DATA);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t n = 0; n < g->N; n++)
        bwd_data_image(g, dx + n * g->C * g->H * g->W, dy + n * g->O * g->OH * g->OW, w, bias,
                       (float *)work + omp_get_thread_num() * per_thread);
}

/* One image: dw (O, C/groups*KH*KW) += dy (O, OH*OW) @ col^T. */
static void bwd_weight_image(const bl_conv_geom *g, float *dw, const float *x, const float *dy, float *col) {
    int64_t og = g->O / g->groups, ckk = g->C / g->groups * g->KH * g->KW, ohw = g->OH * g->OW;
    const float *cols = x;
    if (!is_pointwise(g)) {
        im2col(g, col, x);
        cols = col;
    }
    for (int64_t grp = 0; grp < g->groups; grp++)
        bl_gemm_f32(false, true, og, ckk, ohw, 1.0f, dy + grp * og * ohw, ohw, cols + grp * ckk * ohw, ohw, 1.0f,
                    dw + grp * og * ckk, ckk);
}

void cpu_conv2d_bwd_weight_f32(const bl_conv_geom *g, float *dw, float *db, const float *x, const float *dy,
                               void *work) {
    int nt = image_threads(g);
    int64_t per_thread = thread_floats(g, BL_CONV_BWD_WEIGHT), cols = col_floats(g);
    int64_t wn = g->O * (g->C / g->groups) * g->KH * g->KW;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = omp_get_thread_num();
        float *col = (float *)work + t * per_thread;
        /* Thread 0 accumulates straight into dw, the others into their own copy. */
        float *acc = t == 0 ? dw : col + cols;
        memset(acc, 0, (size_t)wn * sizeof *acc);
#pragma omp for schedule(static)
        for (int64_t n = 0; n < g->N; n++)
            bwd_weight_image(g, acc, x + n * g->C * g->H * g->W, dy + n * g->O * g->OH * g->OW, col);
        /* The implicit barrier of the loop above makes every partial sum complete. */
#pragma omp for schedule(static)
        for (int64_t i = 0; i < wn; i++)
            for (int s = 1; s < omp_get_num_threads(); s++)
                dw[i] += ((const float *)work + s * per_thread + cols)[i];
    }
    if (db) cpu_channel_sum_f32(g->N, g->O, g->OH * g->OW, db, dy);
}

void cpu_channel_sum_f32(int64_t N, int64_t C, int64_t HW, float *sums, const float *t) {
#pragma omp parallel for schedule(static) if (N * C * HW >= 32768)
    for (int64_t c = 0; c < C; c++) {
        double acc = 0.0;
        for (int64_t n = 0; n < N; n++) {
            const float *p = t + (n * C + c) * HW;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int64_t i = 0; i < HW; i++) s += p[i];
            acc += s;
        }
        sums[c] = (float)acc;
    }
}
