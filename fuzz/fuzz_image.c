/* Fuzzes the PNG/JPEG reader (bl_read_image). */
#include "fuzz_input.h"

#include "ballast/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_input_path(data, size);
    bl_tensor *t = NULL;
    if (bl_read_image(path, &t) == 0) bl_tensor_free(t);
    bl_clear_error();
    return 0;
}
