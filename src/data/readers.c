/* File readers for CIFAR binaries, IDX (optionally gzip'd, via zlib), PNG (libpng) and JPEG
 * (libjpeg-turbo). Each validates sizes against the header before trusting it. */
#include "ballast/data.h"

#include "core/internal.h"

#include <errno.h>
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

void bl_dataset_free(bl_dataset *ds) {
    bl_tensor_free(ds->images);
    bl_tensor_free(ds->labels);
    if (ds->class_names)
        for (int64_t c = 0; c < ds->num_classes; c++) free(ds->class_names[c]);
    free(ds->class_names);
    memset(ds, 0, sizeof *ds);
}

/* The largest image bl_read_image decodes (2^27 pixels, 384 MiB as RGB): a header of a few bytes
 * can claim 65535 x 65535 pixels, which would otherwise be allocated (and decoded) in full. */
#define BL_IMAGE_MAX_PIXELS ((uint64_t)1 << 27)

/* Reads a whole file (transparently gunzipping when it starts with the gzip magic). */
static unsigned char *read_file(const char *path, size_t *size) {
    gzFile f = gzopen(path, "rb");
    if (!f) {
        bl_set_error("%s: cannot open (%s)", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 20, n = 0;
    unsigned char *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        if (n == cap) {
            unsigned char *grown = realloc(buf, cap * 2);
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
            cap *= 2;
        }
        int got = gzread(f, buf + n, (unsigned)(cap - n > (1u << 30) ? (1u << 30) : cap - n));
        if (got < 0) {
            int code;
            bl_set_error("%s: read error (%s)", path, gzerror(f, &code));
            free(buf);
            gzclose(f);
            return NULL;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    gzclose(f);
    if (!buf) bl_set_error("%s: out of memory reading the file", path);
    *size = n;
    return buf;
}

int bl_read_cifar(const char *path, int label_bytes, int label_index, bl_dataset *out) {
    memset(out, 0, sizeof *out);
    BL_CHECK_RC(label_bytes == 1 || label_bytes == 2, "%s: CIFAR label bytes must be 1 or 2", path);
    BL_CHECK_RC(label_index >= 0 && label_index < label_bytes, "%s: label index %d out of range", path, label_index);
    size_t size;
    unsigned char *buf = read_file(path, &size);
    if (!buf) return BL_ERR;
    size_t record = (size_t)label_bytes + 3072;
    if (size == 0 || size % record != 0) {
        free(buf);
        bl_set_error("%s: %zu bytes is not a whole number of %zu-byte CIFAR records (truncated or not a "
                     "CIFAR-%s file?)", path, size, record, label_bytes == 1 ? "10" : "100");
        return BL_ERR;
    }
    int64_t n = (int64_t)(size / record);
    out->images = bl_tensor_new_persistent(BL_U8, BL_SHAPE(n, 3, 32, 32));
    out->labels = bl_tensor_new_persistent(BL_I64, BL_SHAPE(n));
    if (!out->images || !out->labels) {
        free(buf);
        bl_dataset_free(out);
        return BL_ERR;
    }
    uint8_t *img = out->images->data;
    int64_t *lab = out->labels->data;
    for (int64_t i = 0; i < n; i++) {
        const unsigned char *r = buf + (size_t)i * record;
        lab[i] = r[label_index];
        memcpy(img + i * 3072, r + label_bytes, 3072);
    }
    free(buf);
    return BL_OK;
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Parses an unsigned-byte IDX file with `want_dims` dims; returns the buffer and fills dims. */
static unsigned char *read_idx(const char *path, int want_dims, uint32_t *dims, const unsigned char **data) {
    size_t size;
    unsigned char *buf = read_file(path, &size);
    if (!buf) return NULL;
    const char *problem = NULL;
    if (size < 4 || buf[0] != 0 || buf[1] != 0)
        problem = "not an IDX file (bad magic number)";
    else if (buf[2] != 0x08)
        problem = "IDX element type is not unsigned byte";
    else if (buf[3] != want_dims)
        problem = want_dims == 1 ? "expected a 1-dim IDX label file" : "expected a 3-dim IDX image file";
    else if (size < 4 + 4 * (size_t)want_dims)
        problem = "truncated header";
    if (!problem) {
        /* The dims, each counted as at least 1, must multiply to at most 2^40: with a zero dim the
         * product of the others could otherwise wrap, or overflow the tensor's strides. */
        const size_t limit = (size_t)1 << 40;
        size_t expect = 1, bound = 1;
        bool too_large = false;
        for (int d = 0; d < want_dims; d++) {
            dims[d] = be32(buf + 4 + 4 * d);
            expect *= dims[d];
            size_t f = dims[d] ? dims[d] : 1;
            if (bound > limit / f) too_large = true;
            else bound *= f;
        }
        if (too_large) {
            bl_set_error("%s: IDX header dims %u x %u x %u are implausibly large (corrupt)", path,
                         dims[0], want_dims > 1 ? dims[1] : 1, want_dims > 2 ? dims[2] : 1);
            free(buf);
            return NULL;
        }
        if (size - 4 - 4 * (size_t)want_dims != expect) {
            bl_set_error("%s: IDX header promises %zu bytes of data, the file has %zu (truncated or corrupt)",
                         path, expect, size - 4 - 4 * (size_t)want_dims);
            free(buf);
            return NULL;
        }
    }
    if (problem) {
        bl_set_error("%s: %s", path, problem);
        free(buf);
        return NULL;
    }
    *data = buf + 4 + 4 * want_dims;
    return buf;
}

int bl_read_idx_images(const char *path, bl_tensor **images) {
    uint32_t d[3];
    const unsigned char *data;
    unsigned char *buf = read_idx(path, 3, d, &data);
    if (!buf) return BL_ERR;
    *images = bl_tensor_new_persistent(BL_U8, BL_SHAPE(d[0], 1, d[1], d[2]));
    if (*images) memcpy((*images)->data, data, (size_t)d[0] * d[1] * d[2]);
    free(buf);
    return *images ? BL_OK : BL_ERR;
}

int bl_read_idx_labels(const char *path, bl_tensor **labels) {
    uint32_t d[1];
    const unsigned char *data;
    unsigned char *buf = read_idx(path, 1, d, &data);
    if (!buf) return BL_ERR;
    *labels = bl_tensor_new_persistent(BL_I64, BL_SHAPE(d[0]));
    if (*labels)
        for (uint32_t i = 0; i < d[0]; i++) ((int64_t *)(*labels)->data)[i] = data[i];
    free(buf);
    return *labels ? BL_OK : BL_ERR;
}

/* Interleaved rows (H, W, C) -> planar (C, H, W) U8 tensor. */
static bl_tensor *planar_from_rows(unsigned char *const *rows, int h, int w, int channels, int keep) {
    bl_tensor *t = bl_tensor_new_persistent(BL_U8, BL_SHAPE(keep, h, w));
    if (!t) return NULL;
    uint8_t *p = t->data;
    for (int c = 0; c < keep; c++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) p[((size_t)c * h + y) * w + x] = rows[y][x * channels + c];
    return t;
}

static int read_png(const char *path, FILE *f, bl_tensor **image) {
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_stdio(&img, f)) {
        bl_set_error("%s: not a readable PNG (%s)", path, img.message);
        return BL_ERR;
    }
    if ((uint64_t)img.width * img.height > BL_IMAGE_MAX_PIXELS) {
        bl_set_error("%s: PNG of %u x %u pixels, more than the %llu this reader accepts", path, img.width,
                     img.height, (unsigned long long)BL_IMAGE_MAX_PIXELS);
        png_image_free(&img);
        return BL_ERR;
    }
    bool gray = !(img.format & PNG_FORMAT_FLAG_COLOR);
    img.format = gray ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    int channels = gray ? 1 : 3;
    size_t stride = (size_t)img.width * channels;
    unsigned char *buf = malloc(stride * img.height);
    unsigned char **rows = malloc(sizeof *rows * img.height);
    int rc = BL_ERR;
    if (buf && rows && png_image_finish_read(&img, NULL, buf, (png_int_32)stride, NULL)) {
        for (uint32_t y = 0; y < img.height; y++) rows[y] = buf + y * stride;
        *image = planar_from_rows(rows, (int)img.height, (int)img.width, channels, channels);
        rc = *image ? BL_OK : BL_ERR;
    } else {
        bl_set_error("%s: PNG decoding failed (%s)", path, buf && rows ? img.message : "out of memory");
        png_image_free(&img);
    }
    free(buf);
    free(rows);
    return rc;
}

typedef struct {
    struct jpeg_error_mgr base;
    jmp_buf escape;
    char message[JMSG_LENGTH_MAX];
} jpeg_errors;

static void jpeg_fail(j_common_ptr cinfo) {
    jpeg_errors *e = (jpeg_errors *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->message);
    longjmp(e->escape, 1);
}

/* libjpeg reports damaged data as warnings and decodes on (filling the rest with grey). A file
 * that ends early is refused like any truncated file; other warnings (e.g. stray bytes between
 * markers, common in real collections) leave the image intact and are ignored, not printed. */
static void jpeg_warning(j_common_ptr cinfo, int level) {
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) jpeg_fail(cinfo);
}

static int read_jpeg(const char *path, FILE *f, bl_tensor **image) {
    struct jpeg_decompress_struct cinfo;
    jpeg_errors err;
    unsigned char *volatile buf = NULL;
    unsigned char **volatile rows = NULL;
    cinfo.err = jpeg_std_error(&err.base);
    err.base.error_exit = jpeg_fail;
    err.base.emit_message = jpeg_warning;
    if (setjmp(err.escape)) {
        bl_set_error("%s: JPEG decoding failed (%s)", path, err.message);
        jpeg_destroy_decompress(&cinfo);
        free(buf);
        free(rows);
        return BL_ERR;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_stdio_src(&cinfo, f);
    jpeg_read_header(&cinfo, TRUE);
    if ((uint64_t)cinfo.image_width * cinfo.image_height > BL_IMAGE_MAX_PIXELS) {
        snprintf(err.message, sizeof err.message, "%u x %u pixels, more than the %llu this reader accepts",
                 cinfo.image_width, cinfo.image_height, (unsigned long long)BL_IMAGE_MAX_PIXELS);
        longjmp(err.escape, 1);
    }
    cinfo.out_color_space = cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    int w = (int)cinfo.output_width, h = (int)cinfo.output_height, c = cinfo.output_components;
    buf = malloc((size_t)w * h * c);
    rows = malloc(sizeof *rows * (size_t)h);
    if (!buf || !rows) longjmp(err.escape, 1);
    for (int y = 0; y < h; y++) rows[y] = buf + (size_t)y * w * c;
    while ((int)cinfo.output_scanline < h) jpeg_read_scanlines(&cinfo, rows + cinfo.output_scanline, (JDIMENSION)(h - (int)cinfo.output_scanline));
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    *image = planar_from_rows(rows, h, w, c, c);
    free(buf);
    free(rows);
    return *image ? BL_OK : BL_ERR;
}

int bl_read_image(const char *path, bl_tensor **image) {
    *image = NULL;
    FILE *f = fopen(path, "rb");
    BL_CHECK_RC(f, "%s: cannot open (%s)", path, strerror(errno));
    unsigned char sig[8] = {0};
    size_t got = fread(sig, 1, sizeof sig, f);
    rewind(f);
    int rc;
    if (got >= 8 && png_sig_cmp(sig, 0, 8) == 0)
        rc = read_png(path, f, image);
    else if (got >= 3 && sig[0] == 0xff && sig[1] == 0xd8 && sig[2] == 0xff)
        rc = read_jpeg(path, f, image);
    else {
        bl_set_error("%s: neither a PNG nor a JPEG file", path);
        rc = BL_ERR;
    }
    fclose(f);
    return rc;
}

int bl_read_any_images(const char *path, bl_dataset *out) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    BL_CHECK_RC(f, "%s: cannot open (%s)", path, strerror(errno));
    unsigned char head[4] = {0};
    size_t got = fread(head, 1, 4, f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    bool gz = got >= 2 && head[0] == 0x1f && head[1] == 0x8b;
    if (gz || (got == 4 && head[0] == 0 && head[1] == 0 && head[2] == 0x08 && head[3] == 3))
        return bl_read_idx_images(path, &out->images);
    if ((got >= 3 && head[0] == 0xff && head[1] == 0xd8) || (got >= 4 && head[0] == 0x89 && head[1] == 'P')) {
        bl_tensor *img;
        if (bl_read_image(path, &img) != BL_OK) return BL_ERR;
        out->images = bl_tensor_new_persistent(BL_U8, BL_SHAPE(1, img->shape[0], img->shape[1], img->shape[2]));
        if (out->images) memcpy(out->images->data, img->data, bl_nbytes(img));
        bl_tensor_free(img);
        return out->images ? BL_OK : BL_ERR;
    }
    if (size > 0 && size % 3073 == 0) return bl_read_cifar(path, 1, 0, out);
    if (size > 0 && size % 3074 == 0) return bl_read_cifar(path, 2, 1, out);
    bl_set_error("%s: unrecognized image file (not PNG, JPEG, IDX or a CIFAR binary of whole records)", path);
    return BL_ERR;
}

bl_tensor *bl_images_to_float(const bl_tensor *images, const float *mean, const float *std) {
    BL_NONNULL(images);
    BL_CHECK(images->dtype == BL_U8 && images->ndim == 4 && bl_is_contiguous(images),
             "images_to_float: expected contiguous U8 (N, C, H, W), got %s %s", bl_dtype_name(images->dtype),
             bl__shape(images));
    bl_tensor *out = bl_empty(BL_F32, 4, images->shape);
    if (!out) return NULL;
    int64_t n = images->shape[0], c = images->shape[1], hw = images->shape[2] * images->shape[3];
    const uint8_t *src = images->data;
    float *dst = out->data;
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < c; k++) {
            float m = mean ? mean[k] : 0.0f, sd = std ? std[k] : 1.0f;
            const uint8_t *p = src + (i * c + k) * hw;
            float *q = dst + (i * c + k) * hw;
            for (int64_t j = 0; j < hw; j++) q[j] = (p[j] / 255.0f - m) / sd;
        }
    return out;
}
