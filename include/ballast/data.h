/* ballast data: readers for the image formats vision benchmarks ship in, and the conversion of
 * raw pixels into the model's input tensor. Every reader names the file in its error message and
 * refuses truncated or malformed files instead of returning partial data. Returned tensors are
 * persistent (free with bl_tensor_free / bl_dataset_free). */
#ifndef BALLAST_DATA_H
#define BALLAST_DATA_H

#include "ballast/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    bl_tensor *images;  /* U8 (N, C, H, W) */
    bl_tensor *labels;  /* I64 (N); NULL when the source has none */
} bl_dataset;

void bl_dataset_free(bl_dataset *ds);

/* CIFAR binary batches: records of label byte(s) + 3072 pixel bytes (R plane, G plane, B plane).
 * CIFAR-10 files have one label byte; CIFAR-100 files have two (coarse, fine): pass
 * `label_bytes` 1 or 2 and `label_index` (0 = first byte (coarse), 1 = second (fine)). */
int bl_read_cifar(const char *path, int label_bytes, int label_index, bl_dataset *out);
/* IDX files (MNIST, Fashion-MNIST), plain or gzip-compressed: images (N, 1, H, W) or labels (N). */
int bl_read_idx_images(const char *path, bl_tensor **images);
int bl_read_idx_labels(const char *path, bl_tensor **labels);
/* One PNG or JPEG file (chosen by its signature) as U8 (C, H, W), C = 1 or 3 (alpha dropped). */
int bl_read_image(const char *path, bl_tensor **image);
/* A single PNG/JPEG, or a dataset file (CIFAR .bin, IDX images), as a dataset: CIFAR is detected
 * by size (multiples of 3073 or 3074 bytes), IDX by its magic number. */
int bl_read_any_images(const char *path, bl_dataset *out);

/* Converts U8 images (N, C, H, W) to an F32 arena tensor in [0, 1], then (x - mean[c]) / std[c]
 * when mean and std are given (C entries each). */
bl_tensor *bl_images_to_float(const bl_tensor *images, const float *mean, const float *std);

#ifdef __cplusplus
}
#endif
#endif
