/* Fuzzes the index-file reader (bl_indices_load). */
#include "fuzz_input.h"

#include "ballast/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_input_path(data, size);
    int64_t *idx = NULL, n = 0;
    if (bl_indices_load(path, &idx, &n) == 0) free(idx);
    bl_clear_error();
    return 0;
}
