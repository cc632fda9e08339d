/* Convolution on oneDNN's direct-convolution primitives (see conv.h).
 *
 * oneDNN runs fastest on its own blocked layouts (channels in blocks of 8 or 16), 2-3x faster
 * than on plain NCHW, so each primitive is created with "any" layouts and every call reorders
 * its NCHW/OIHW arguments into the chosen layouts and its results back: a few memory passes
 * against a convolution's many multiply-adds. Creating a primitive costs far more than running
 * one, so each (geometry, pass, bias) keeps its primitive, its reorders and its memory objects
 * in a small cache; the memory objects only change data pointers between calls. The reordered
 * copies and oneDNN's own scratchpad live in the workspace the caller passes, so nothing is
 * allocated per call. In training, the forward pass can leave its reordered x in caller memory
 * for the weight gradient, and the fused backward reorders dy once for both of its passes: four
 * activation reorders per convolution and step instead of six. Channels-last (NHWC) activations
 * avoid even those: their primitives are created for NHWC, which oneDNN's AVX-512 and AVX2
 * kernels run as fast as their blocked layouts, so only the (small) weights are reordered. */
#include "conv.h"

#include "ballast/tensor.h"

#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_CAP 256
#define MAX_SLOTS 5
#define BUFFER_ALIGN 64

/* Compared with memcmp, so always built from a zeroed struct. */
typedef struct {
    bl_conv_geom geom;
    int64_t pass;
    int64_t with_bias;
    int64_t channels_last; /* activations NHWC in the caller's memory and in the primitive's */
    int64_t epilogue;      /* an inference forward with EPILOGUE_* steps after the convolution */
} entry_key;

/* Steps an inference forward runs on its output before writing it: y = act(conv + bias + residual). */
enum { EPILOGUE_INFERENCE = 1, EPILOGUE_RESIDUAL = 2, EPILOGUE_RELU = 4 };
/* The residual's argument: the source of the first post-op (a binary add). */
#define ARG_RESIDUAL (DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1)

/* One primitive argument: the caller's memory in the plain layout and, when the primitive wants
 * another layout, a reordered copy in the workspace. */
typedef struct {
    int arg;
    bool output;
    dnnl_memory_t user, prim; /* the same object when no reorder is needed */
    dnnl_primitive_t reorder; /* user -> prim for inputs, prim -> user for outputs; NULL if none */
    size_t offset;            /* of the reordered copy in the workspace */
} slot;

typedef struct {
    entry_key key;
    dnnl_primitive_t conv;
    slot slots[MAX_SLOTS];
    int n_slots;
    dnnl_memory_t scratchpad; /* NULL when the primitive needs none */
    size_t scratchpad_offset;
    size_t workspace;
} entry;

static struct {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    entry *entries[CACHE_CAP];
    int count;
    int next_victim; /* when full, entries are replaced in creation order */
} cache;

/* Jumps to the function's `fail` label when a oneDNN call fails. Building a primitive fails
 * quietly (the caller falls back to another implementation); running one records why. */
static struct {
    const char *what;
    dnnl_status_t status;
} last_failure;

