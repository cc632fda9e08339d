/* Fast F32 convolution kernels on the CPU, in two implementations with the same contracts as the
 * reference kernels in backend/ref/ref_conv.h (NCHW activations, OIHW weights):
 *  - im2col + GEMM (always built): each image is unfolded into a column matrix and multiplied by
 *    the weights; images are spread over the OpenMP threads, one single-threaded GEMM each.
 *  - oneDNN direct convolution (when built with it): primitives cached per shape, NCHW activations
 *    reordered to the layout oneDNN prefers for the call and back, channels-last ones used as
 *    they are.
 * Neither allocates: the caller passes scratch memory of the size the matching *_workspace
 * function gives (it may differ between passes and shapes). */
#ifndef BALLAST_CPU_CONV_H
#define BALLAST_CPU_CONV_H

#include "backend/ref/ref_conv.h"
#include "ballast/tensor.h"

#include <stdbool.h>
#include <stddef.h>

typedef enum { BL_CONV_FWD, BL_CONV_BWD_DATA, BL_CONV_BWD_WEIGHT } bl_conv_pass;

/* Bytes of scratch cpu_conv2d_<pass>_f32 needs for g (depends on the OpenMP thread count). */
size_t cpu_conv2d_workspace(const bl_conv_geom *g, bl_conv_pass pass);

/* y (N, O, OH, OW) = conv(x (N, C, H, W), w (O, C/groups, KH, KW)) + bias (O) or NULL. */
void cpu_conv2d_fwd_f32(const bl_conv_geom *g, float *y, const float *x, const float *w, const float *bias,
                        void *work);
/* dx (N, C, H, W) = d<y, dy>/dx for dy (N, O, OH, OW), w (O, C/groups, KH, KW), + bias (C) or NULL. */
void cpu_conv2d_bwd_data_f32(const bl_conv_geom *g, float *dx, const float *dy, const float *w, const float *bias,
                             void *work);
/* dw (O, C/groups, KH, KW) = d<y, dy>/dw for x (N, C, H, W), dy (N, O, OH, OW); and, when db is
 * not NULL, db (O) = dy summed over N, OH, OW. */
void cpu_conv2d_bwd_weight_f32(const bl_conv_geom *g, float *dw, float *db, const float *x, const float *dy,
                               void *work);
/* sums (C) = t (N, C, HW) summed over N and HW. */
void cpu_channel_sum_f32(int64_t N, int64_t C, int64_t HW, float *sums, const float *t);

#ifdef BALLAST_HAVE_ONEDNN
/* The same three passes on oneDNN. onednn_conv2d_prepare builds (or finds) the cached primitive
 * for this pass of g and gives the bytes of scratch its kernel needs; it returns BL_ERR, without
 * setting an error, when oneDNN cannot run this convolution (the caller then uses im2col). The
 * kernels must only be called after a successful prepare of the same geometry, pass and bias
 * choice; they return BL_ERR (with an error set) when oneDNN fails. Not thread-safe: call them
 * from one thread, as the ops do. */
int onednn_conv2d_prepare(const bl_conv_geom *g, bl_conv_pass pass, bool with_bias, size_t *workspace);
/* saved_input: NULL, or onednn_conv2d_saved_input_bytes(g, bias != NULL) bytes where the
 * forward pass leaves its reordered copy of x for the backward pass (see onednn_conv2d_bwd_f32). */
int onednn_conv2d_fwd_f32(const bl_conv_geom *g, float *y, const float *x, const float *w, const float *bias,
                          void *saved_input, void *work);
int onednn_conv2d_bwd_data_f32(const bl_conv_geom *g, float *dx, const float *dy, const float *w, const float *bias,
                               void *work);
int onednn_conv2d_bwd_weight_f32(const bl_conv_geom *g, float *dw, float *db, const float *x, const float *dy,
                                 void *work);

/* Bytes of the reordered copy of x that a forward pass (with or without bias) can leave for the
 * backward-weight pass, or 0 when they would not share it (then there is nothing to save). */
size_t onednn_conv2d_saved_input_bytes(const bl_conv_geom *g, bool with_bias);
typedef struct {
    const void *data;  /* the copy a forward pass left, or NULL */
    bool with_bias;    /* whether that forward pass had a bias */
} onednn_saved_input;

/* Both backward passes of a convolution from one reorder of dy: dx (when not NULL), and dw with
 * db (O) (when dw is not NULL; db may be NULL). The weight pass reads x's copy from `saved` (may
 * be NULL) instead of reordering x again when the layouts agree. Scratch: the bytes
 * onednn_conv2d_bwd_prepare gives for the same g and bias choice. */
int onednn_conv2d_bwd_prepare(const bl_conv_geom *g, bool with_bias, size_t *workspace);
int onednn_conv2d_bwd_f32(const bl_conv_geom *g, float *dx, float *dw, float *db, const float *dy, const float *w,
                          const float *x, const onednn_saved_input *saved, void *work);
/* The same for channels-last activations: x, y, dx and dy are (N, H, W, C) in memory (see
 * layout.h), weights still (O, C/groups, KH, KW). The prepare functions return BL_ERR, without an
 * error, when oneDNN has no fast kernel for this geometry in this layout (the caller then converts
 * to NCHW). The backward computes dx (when not NULL) and dw with db (O) (when dw is not NULL; db
 * may be NULL) in one call. */
int onednn_conv2d_nhwc_prepare(const bl_conv_geom *g, bl_conv_pass pass, bool with_bias, size_t *workspace);
int onednn_conv2d_nhwc_fwd_f32(const bl_conv_geom *g, float *y, const float *x, const float *w, const float *bias,
                               void *work);
int onednn_conv2d_nhwc_bwd_prepare(const bl_conv_geom *g, bool with_bias, size_t *workspace);
int onednn_conv2d_nhwc_bwd_f32(const bl_conv_geom *g, float *dx, float *dw, float *db, const float *dy,
                               const float *w, const float *x, void *work);
/* Inference only, channels last: y = act(conv(x, w) + bias + residual) in one pass, act ReLU when
 * `relu`, residual (N, OH, OW, O) or NULL; bias (O) is required (a folded batch norm's shift). The
 * prepare function returns BL_ERR, without an error, when oneDNN has no fast kernel for it. */
int onednn_conv2d_nhwc_fused_prepare(const bl_conv_geom *g, bool residual, bool relu, size_t *workspace);
int onednn_conv2d_nhwc_fused_f32(const bl_conv_geom *g, float *y, const float *x, const float *w, const float *bias,
                                 const float *residual, bool relu, void *work);
/* Frees every cached primitive (for leak checkers and tests). */
void onednn_conv_release_all(void);
#endif

#endif
