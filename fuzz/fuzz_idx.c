/* Fuzzes the IDX readers (plain and gzip'd), images and labels, on the same input. */
#include "fuzz_input.h"

#include "ballast/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_input_path(data, size);
    bl_tensor *t = NULL;
    if (bl_read_idx_images(path, &t) == 0) bl_tensor_free(t);
    bl_clear_error();
    t = NULL;
    if (bl_read_idx_labels(path, &t) == 0) bl_tensor_free(t);
    bl_clear_error();
    return 0;
}