#define DNNL_TRY(call)                                                                             \
    do {                                                                                           \
        dnnl_status_t st_ = (call);                                                                \
        if (st_ != dnnl_success) {                                                                 \
            last_failure.what = #call;                                                             \
            last_failure.status = st_;                                                             \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

static size_t align_up(size_t bytes) { return (bytes + BUFFER_ALIGN - 1) / BUFFER_ALIGN * BUFFER_ALIGN; }

static void destroy_entry(entry *e) {
    if (!e) return;
    for (int i = 0; i < e->n_slots; i++) {
        slot *s = &e->slots[i];
        if (s->reorder) dnnl_primitive_destroy(s->reorder);
        if (s->prim && s->prim != s->user) dnnl_memory_destroy(s->prim);
        if (s->user) dnnl_memory_destroy(s->user);
    }
    if (e->scratchpad) dnnl_memory_destroy(e->scratchpad);
    if (e->conv) dnnl_primitive_destroy(e->conv);
    free(e);
}

static int ensure_engine(void) {
    if (cache.engine) return BL_OK;
    DNNL_TRY(dnnl_engine_create(&cache.engine, dnnl_cpu, 0));
    DNNL_TRY(dnnl_stream_create(&cache.stream, cache.engine, dnnl_stream_default_flags));
    return BL_OK;
fail:
    if (cache.engine) dnnl_engine_destroy(cache.engine);
    cache.engine = NULL;
    return BL_ERR;
}

/* Appends to e the slot of argument `arg`, whose caller layout is user_md and whose primitive
 * layout is prim_md; a reordered copy, when needed, is placed at *workspace, which grows past it. */
static int add_slot(entry *e, int arg, bool output, const dnnl_memory_desc_t *user_md,
                    const dnnl_memory_desc_t *prim_md, size_t *workspace) {
    dnnl_primitive_desc_t reorder_pd = NULL;
    slot *s = &e->slots[e->n_slots++];
    *s = (slot){.arg = arg, .output = output};
    DNNL_TRY(dnnl_memory_create(&s->user, user_md, cache.engine, DNNL_MEMORY_NONE));
    if (dnnl_memory_desc_equal(user_md, prim_md)) {
        s->prim = s->user;
        return BL_OK;
    }
    DNNL_TRY(dnnl_memory_create(&s->prim, prim_md, cache.engine, DNNL_MEMORY_NONE));
    if (output)
        DNNL_TRY(dnnl_reorder_primitive_desc_create(&reorder_pd, prim_md, cache.engine, user_md, cache.engine, NULL));
    else
        DNNL_TRY(dnnl_reorder_primitive_desc_create(&reorder_pd, user_md, cache.engine, prim_md, cache.engine, NULL));
    DNNL_TRY(dnnl_primitive_create(&s->reorder, reorder_pd));
    dnnl_primitive_desc_destroy(reorder_pd);
    s->offset = *workspace;
    *workspace += align_up(dnnl_memory_desc_get_size(prim_md));
    return BL_OK;
fail:
    if (reorder_pd) dnnl_primitive_desc_destroy(reorder_pd);
    return BL_ERR;
}

/* The primitive layout of argument `what` (index `index`) that pd chose. */
static const dnnl_memory_desc_t *chosen(const_dnnl_primitive_desc_t pd, dnnl_query_t what, int index) {
    return dnnl_primitive_desc_query_md(pd, what, index);
}

/* False when pd runs oneDNN's reference implementation ("ref:..."). */
static bool optimized(const_dnnl_primitive_desc_t pd) {
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success || !impl) return false;
    return strncmp(impl, "ref", 3) != 0;
}

static entry *build_entry(const entry_key *key) {
    const bl_conv_geom *g = &key->geom;
    entry *e = calloc(1, sizeof *e);
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post_ops = NULL;
    dnnl_primitive_desc_t fwd_pd = NULL, pd = NULL;
    if (!e) return NULL;
    e->key = *key;

    dnnl_dims_t src_dims = {g->N, g->C, g->H, g->W}, dst_dims = {g->N, g->O, g->OH, g->OW}, bias_dims = {g->O};
    dnnl_dims_t w_dims = {g->groups, g->O / g->groups, g->C / g->groups, g->KH, g->KW};
    int w_ndims = 5;
    dnnl_format_tag_t w_tag = dnnl_goihw;
    if (g->groups == 1) {
        /* Without groups, oneDNN wants 4-D weights: drop the leading group dim. */
        memmove(w_dims, w_dims + 1, 4 * sizeof w_dims[0]);
        w_ndims = 4;
        w_tag = dnnl_oihw;
    }
    dnnl_dims_t strides = {g->stride_h, g->stride_w}, dilates = {g->dilation_h - 1, g->dilation_w - 1};
    dnnl_dims_t pad_l = {g->pad_h, g->pad_w};
    /* The right/bottom padding that makes oneDNN's output size equal ours (it may be smaller
     * than the left padding when the stride skips the last rows). */
    dnnl_dims_t pad_r = {(g->OH - 1) * g->stride_h + (g->KH - 1) * g->dilation_h + 1 - g->H - g->pad_h,
                         (g->OW - 1) * g->stride_w + (g->KW - 1) * g->dilation_w + 1 - g->W - g->pad_w};

    /* NCHW activations let the primitive pick its layout (reordered per call); NHWC ones are
     * imposed on it, so that they need no reorder at all. */
    const dnnl_format_tag_t user_tag = key->channels_last ? dnnl_nhwc : dnnl_nchw;
    const dnnl_format_tag_t act_tag = key->channels_last ? dnnl_nhwc : dnnl_format_tag_any;
    dnnl_memory_desc_t src_user, dst_user, w_user, bias_md, src_any, dst_any, w_any;
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&src_user, 4, src_dims, dnnl_f32, user_tag));
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&dst_user, 4, dst_dims, dnnl_f32, user_tag));
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&w_user, w_ndims, w_dims, dnnl_f32, w_tag));
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&bias_md, 1, bias_dims, dnnl_f32, dnnl_a));
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&src_any, 4, src_dims, dnnl_f32, act_tag));
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&dst_any, 4, dst_dims, dnnl_f32, act_tag));
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&w_any, w_ndims, w_dims, dnnl_f32, dnnl_format_tag_any));

    DNNL_TRY(dnnl_primitive_attr_create(&attr));
    DNNL_TRY(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    if (key->epilogue & (EPILOGUE_RESIDUAL | EPILOGUE_RELU)) {
        DNNL_TRY(dnnl_post_ops_create(&post_ops));
        if (key->epilogue & EPILOGUE_RESIDUAL)
            DNNL_TRY(dnnl_post_ops_append_binary(post_ops, dnnl_binary_add, &dst_user));
        if (key->epilogue & EPILOGUE_RELU)
            DNNL_TRY(dnnl_post_ops_append_eltwise(post_ops, 1.0f, dnnl_eltwise_relu, 0, 0));
        DNNL_TRY(dnnl_primitive_attr_set_post_ops(attr, post_ops));
    }

    /* The forward descriptor is also the backward passes' hint; it must match their bias. */
    bool fwd_bias = key->with_bias && key->pass != BL_CONV_BWD_DATA;
    dnnl_convolution_desc_t fwd_desc, desc;
    const dnnl_prop_kind_t prop = key->epilogue ? dnnl_forward_inference : dnnl_forward_training;
    DNNL_TRY(dnnl_dilated_convolution_forward_desc_init(&fwd_desc, prop, dnnl_convolution_direct,
                                                         &src_any, &w_any, fwd_bias ? &bias_md : NULL, &dst_any,
                                                         strides, dilates, pad_l, pad_r));
    DNNL_TRY(dnnl_primitive_desc_create(&fwd_pd, &fwd_desc, attr, cache.engine, NULL));

    size_t workspace = 0;
/* Adds the slot of argument ARG (an output when OUT) in caller layout USER_MD, whose primitive
 * layout pd reports for QUERY, INDEX. */
#define SLOT(ARG, OUT, USER_MD, QUERY, INDEX)                                                       \
    do {                                                                                           \
        if (add_slot(e, ARG, OUT, &USER_MD, chosen(pd, QUERY, INDEX), &workspace) != BL_OK) goto fail; \
    } while (0)
    switch (key->pass) {
    case BL_CONV_FWD:
        pd = fwd_pd;
        fwd_pd = NULL;
        SLOT(DNNL_ARG_SRC, false, src_user, dnnl_query_src_md, 0);
        SLOT(DNNL_ARG_WEIGHTS, false, w_user, dnnl_query_weights_md, 0);
        if (key->with_bias)
            SLOT(DNNL_ARG_BIAS, false, bias_md, dnnl_query_weights_md, 1);
        SLOT(DNNL_ARG_DST, true, dst_user, dnnl_query_dst_md, 0);
        if (key->epilogue & EPILOGUE_RESIDUAL) SLOT(ARG_RESIDUAL, false, dst_user, dnnl_query_dst_md, 0);
        break;
    case BL_CONV_BWD_DATA:
        DNNL_TRY(dnnl_dilated_convolution_backward_data_desc_init(&desc, dnnl_convolution_direct, &src_any, &w_any,
                                                                   &dst_any, strides, dilates, pad_l, pad_r));
        DNNL_TRY(dnnl_primitive_desc_create(&pd, &desc, attr, cache.engine, fwd_pd));
        SLOT(DNNL_ARG_DIFF_DST, false, dst_user, dnnl_query_diff_dst_md, 0);
        SLOT(DNNL_ARG_WEIGHTS, false, w_user, dnnl_query_weights_md, 0);
        SLOT(DNNL_ARG_DIFF_SRC, true, src_user, dnnl_query_diff_src_md, 0);
        break;
    case BL_CONV_BWD_WEIGHT:
        DNNL_TRY(dnnl_dilated_convolution_backward_weights_desc_init(&desc, dnnl_convolution_direct, &src_any, &w_any,
                                                                      key->with_bias ? &bias_md : NULL, &dst_any,
                                                                      strides, dilates, pad_l, pad_r));
        DNNL_TRY(dnnl_primitive_desc_create(&pd, &desc, attr, cache.engine, fwd_pd));
        SLOT(DNNL_ARG_SRC, false, src_user, dnnl_query_src_md, 0);
        SLOT(DNNL_ARG_DIFF_DST, false, dst_user, dnnl_query_diff_dst_md, 0);
        SLOT(DNNL_ARG_DIFF_WEIGHTS, true, w_user, dnnl_query_diff_weights_md, 0);
        if (key->with_bias)
            SLOT(DNNL_ARG_DIFF_BIAS, true, bias_md, dnnl_query_diff_weights_md, 1);
        break;
    }
#undef SLOT
    /* oneDNN's reference loops (its fallback for layouts without a tuned kernel) are far slower
     * than our im2col path: decline them. */
    if (!optimized(pd)) goto fail;

    const dnnl_memory_desc_t *scratch_md = chosen(pd, dnnl_query_scratchpad_md, 0);
    size_t scratch_bytes = scratch_md ? dnnl_memory_desc_get_size(scratch_md) : 0;
    if (scratch_bytes) {
        DNNL_TRY(dnnl_memory_create(&e->scratchpad, scratch_md, cache.engine, DNNL_MEMORY_NONE));
        e->scratchpad_offset = workspace;
        workspace += align_up(scratch_bytes);
    }
    e->workspace = workspace;
    DNNL_TRY(dnnl_primitive_create(&e->conv, pd));
    dnnl_primitive_desc_destroy(pd);
    if (fwd_pd) dnnl_primitive_desc_destroy(fwd_pd);
    dnnl_primitive_attr_destroy(attr);
    if (post_ops) dnnl_post_ops_destroy(post_ops);
    return e;
fail:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (fwd_pd) dnnl_primitive_desc_destroy(fwd_pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (post_ops) dnnl_post_ops_destroy(post_ops);
    destroy_entry(e);
    return NULL;
}

/* The cached entry of `key`, built on first use; NULL when oneDNN declines it. A declined key is
 * cached too (an entry without a primitive), so it is not retried every call. */
static entry *find_keyed(const entry_key *key) {
    for (int i = 0; i < cache.count; i++)
        if (!memcmp(&cache.entries[i]->key, key, sizeof *key)) return cache.entries[i]->conv ? cache.entries[i] : NULL;
    if (ensure_engine() != BL_OK) return NULL;
    entry *e = build_entry(key);
    if (!e) {
        e = calloc(1, sizeof *e);
        if (!e) return NULL;
        e->key = *key;
    }
    if (cache.count < CACHE_CAP) {
        cache.entries[cache.count++] = e;
    } else {
        destroy_entry(cache.entries[cache.next_victim]);
        cache.entries[cache.next_victim] = e;
        cache.next_victim = (cache.next_victim + 1) % CACHE_CAP;
    }
    return e->conv ? e : NULL;
}

/* The entry of one pass of g (no epilogue). */
static entry *find_or_build(const bl_conv_geom *g, bl_conv_pass pass, bool with_bias, bool channels_last) {
    entry_key key;
    memset(&key, 0, sizeof key);
    key.geom = *g;
    key.pass = pass;
    key.with_bias = with_bias;
    key.channels_last = channels_last;
    return find_keyed(&key);
}

int onednn_conv2d_prepare(const bl_conv_geom *g, bl_conv_pass pass, bool with_bias, size_t *workspace) {
    /* Backward-data has no bias in oneDNN; the transposed convolution's bias is added afterwards. */
    entry *e = find_or_build(g, pass, with_bias && pass != BL_CONV_BWD_DATA, false);
    if (!e) return BL_ERR;
    *workspace = e->workspace;
    return BL_OK;
}

/* Where one argument of a call lives: the caller's buffer in the plain layout and, optionally
 * (for an argument the primitive wants reordered), where its reordered copy goes instead of the
 * workspace; `ready` says that copy is already filled, so the reorder is skipped. */
typedef struct {
    int arg;
    void *plain;
    void *blocked;
    bool ready;
} arg_buffer;

static slot *find_slot(entry *e, int arg) {
    for (int i = 0; i < e->n_slots; i++)
        if (e->slots[i].arg == arg) return &e->slots[i];
    return NULL;
}

/* Where slot s's reordered copy lives in this call. */
static void *blocked_copy(const slot *s, const arg_buffer *b, void *work) {
    return b->blocked ? b->blocked : (char *)work + s->offset;
}

/* Runs e on the buffers (one per slot, any order), reordering on the way in and out. */
static int run(entry *e, int n_buffers, const arg_buffer *buffers, void *work) {
    const arg_buffer *of_slot[MAX_SLOTS];
    dnnl_exec_arg_t args[MAX_SLOTS + 1];
    int n_args = 0;
    for (int i = 0; i < e->n_slots; i++) {
        slot *s = &e->slots[i];
        of_slot[i] = NULL;
        for (int j = 0; j < n_buffers; j++)
            if (buffers[j].arg == s->arg) of_slot[i] = &buffers[j];
        if (!of_slot[i]) {
            bl_set_error("conv2d: oneDNN argument %d was not given", s->arg);
            return BL_ERR;
        }
        DNNL_TRY(dnnl_memory_set_data_handle(s->user, of_slot[i]->plain));
        if (s->reorder) DNNL_TRY(dnnl_memory_set_data_handle(s->prim, blocked_copy(s, of_slot[i], work)));
        args[n_args++] = (dnnl_exec_arg_t){s->arg, s->prim};
    }
    if (e->scratchpad) {
        DNNL_TRY(dnnl_memory_set_data_handle(e->scratchpad, (char *)work + e->scratchpad_offset));
        args[n_args++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, e->scratchpad};
    }
    for (int i = 0; i < e->n_slots; i++) {
        slot *s = &e->slots[i];
        if (!s->reorder || s->output || of_slot[i]->ready) continue;
        dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, s->user}, {DNNL_ARG_TO, s->prim}};
        DNNL_TRY(dnnl_primitive_execute(s->reorder, cache.stream, 2, r));
    }
    DNNL_TRY(dnnl_primitive_execute(e->conv, cache.stream, n_args, args));
    for (int i = 0; i < e->n_slots; i++) {
        slot *s = &e->slots[i];
        if (!s->reorder || !s->output) continue;
        dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, s->prim}, {DNNL_ARG_TO, s->user}};
        DNNL_TRY(dnnl_primitive_execute(s->reorder, cache.stream, 2, r));
    }
    DNNL_TRY(dnnl_stream_wait(cache.stream));
    return BL_OK;
