/* `ballast predict`: runs any model in eval mode on images and writes one CSV row of logits per
 * image, in input order, so a model's numerics can be checked against PyTorch from outside. */
#include "cli.h"

#include "ballast/ballast.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cli_option options[] = {
    {"model", "NAME", "model name (resnet20..resnet110, resnet18/34/50, resnet18_cifar, convnet3, vit_tiny/small/base)", false},
    {"classes", "N", "number of classes (default: the model's)", false},
    {"weights", "FILE", "safetensors file with every parameter and buffer (PyTorch state_dict names)", false},
    {"input", "FILE", "a CIFAR binary, an IDX image file, or a PNG/JPEG image (repeatable)", true},
    {"mean", "M1,M2,M3", "per-channel mean subtracted after scaling pixels to [0,1]", false},
    {"std", "S1,S2,S3", "per-channel std divided by after the mean", false},
    {"image-size", "N", "model input size (ViT position embedding, ConvNet classifier)", false},
    {"patch", "N", "ViT patch size", false},
    {"batch", "N", "images per forward pass (default 100)", false},
    {"threads", "N", "worker threads (default 1)", false},
    {"output", "FILE", "CSV file to write (default: standard output)", false},
};

static const char usage[] =
    "usage: ballast predict --model NAME --weights W.safetensors --input FILE [--input FILE ...]\n"
    "                       [--mean m1,m2,m3 --std s1,s2,s3] [--output logits.csv]";

/* Loads every --input into one U8 (N, C, H, W) tensor (all inputs must agree on C, H, W). */
static bl_tensor *load_inputs(const cli_args *a) {
    bl_tensor *all = NULL;
    for (int i = 0; i < a->n_multi; i++) {
        bl_dataset ds;
        if (bl_read_any_images(a->multi[i], &ds) != BL_OK) {
            bl_tensor_free(all);
            return NULL;
        }
        bl_tensor *img = ds.images;
        if (all && (img->shape[1] != all->shape[1] || img->shape[2] != all->shape[2] || img->shape[3] != all->shape[3])) {
            bl_set_error("%s: images of shape [%lld, %lld, %lld] differ from the earlier inputs' [%lld, %lld, %lld]",
                         a->multi[i], (long long)img->shape[1], (long long)img->shape[2], (long long)img->shape[3],
                         (long long)all->shape[1], (long long)all->shape[2], (long long)all->shape[3]);
            bl_dataset_free(&ds);
            bl_tensor_free(all);
            return NULL;
        }
        int64_t n = (all ? all->shape[0] : 0) + img->shape[0];
        bl_tensor *grown = bl_tensor_new_persistent(BL_U8, BL_SHAPE(n, img->shape[1], img->shape[2], img->shape[3]));
        if (!grown) {
            bl_dataset_free(&ds);
            bl_tensor_free(all);
            return NULL;
        }
        size_t old = all ? bl_nbytes(all) : 0;
        if (all) memcpy(grown->data, all->data, old);
        memcpy((char *)grown->data + old, img->data, bl_nbytes(img));
        bl_tensor_free(all);
        bl_dataset_free(&ds);
        all = grown;
    }
    return all;
}

int cmd_predict(int argc, char **argv) {
    cli_args a;
    int rc = cli_parse(&a, usage, options, (int)(sizeof options / sizeof options[0]), argc, argv);
    if (rc) return rc < 0 ? 2 : 0;
    if (!cli_has(&a, "model") || !cli_has(&a, "weights") || a.n_multi == 0) {
        fprintf(stderr, "ballast predict: --model, --weights and at least one --input are required (see --help)\n");
        return 2;
    }
    float mean[8], std[8];
    int n_mean = cli_has(&a, "mean") ? cli_floats(cli_get(&a, "mean"), mean, 8) : 0;
    int n_std = cli_has(&a, "std") ? cli_floats(cli_get(&a, "std"), std, 8) : 0;
    if (n_mean < 0 || n_std < 0 || n_mean != n_std) {
        fprintf(stderr, "ballast predict: --mean and --std need the same number of comma-separated values\n");
        return 2;
    }
    long classes, image_size, patch, batch, threads;
    if (!cli_int(&a, "classes", 0, &classes) || !cli_int(&a, "image-size", 0, &image_size) ||
        !cli_int(&a, "patch", 0, &patch) || !cli_int(&a, "batch", 100, &batch) || !cli_int(&a, "threads", 1, &threads))
        return 2;
    if (batch < 1) batch = 1;
    bl_set_threads((int)threads);

    bl_tensor *images = load_inputs(&a);
    if (!images) return cli_fail("predict");
    if (n_mean && n_mean != images->shape[1]) {
        fprintf(stderr, "ballast predict: --mean has %d values but the images have %lld channels\n", n_mean,
                (long long)images->shape[1]);
        bl_tensor_free(images);
        return 2;
    }
    bl_model_opts opts = {.num_classes = classes, .image_size = image_size ? image_size : images->shape[2],
                          .patch_size = patch, .in_channels = images->shape[1]};
    bl_model *model = bl_model_create(cli_get(&a, "model"), &opts, 0);
    if (!model || bl_params_load(&model->params, cli_get(&a, "weights"), true) != BL_OK) {
        bl_model_free(model);
        bl_tensor_free(images);
        return cli_fail("predict");
    }
    model->training = false;
    const char *out_path = cli_get(&a, "output");
    FILE *out = out_path ? fopen(out_path, "w") : stdout;
    if (!out) {
        perror(out_path);
        bl_model_free(model);
        bl_tensor_free(images);
        return 1;
    }
    int status = 0;
    int64_t n = images->shape[0];
    for (int64_t start = 0; start < n && status == 0; start += batch) {
        int64_t end = start + batch < n ? start + batch : n;
        bl_scope scope = bl_scope_begin();
        bl_tensor chunk = *images;
        chunk.persistent = false;
        chunk.shape[0] = end - start;
        chunk.data = (uint8_t *)images->data + start * images->stride[0];
        bl_tensor *logits;
        BL_NO_GRAD { logits = bl_model_forward(model, bl_images_to_float(&chunk, n_mean ? mean : NULL, n_mean ? std : NULL)); }
        if (!logits) {
            status = cli_fail("predict");
        } else {
            int64_t k = logits->shape[1];
            const float *v = logits->data;
            for (int64_t i = 0; i < end - start; i++)
                for (int64_t j = 0; j < k; j++) fprintf(out, "%.9g%c", v[i * k + j], j + 1 < k ? ',' : '\n');
        }
        bl_scope_end(scope);
    }
    if (out != stdout && fclose(out) != 0) {
        perror(out_path);
        status = 1;
    }
    bl_model_free(model);
    bl_tensor_free(images);
    return status;
}
