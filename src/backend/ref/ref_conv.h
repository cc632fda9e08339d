/* Reference 2-D convolution kernels: the plain loops that every fast convolution kernel is tested
 * against, and the F64 path of the conv ops. One geometry struct describes a convolution; its
 * three passes (forward, backward-data, backward-weight) also give the transposed convolution,
 * whose forward is this convolution's backward-data. Each kernel accumulates every output element
 * in double, gathering its own inputs, so none of them shares a loop structure with the
 * im2col/GEMM kernels they check. Serial on purpose: they run on tiny shapes. */
#ifndef BALLAST_REF_CONV_H
#define BALLAST_REF_CONV_H

#include <stdint.h>

/* The shape of one convolution y = conv(x, w), NCHW, as torch.nn.Conv2d:
 * x (N, C, H, W), w (O, C/groups, KH, KW), y (N, O, OH, OW) with
 * OH = (H + 2 pad_h - dilation_h (KH - 1) - 1) / stride_h + 1, and the same for OW. */
typedef struct {
    int64_t N, C, H, W;
    int64_t O, KH, KW;
    int64_t OH, OW;
    int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
    int64_t groups;
} bl_conv_geom;

/* Fills OH and OW from the rest of g; returns 0 when the output would be empty. */
int bl_conv_geom_output_size(bl_conv_geom *g);

/* y (N, O, OH, OW) = conv(x (N, C, H, W), w (O, C/groups, KH, KW)) + bias (O); bias may be NULL. */
void ref_conv2d_fwd_f32(const bl_conv_geom *g, float *y, const float *x, const float *w, const float *bias);
void ref_conv2d_fwd_f64(const bl_conv_geom *g, double *y, const double *x, const double *w, const double *bias);

/* dx (N, C, H, W) = d<y, dy>/dx for dy (N, O, OH, OW), w (O, C/groups, KH, KW), plus bias (C)
 * when not NULL (the transposed convolution's bias). */
void ref_conv2d_bwd_data_f32(const bl_conv_geom *g, float *dx, const float *dy, const float *w, const float *bias);
void ref_conv2d_bwd_data_f64(const bl_conv_geom *g, double *dx, const double *dy, const double *w,
                             const double *bias);

/* dw (O, C/groups, KH, KW) = d<y, dy>/dw for x (N, C, H, W), dy (N, O, OH, OW). */
void ref_conv2d_bwd_weight_f32(const bl_conv_geom *g, float *dw, const float *x, const float *dy);
void ref_conv2d_bwd_weight_f64(const bl_conv_geom *g, double *dw, const double *x, const double *dy);

/* sums (C) = t (N, C, HW) summed over N and HW: the gradient of a per-channel bias. */
void ref_channel_sum_f32(int64_t N, int64_t C, int64_t HW, float *sums, const float *t);
void ref_channel_sum_f64(int64_t N, int64_t C, int64_t HW, double *sums, const double *t);

#endif