fail:
    bl_set_error("conv2d: oneDNN call %s failed with status %d", last_failure.what, (int)last_failure.status);
    return BL_ERR;
}

static entry *prepared(const bl_conv_geom *g, bl_conv_pass pass, bool with_bias, bool channels_last) {
    entry *e = find_or_build(g, pass, with_bias, channels_last);
    if (!e) bl_set_error("conv2d: oneDNN has no primitive for this convolution (run without a successful prepare)");
    return e;
}

/* True when both slots reorder into the same layout, so one reordered copy serves both. */
static bool share_layout(const slot *a, const slot *b) {
    if (!a || !b || !a->reorder || !b->reorder) return false;
    const dnnl_memory_desc_t *ma, *mb;
    if (dnnl_memory_get_memory_desc(a->prim, &ma) != dnnl_success ||
        dnnl_memory_get_memory_desc(b->prim, &mb) != dnnl_success)
        return false;
    return dnnl_memory_desc_equal(ma, mb);
}

size_t onednn_conv2d_saved_input_bytes(const bl_conv_geom *g, bool with_bias) {
    entry *fwd = find_or_build(g, BL_CONV_FWD, with_bias, false);
    entry *bwd = find_or_build(g, BL_CONV_BWD_WEIGHT, false, false);
    if (!fwd || !bwd) return 0;
    slot *from = find_slot(fwd, DNNL_ARG_SRC);
    if (!share_layout(from, find_slot(bwd, DNNL_ARG_SRC))) return 0;
    const dnnl_memory_desc_t *md;
    return dnnl_memory_get_memory_desc(from->prim, &md) == dnnl_success ? dnnl_memory_desc_get_size(md) : 0;
}

