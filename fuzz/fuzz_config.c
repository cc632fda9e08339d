/* Fuzzes the YAML config parser (bl_config_parse) and `key=value` overrides (bl_config_set): the
 * input up to the first NUL byte is the YAML text; each NUL-separated piece after it is one
 * override applied to the parsed config (or to an empty one when the text does not parse). */
#include "fuzz_input.h"

#include <string.h>

#include "ballast/train.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    bl_config *c = bl_config_parse(text, "fuzz.yaml");
    bl_clear_error();
    if (!c) c = bl_config_parse("", "empty.yaml");
    bl_clear_error();
    size_t first = strlen(text);
    for (size_t p = first + 1; c && p <= size; p += strlen(text + p) + 1) {
        (void)bl_config_set(c, text + p);
        bl_clear_error();
    }
    if (c) {
        (void)bl_config_check_unknown(c);
        bl_clear_error();
        bl_config_free(c);
    }
    free(text);
    return 0;
}
