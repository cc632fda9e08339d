/* Image readers on small generated files: CIFAR records, IDX (plain and gzip), PNG and JPEG, plus
 * truncated and corrupt files, which must fail with a message naming the file. */
#include "test.h"

#include <png.h>
#include <unistd.h>
#include <zlib.h>

static char dir[] = "/tmp/ballast_test_data_XXXXXX";

static const char *path_in_dir(const char *name) {
    static char buf[4][256];
    static int next;
    char *p = buf[next++ & 3];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
}

static void test_cifar_records(void) {
    unsigned char rec[2 * 3074];
    for (int r = 0; r < 2; r++) {
        rec[r * 3074] = (unsigned char)(3 + r);     /* coarse */
        rec[r * 3074 + 1] = (unsigned char)(40 + r); /* fine */
        for (int i = 0; i < 3072; i++) rec[r * 3074 + 2 + i] = (unsigned char)((i * 7 + r) & 255);
    }
    const char *p = path_in_dir("c100.bin");
    write_bytes(p, rec, sizeof rec);
    bl_dataset ds;
    CHECK(bl_read_cifar(p, 2, 1, &ds) == BL_OK);
    CHECK(ds.images->shape[0] == 2 && bl_get_flat(ds.labels, 1) == 41);
    /* pixel (c=1, y=2, x=5) of record 1 is byte 2 + 1024 + 69 of the record */
    int i = 1024 + 2 * 32 + 5;
    CHECK(bl_get_flat(ds.images, 3072 + i) == ((i * 7 + 1) & 255));
    bl_dataset_free(&ds);
    CHECK(bl_read_cifar(p, 2, 0, &ds) == BL_OK && bl_get_flat(ds.labels, 0) == 3);
    bl_dataset_free(&ds);
    write_bytes(p, rec, sizeof rec - 100); /* truncated */
    CHECK(bl_read_cifar(p, 2, 1, &ds) == BL_ERR);
    CHECK(strstr(bl_last_error(), "c100.bin") && strstr(bl_last_error(), "truncated"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(bl_read_cifar(path_in_dir("missing.bin"), 1, 0, &ds) == BL_ERR && strstr(bl_last_error(), "missing.bin"));
}

static void test_idx_plain_and_gzip(void) {
    unsigned char img[16 + 2 * 3 * 4], lab[8 + 2];
    unsigned char hdr[16] = {0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4};
    memcpy(img, hdr, 16);
    for (int i = 0; i < 24; i++) img[16 + i] = (unsigned char)(i * 10);
    unsigned char lhdr[8] = {0, 0, 8, 1, 0, 0, 0, 2};
    memcpy(lab, lhdr, 8);
    lab[8] = 7;
    lab[9] = 1;
    write_bytes(path_in_dir("img.idx"), img, sizeof img);
    gzFile gz = gzopen(path_in_dir("lab.idx.gz"), "wb");
    gzwrite(gz, lab, sizeof lab);
    gzclose(gz);
    bl_tensor *images = NULL, *labels = NULL;
    CHECK(bl_read_idx_images(path_in_dir("img.idx"), &images) == BL_OK);
    CHECK(images && images->ndim == 4 && images->shape[1] == 1 && images->shape[2] == 3 && images->shape[3] == 4);
    CHECK(images && bl_get_flat(images, 13) == 130);
    CHECK(bl_read_idx_labels(path_in_dir("lab.idx.gz"), &labels) == BL_OK && bl_get_flat(labels, 0) == 7);
    bl_tensor_free(images);
    bl_tensor_free(labels);
    write_bytes(path_in_dir("short.idx"), img, sizeof img - 1);
    CHECK(bl_read_idx_images(path_in_dir("short.idx"), &images) == BL_ERR);
    CHECK(strstr(bl_last_error(), "short.idx") && strstr(bl_last_error(), "truncated"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(bl_read_idx_labels(path_in_dir("img.idx"), &labels) == BL_ERR, "an image file is not a label file");
    bl_clear_error();
    /* Found by fuzz/fuzz_idx.c: no images of 0xfff7ffff x 0xfffe0300 pixels; the header matches the
     * (empty) data, but the tensor's strides overflowed. */
    const unsigned char huge[16] = {0, 0, 8, 3, 0, 0, 0, 0, 0xff, 0xf7, 0xff, 0xff, 0xff, 0xfe, 3, 0};
    write_bytes(path_in_dir("huge.idx"), huge, sizeof huge);
    CHECK(bl_read_idx_images(path_in_dir("huge.idx"), &images) == BL_ERR);
    CHECK(strstr(bl_last_error(), "huge.idx") && strstr(bl_last_error(), "implausibly large"), "%s", bl_last_error());
    bl_clear_error();
    /* An empty file of 28 x 28 images is still read. */
    const unsigned char none[16] = {0, 0, 8, 3, 0, 0, 0, 0, 0, 0, 0, 28, 0, 0, 0, 28};
    write_bytes(path_in_dir("none.idx"), none, sizeof none);
    CHECK(bl_read_idx_images(path_in_dir("none.idx"), &images) == BL_OK && images && images->shape[0] == 0);
    bl_tensor_free(images);
}

static void test_png_rgb(void) {
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = 5;
    img.height = 3;
    img.format = PNG_FORMAT_RGB;
    unsigned char px[3 * 5 * 3];
    for (int i = 0; i < 45; i++) px[i] = (unsigned char)(i * 5);
    CHECK(png_image_write_to_file(&img, path_in_dir("x.png"), 0, px, 0, NULL));
    bl_tensor *t = NULL;
    CHECK(bl_read_image(path_in_dir("x.png"), &t) == BL_OK);
    CHECK(t && t->shape[0] == 3 && t->shape[1] == 3 && t->shape[2] == 5);
    /* planar (c, y, x) == interleaved[(y*5 + x)*3 + c] */
    if (t) CHECK(bl_get_flat(t, 2 * 15 + 1 * 5 + 4) == px[(1 * 5 + 4) * 3 + 2]);
    bl_tensor_free(t);
    write_bytes(path_in_dir("bad.png"), "\x89PNG\r\n\x1a\n garbage", 17);
    CHECK(bl_read_image(path_in_dir("bad.png"), &t) == BL_ERR && strstr(bl_last_error(), "bad.png"));
    bl_clear_error();
    write_bytes(path_in_dir("bad.jpg"), "\xff\xd8\xff\xe0 garbage", 12);
    CHECK(bl_read_image(path_in_dir("bad.jpg"), &t) == BL_ERR && strstr(bl_last_error(), "bad.jpg"));
    bl_clear_error();
    /* Found by fuzz/fuzz_image.c: 131 bytes whose header claims 65441 x 49915 pixels made the reader
     * allocate 3.2 GB (and decode for seconds); images beyond 2^27 pixels are refused. */
    static const unsigned char huge_jpeg[] =
        "\xff\xd8\xff\x01\x00\x01\x00\x00\xff\xdb\x00\x43\x00\x08\x06\x06\x05\x06\x07\x08\x07\x07\x07\x09"
        "\x09\x08\x0a\x0c\x14\x0d\x0b\x0c\x0b\x53\x19\x12\x13\x0f\x14\x1d\x1a\x1f\x1e\x1d\x1a\x1c\x1f\x2e"
        "\xff\xff\x60\x30\x00\x04\x24\xc0\x27\x20\x22\x2c\x23\x1c\x1c\x28\x37\x29\x2c\x30\x31\x34\x34\x34"
        "\x1f\x27\x39\x3d\x37\x31\x3c\x2e\x33\x34\x2b\xff\xc0\x00\x0b\x08\xc2\xfb\xff\xa1\x01\x01\x12\x00"
        "\x76\x77\x78\x3d\x79\x7a\x83\x84\x85\x86\x87\x88\x89\x8a\x92\xfa\xff\xda\x00\x08\x01\x01\x00\x00"
        "\x3f\x00\xf1\x44\xb5\x8b\xfb\x06\xb5\xff\xd9";
    write_bytes(path_in_dir("huge.jpg"), huge_jpeg, sizeof huge_jpeg - 1);
    CHECK(bl_read_image(path_in_dir("huge.jpg"), &t) == BL_ERR);
    CHECK(strstr(bl_last_error(), "huge.jpg") && strstr(bl_last_error(), "65441 x 49915"), "%s", bl_last_error());
    bl_clear_error();
    /* The same for a PNG header (IHDR of 20000 x 20000 RGB, an empty IDAT). */
    unsigned char png[8 + 25 + 12 + 12];
    memcpy(png, "\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\x4e\x20\0\0\x4e\x20\x08\x02\0\0\0", 29);
    uLong crc = crc32(0, png + 12, 17);
    for (int i = 0; i < 4; i++) png[29 + i] = (unsigned char)(crc >> (24 - 8 * i));
    memcpy(png + 33, "\0\0\0\0IDAT\x35\xaf\x06\x1e\0\0\0\0IEND\xae\x42\x60\x82", 24);
    write_bytes(path_in_dir("huge.png"), png, sizeof png);
    CHECK(bl_read_image(path_in_dir("huge.png"), &t) == BL_ERR);
    CHECK(strstr(bl_last_error(), "huge.png") && strstr(bl_last_error(), "20000 x 20000"), "%s", bl_last_error());
    bl_clear_error();
}

static void test_images_to_float(void) {
    bl_tensor *u = bl_zeros(BL_U8, BL_SHAPE(1, 2, 1, 2));
    ((uint8_t *)u->data)[1] = 255;
    ((uint8_t *)u->data)[2] = 51;
    float mean[2] = {0.5f, 0.1f}, std[2] = {0.25f, 0.2f};
    bl_tensor *f = bl_images_to_float(u, mean, std);
    CHECK_CLOSE(bl_get_flat(f, 0), -2.0, 1e-6);
    CHECK_CLOSE(bl_get_flat(f, 1), 2.0, 1e-6);
    CHECK_CLOSE(bl_get_flat(f, 2), 0.5, 1e-6);
}

int main(void) {
    if (!mkdtemp(dir)) return 1;
    const test_case cases[] = {TEST(test_cifar_records), TEST(test_idx_plain_and_gzip), TEST(test_png_rgb),
                               TEST(test_images_to_float)};
    int rc = test_run_all(cases, 4);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return rc;
}