int onednn_conv2d_fwd_f32(const bl_conv_geom *g, float *y, const float *x, const float *w, const float *bias,
                          void *saved_input, void *work) {
    entry *e = prepared(g, BL_CONV_FWD, bias != NULL, false);
    if (!e) return BL_ERR;
    arg_buffer b[4] = {{DNNL_ARG_SRC, (void *)x, saved_input, false},
                       {DNNL_ARG_WEIGHTS, (void *)w, NULL, false},
                       {DNNL_ARG_DST, y, NULL, false},
                       {DNNL_ARG_BIAS, (void *)bias, NULL, false}};
    return run(e, bias ? 4 : 3, b, work);
}

/* The transposed convolution's bias: oneDNN's backward-data has none, so it is one more pass. */
static void add_channel_bias(const bl_conv_geom *g, float *dx, const float *bias) {
    int64_t hw = g->H * g->W;
#pragma omp parallel for schedule(static)
    for (int64_t plane = 0; plane < g->N * g->C; plane++)
        for (int64_t i = 0; i < hw; i++) dx[plane * hw + i] += bias[plane % g->C];
}

int onednn_conv2d_bwd_data_f32(const bl_conv_geom *g, float *dx, const float *dy, const float *w, const float *bias,
                               void *work) {
    entry *e = prepared(g, BL_CONV_BWD_DATA, false, false);
    if (!e) return BL_ERR;
    arg_buffer b[3] = {{DNNL_ARG_DIFF_DST, (void *)dy, NULL, false},
                       {DNNL_ARG_WEIGHTS, (void *)w, NULL, false},
                       {DNNL_ARG_DIFF_SRC, dx, NULL, false}};
    if (run(e, 3, b, work) != BL_OK) return BL_ERR;
    if (bias) add_channel_bias(g, dx, bias);
    return BL_OK;
}

