/* The step arena: a list of large chunks that tensors and tape nodes are bump-allocated from.
 * Scopes record a position and roll back to it, so a training step's memory is reused by the next
 * step without a single malloc once the chunks exist. Chunks are kept (not freed) on roll-back. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 64
#define ARENA_MIN_CHUNK ((size_t)64 << 20)

typedef struct {
    char *base;
    size_t size;
} chunk;

static struct {
    chunk *chunks;
    size_t n_chunks, cap_chunks;
    size_t current;   /* chunk being filled */
    size_t offset;    /* bytes used in the current chunk */
    size_t used;      /* total bytes handed out (live) */
    size_t peak;
} arena;

size_t bl__tape_truncate(size_t len); /* autograd.c */
size_t bl__tape_len(void);

static int add_chunk(size_t at_least) {
    if (arena.n_chunks == arena.cap_chunks) {
        size_t cap = arena.cap_chunks ? arena.cap_chunks * 2 : 16;
        chunk *c = realloc(arena.chunks, cap * sizeof *c);
        if (!c) return BL_ERR;
        arena.chunks = c;
        arena.cap_chunks = cap;
    }
    size_t size = at_least > ARENA_MIN_CHUNK ? at_least : ARENA_MIN_CHUNK;
    char *base = aligned_alloc(ARENA_ALIGN, (size + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN);
    if (!base) return BL_ERR;
    arena.chunks[arena.n_chunks++] = (chunk){base, size};
    return BL_OK;
}

void *bl_arena_alloc(size_t bytes) {
    bytes = (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    if (bytes == 0) bytes = ARENA_ALIGN;
    /* Find room in the current chunk or a later (kept) one that is big enough. */
    while (arena.current < arena.n_chunks) {
        chunk *c = &arena.chunks[arena.current];
        if (arena.offset + bytes <= c->size) break;
        if (arena.current + 1 >= arena.n_chunks) {
            if (add_chunk(bytes) != BL_OK) {
                bl_set_error("out of memory: the step arena could not grow by %zu bytes", bytes);
                return NULL;
            }
        }
        arena.current++;
        arena.offset = 0;
    }
    if (arena.n_chunks == 0) {
        if (add_chunk(bytes) != BL_OK) {
            bl_set_error("out of memory: the step arena could not allocate %zu bytes", bytes);
            return NULL;
        }
        arena.current = 0;
        arena.offset = 0;
    }
    chunk *c = &arena.chunks[arena.current];
    void *p = c->base + arena.offset;
    arena.offset += bytes;
    arena.used += bytes;
    if (arena.used > arena.peak) arena.peak = arena.used;
    return p;
}

bl_scope bl_scope_begin(void) {
    return (bl_scope){arena.current, arena.offset, bl__tape_len(), arena.used};
}

void bl_scope_end(bl_scope mark) {
    bl__tape_truncate(mark.tape_len);
    arena.current = mark.chunk;
    arena.offset = mark.offset;
    arena.used = mark.bytes;
}

size_t bl_arena_used(void) { return arena.used; }
size_t bl_arena_peak(void) { return arena.peak; }

void bl_arena_release_all(void) {
    bl__tape_truncate(0);
    for (size_t i = 0; i < arena.n_chunks; i++) free(arena.chunks[i].base);
    free(arena.chunks);
    memset(&arena, 0, sizeof arena);
}
