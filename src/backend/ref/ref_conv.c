/* Reference convolution kernels (see ref_conv.h): one output element at a time, each a sum that
 * gathers exactly the input elements the definition of convolution names. */
#include "ref_conv.h"

int bl_conv_geom_output_size(bl_conv_geom *g) {
    int64_t span_h = g->dilation_h * (g->KH - 1) + 1, span_w = g->dilation_w * (g->KW - 1) + 1;
    int64_t room_h = g->H + 2 * g->pad_h - span_h, room_w = g->W + 2 * g->pad_w - span_w;
    if (room_h < 0 || room_w < 0) return 0;
    g->OH = room_h / g->stride_h + 1;
    g->OW = room_w / g->stride_w + 1;
    return 1;
}

/* The input row (or column) that kernel tap k of output position o reads, or -1 when it falls in
 * the padding. */
static inline int64_t source_index(int64_t o, int64_t k, int64_t stride, int64_t pad, int64_t dilation,
                                   int64_t size) {
    int64_t i = o * stride - pad + k * dilation;
    return i >= 0 && i < size ? i : -1;
}

/* The output row (or column) whose tap k reads input position i, or -1 when none does: the
 * inverse of source_index, used by backward-data to gather instead of scatter. */
static inline int64_t target_index(int64_t i, int64_t k, int64_t stride, int64_t pad, int64_t dilation,
                                   int64_t out_size) {
    int64_t t = i + pad - k * dilation;
    if (t < 0 || t % stride) return -1;
    t /= stride;
    return t < out_size ? t : -1;
}

#define REF_CONV_KERNELS(T, SUFFIX)                                                                       \
    void ref_conv2d_fwd_##SUFFIX(const bl_conv_geom *g, T *y, const T *x, const T *w, const T *bias) {    \
        int64_t cg = g->C / g->groups, og = g->O / g->groups;                                             \
        for (int64_t n = 0; n < g->N; n++)                                                                \
            for (int64_t o = 0; o < g->O; o++)                                                            \
                for (int64_t oh = 0; oh < g->OH; oh++)                                                    \
                    for (int64_t ow = 0; ow < g->OW; ow++) {                                              \
                        double acc = bias ? bias[o] : 0.0;                                                \
                        for (int64_t ci = 0; ci < cg; ci++) {                                             \
                            int64_t c = o / og * cg + ci;                                                 \
                            for (int64_t kh = 0; kh < g->KH; kh++) {                                      \
                                int64_t ih = source_index(oh, kh, g->stride_h, g->pad_h, g->dilation_h, g->H); \
                                if (ih < 0) continue;                                                     \
                                for (int64_t kw = 0; kw < g->KW; kw++) {                                  \
                                    int64_t iw =                                                          \
                                        source_index(ow, kw, g->stride_w, g->pad_w, g->dilation_w, g->W); \
                                    if (iw < 0) continue;                                                 \
                                    acc += (double)x[((n * g->C + c) * g->H + ih) * g->W + iw] *          \
                                           w[((o * cg + ci) * g->KH + kh) * g->KW + kw];                  \
                                }                                                                         \
                            }                                                                             \
                        }                                                                                 \
                        y[((n * g->O + o) * g->OH + oh) * g->OW + ow] = (T)acc;                           \
                    }                                                                                     \
    }                                                                                                     \
                                                                                                          \
    void ref_conv2d_bwd_data_##SUFFIX(const bl_conv_geom *g, T *dx, const T *dy, const T *w, const T *bias) { \
        int64_t cg = g->C / g->groups, og = g->O / g->groups;                                             \
        for (int64_t n = 0; n < g->N; n++)                                                                \
            for (int64_t c = 0; c < g->C; c++)                                                            \
                for (int64_t ih = 0; ih < g->H; ih++)                                                     \
                    for (int64_t iw = 0; iw < g->W; iw++) {                                               \
                        double acc = bias ? bias[c] : 0.0;                                                \
                        int64_t grp = c / cg, ci = c % cg;                                                \
                        for (int64_t o = grp * og; o < (grp + 1) * og; o++)                               \
                            for (int64_t kh = 0; kh < g->KH; kh++) {                                      \
                                int64_t oh = target_index(ih, kh, g->stride_h, g->pad_h, g->dilation_h, g->OH); \
                                if (oh < 0) continue;                                                     \
                                for (int64_t kw = 0; kw < g->KW; kw++) {                                  \
                                    int64_t ow =                                                          \
                                        target_index(iw, kw, g->stride_w, g->pad_w, g->dilation_w, g->OW); \
                                    if (ow < 0) continue;                                                 \
                                    acc += (double)dy[((n * g->O + o) * g->OH + oh) * g->OW + ow] *       \
                                           w[((o * cg + ci) * g->KH + kh) * g->KW + kw];                  \
                                }                                                                         \
                            }                                                                             \
                        dx[((n * g->C + c) * g->H + ih) * g->W + iw] = (T)acc;                            \
                    }                                                                                     \
    }                                                                                                     \
                                                                                                          \
    void ref_conv2d_bwd_weight_##SUFFIX(const bl_conv_geom *g, T *dw, const T *x, const T *dy) {          \
        int64_t cg = g->C / g->groups, og = g->O / g->groups;                                             \
        for (int64_t o = 0; o < g->O; o++)                                                                \
            for (int64_t ci = 0; ci < cg; ci++)                                                           \
                for (int64_t kh = 0; kh < g->KH; kh++)                                                    \
                    for (int64_t kw = 0; kw < g->KW; kw++) {                                              \
                        int64_t c = o / og * cg + ci;                                                     \
                        double acc = 0.0;                                                                 \
                        for (int64_t n = 0; n < g->N; n++)                                                \
                            for (int64_t oh = 0; oh < g->OH; oh++) {                                      \
                                int64_t ih = source_index(oh, kh, g->stride_h, g->pad_h, g->dilation_h, g->H); \
                                if (ih < 0) continue;                                                     \
                                for (int64_t ow = 0; ow < g->OW; ow++) {                                  \
                                    int64_t iw =                                                          \
                                        source_index(ow, kw, g->stride_w, g->pad_w, g->dilation_w, g->W); \
                                    if (iw < 0) continue;                                                 \
                                    acc += (double)x[((n * g->C + c) * g->H + ih) * g->W + iw] *          \
                                           dy[((n * g->O + o) * g->OH + oh) * g->OW + ow];                \
                                }                                                                         \
                            }                                                                             \
                        dw[((o * cg + ci) * g->KH + kh) * g->KW + kw] = (T)acc;                           \
                    }                                                                                     \
    }                                                                                                     \
                                                                                                          \
    void ref_channel_sum_##SUFFIX(int64_t N, int64_t C, int64_t HW, T *sums, const T *t) {                \
        for (int64_t c = 0; c < C; c++) {                                                                 \
            double acc = 0.0;                                                                             \
            for (int64_t n = 0; n < N; n++)                                                               \
                for (int64_t i = 0; i < HW; i++) acc += t[(n * C + c) * HW + i];                          \
            sums[c] = (T)acc;                                                                             \
        }                                                                                                 \
    }

REF_CONV_KERNELS(float, f32)
REF_CONV_KERNELS(double, f64)