int onednn_conv2d_bwd_weight_f32(const bl_conv_geom *g, float *dw, float *db, const float *x, const float *dy,
                                 void *work) {
    entry *e = prepared(g, BL_CONV_BWD_WEIGHT, db != NULL, false);
    if (!e) return BL_ERR;
    arg_buffer b[4] = {{DNNL_ARG_SRC, (void *)x, NULL, false},
                       {DNNL_ARG_DIFF_DST, (void *)dy, NULL, false},
                       {DNNL_ARG_DIFF_WEIGHTS, dw, NULL, false},
                       {DNNL_ARG_DIFF_BIAS, db, NULL, false}};
    return run(e, db ? 4 : 3, b, work);
}

int onednn_conv2d_bwd_prepare(const bl_conv_geom *g, bool with_bias, size_t *workspace) {
    size_t data_bytes, weight_bytes;
    if (onednn_conv2d_prepare(g, BL_CONV_BWD_DATA, false, &data_bytes) != BL_OK ||
        onednn_conv2d_prepare(g, BL_CONV_BWD_WEIGHT, with_bias, &weight_bytes) != BL_OK)
        return BL_ERR;
    *workspace = align_up(data_bytes) + weight_bytes;
    return BL_OK;
}

int onednn_conv2d_bwd_f32(const bl_conv_geom *g, float *dx, float *dw, float *db, const float *dy, const float *w,
                          const float *x, const onednn_saved_input *saved, void *work) {
    entry *data = prepared(g, BL_CONV_BWD_DATA, false, false);
    entry *weight = prepared(g, BL_CONV_BWD_WEIGHT, db != NULL, false);
    if (!data || !weight) return BL_ERR;
    /* Backward-data runs first and leaves dy's reordered copy in its part of the workspace; the
     * weight pass reads it there when the layouts agree, and works in the part after it. */
    void *weight_work = (char *)work + align_up(data->workspace);
    slot *dy_data = find_slot(data, DNNL_ARG_DIFF_DST);
    bool share_dy = dx && share_layout(dy_data, find_slot(weight, DNNL_ARG_DIFF_DST));
    if (dx) {
        arg_buffer b[3] = {{DNNL_ARG_DIFF_DST, (void *)dy, NULL, false},
                           {DNNL_ARG_WEIGHTS, (void *)w, NULL, false},
                           {DNNL_ARG_DIFF_SRC, dx, NULL, false}};
        if (run(data, 3, b, work) != BL_OK) return BL_ERR;
    }
    if (!dw) return BL_OK;
    /* The forward pass's copy of x serves if its primitive chose the layout this one wants. */
    entry *fwd = saved && saved->data ? find_or_build(g, BL_CONV_FWD, saved->with_bias, false) : NULL;
    bool share_x = fwd && share_layout(find_slot(fwd, DNNL_ARG_SRC), find_slot(weight, DNNL_ARG_SRC));
    arg_buffer b[4] = {{DNNL_ARG_SRC, (void *)x, share_x ? (void *)saved->data : NULL, share_x},
                       {DNNL_ARG_DIFF_DST, (void *)dy, share_dy ? (char *)work + dy_data->offset : NULL, share_dy},
                       {DNNL_ARG_DIFF_WEIGHTS, dw, NULL, false},
                       {DNNL_ARG_DIFF_BIAS, db, NULL, false}};
    return run(weight, db ? 4 : 3, b, weight_work);
}

