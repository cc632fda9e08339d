/* Fuzzes the safetensors reader (bl_safetensors_load) and the lookups on what it loaded. */
#include "fuzz_input.h"

#include "ballast/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_input_path(data, size);
    bl_safetensors st;
    if (bl_safetensors_load(path, &st) == 0) {
        for (int i = 0; i < st.count; i++) {
            if (bl_safetensors_get(&st, st.entries[i].name) != st.entries[i].tensor) abort();
        }
        for (int i = 0; i < st.n_meta; i++) (void)bl_safetensors_meta_get(&st, st.meta[i].key);
        bl_safetensors_free(&st);
    }
    bl_clear_error();
    return 0;
}
