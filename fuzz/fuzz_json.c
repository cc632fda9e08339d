/* Fuzzes the JSON reader of file headers (bl__json_parse) and walks the tree it returns. */
#include "fuzz_input.h"

#include <string.h>

#include "io/json.h"

static int walk(const bl__json *j) {
    int n = 0;
    for (const bl__json *c = j->child; c; c = c->next) {
        if (j->type == BL_JSON_OBJECT && (!c->key || bl__json_get(j, c->key) == NULL)) abort();
        if (c->type == BL_JSON_STRING) n += (int)strlen(c->string);
        n += 1 + walk(c);
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* The copy is exactly `size` bytes, so ASan sees any read past the end of the text. */
    char *text = malloc(size ? size : 1);
    if (!text) return 0;
    memcpy(text, data, size);
    bl__json_pool pool = {0};
    char err[256];
    bl__json *root = bl__json_parse(text, size, &pool, err, sizeof err);
    if (root) (void)walk(root);
    bl__json_pool_free(&pool);
    free(text);
    return 0;
}