/* ---- channels-last activations: no reorders but the weights' ---- */

int onednn_conv2d_nhwc_prepare(const bl_conv_geom *g, bl_conv_pass pass, bool with_bias, size_t *workspace) {
    entry *e = find_or_build(g, pass, with_bias && pass != BL_CONV_BWD_DATA, true);
    if (!e) return BL_ERR;
    *workspace = e->workspace;
    return BL_OK;
}

int onednn_conv2d_nhwc_fwd_f32(const bl_conv_geom *g, float *y, const float *x, const float *w, const float *bias,
                               void *work) {
    entry *e = prepared(g, BL_CONV_FWD, bias != NULL, true);
    if (!e) return BL_ERR;
    arg_buffer b[4] = {{DNNL_ARG_SRC, (void *)x, NULL, false},
                       {DNNL_ARG_WEIGHTS, (void *)w, NULL, false},
                       {DNNL_ARG_DST, y, NULL, false},
                       {DNNL_ARG_BIAS, (void *)bias, NULL, false}};
    return run(e, bias ? 4 : 3, b, work);
}

int onednn_conv2d_nhwc_bwd_prepare(const bl_conv_geom *g, bool with_bias, size_t *workspace) {
    size_t data_bytes, weight_bytes;
    if (onednn_conv2d_nhwc_prepare(g, BL_CONV_BWD_DATA, false, &data_bytes) != BL_OK ||
        onednn_conv2d_nhwc_prepare(g, BL_CONV_BWD_WEIGHT, with_bias, &weight_bytes) != BL_OK)
        return BL_ERR;
    /* The passes share nothing, so they take turns in the same workspace. */
    *workspace = data_bytes > weight_bytes ? data_bytes : weight_bytes;
    return BL_OK;
}

int onednn_conv2d_nhwc_bwd_f32(const bl_conv_geom *g, float *dx, float *dw, float *db, const float *dy,
                               const float *w, const float *x, void *work) {
    if (dx) {
        entry *data = prepared(g, BL_CONV_BWD_DATA, false, true);
        arg_buffer b[3] = {{DNNL_ARG_DIFF_DST, (void *)dy, NULL, false},
                           {DNNL_ARG_WEIGHTS, (void *)w, NULL, false},
                           {DNNL_ARG_DIFF_SRC, dx, NULL, false}};
        if (!data || run(data, 3, b, work) != BL_OK) return BL_ERR;
    }
    if (!dw) return BL_OK;
    entry *weight = prepared(g, BL_CONV_BWD_WEIGHT, db != NULL, true);
    arg_buffer b[4] = {{DNNL_ARG_SRC, (void *)x, NULL, false},
                       {DNNL_ARG_DIFF_DST, (void *)dy, NULL, false},
                       {DNNL_ARG_DIFF_WEIGHTS, dw, NULL, false},
                       {DNNL_ARG_DIFF_BIAS, db, NULL, false}};
    return weight ? run(weight, db ? 4 : 3, b, work) : BL_ERR;
}

/* The inference forward with its epilogue (channels last, with a bias). */
static entry *fused_entry(const bl_conv_geom *g, bool residual, bool relu) {
    entry_key key;
    memset(&key, 0, sizeof key);
    key.geom = *g;
    key.pass = BL_CONV_FWD;
    key.with_bias = true;
    key.channels_last = true;
    key.epilogue = EPILOGUE_INFERENCE | (residual ? EPILOGUE_RESIDUAL : 0) | (relu ? EPILOGUE_RELU : 0);
    return find_keyed(&key);
}

int onednn_conv2d_nhwc_fused_prepare(const bl_conv_geom *g, bool residual, bool relu, size_t *workspace) {
    entry *e = fused_entry(g, residual, relu);
    if (!e) return BL_ERR;
    *workspace = e->workspace;
    return BL_OK;
}

int onednn_conv2d_nhwc_fused_f32(const bl_conv_geom *g, float *y, const float *x, const float *w, const float *bias,
                                 const float *residual, bool relu, void *work) {
    entry *e = fused_entry(g, residual != NULL, relu);
    if (!e) {
        bl_set_error("conv2d: oneDNN has no fused inference primitive for this convolution");
        return BL_ERR;
    }
    arg_buffer b[5] = {{DNNL_ARG_SRC, (void *)x, NULL, false},
                       {DNNL_ARG_WEIGHTS, (void *)w, NULL, false},
                       {DNNL_ARG_BIAS, (void *)bias, NULL, false},
                       {DNNL_ARG_DST, y, NULL, false},
                       {ARG_RESIDUAL, (void *)residual, NULL, false}};
    return run(e, residual ? 5 : 4, b, work);
}

void onednn_conv_release_all(void) {
    for (int i = 0; i < cache.count; i++) destroy_entry(cache.entries[i]);
    if (cache.stream) dnnl_stream_destroy(cache.stream);
    if (cache.engine) dnnl_engine_destroy(cache.engine);
    memset(&cache, 0, sizeof cache);
}
