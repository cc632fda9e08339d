/* The step arena: a list of large chunks that tensors and tape nodes are bump-allocated from.
 * Scopes record a position and roll back to it, so a training step's memory is reused by the next
 * step without a single malloc once the chunks exist. Chunks are kept (not freed) on roll-back.
 *
 * Recycling. A first-order backward pass produces one gradient per activation, each dead as soon as
 * the node below it has consumed it, yet a bump allocator would keep them all until the step ends
 * (about as much memory again as the forward pass). So while the autograd engine runs a backward
 * pass it may hand large blocks back early: the arena logs every large block handed out during
 * that pass, the engine counts the pending gradients that hold each one (bl__arena_hold/release)
 * and a block whose count falls to zero becomes free. Later allocations of about its size reuse
 * it instead of growing the arena. Scopes stay exact: a block carved out after a scope began
 * disappears when that scope ends (the roll-back reclaims it), and a free block reused inside a
 * scope becomes free again when that scope ends. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 64
#define ARENA_MIN_CHUNK ((size_t)64 << 20)
/* Blocks of at least this size are logged for recycling; smaller ones are not worth the
 * bookkeeping. A free block serves requests up to a quarter smaller than itself. */
#define RECYCLE_MIN ((size_t)64 << 10)

typedef struct {
    char *base;
    size_t size;
} chunk;

/* A bump position: the chunk being filled and the bytes used in it. */
typedef struct {
    size_t chunk, offset;
} position;

typedef struct {
    char *base;
    size_t bytes;
    position carved; /* where the bump pointer handed it out */
    position taken;  /* the bump position when it was last handed out (carved or reused) */
    unsigned pass;   /* the backward pass it was last handed out in (0: none), whose holds count */
    int holds;
    bool pinned, free;
} block;

static struct {
    chunk *chunks;
    size_t n_chunks, cap_chunks;
    size_t current;    /* chunk being filled */
    size_t offset;     /* bytes used in the current chunk */
    size_t used;       /* bytes below the bump position (live or free) */
    size_t free_bytes; /* of those, bytes in free blocks */
    size_t peak;       /* highest bump position: the memory the arena really occupies */
    block *blocks;
    size_t n_blocks, cap_blocks;
    unsigned pass, passes; /* the backward pass that recycles now (0: none), and how many have */
} arena;

size_t bl__tape_truncate(size_t len); /* autograd.c */
size_t bl__tape_len(void);

static bool at_or_after(position a, position b) {
    return a.chunk > b.chunk || (a.chunk == b.chunk && a.offset >= b.offset);
}

static position here(void) { return (position){arena.current, arena.offset}; }

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

/* The smallest free block that fits `bytes` without wasting more than a quarter, or NULL. */
static block *best_free_block(size_t bytes) {
    block *best = NULL;
    for (size_t i = 0; i < arena.n_blocks; i++) {
        block *b = &arena.blocks[i];
        if (b->free && b->bytes >= bytes && b->bytes - bytes <= b->bytes / 4 && (!best || b->bytes < best->bytes))
            best = b;
    }
    return best;
}

/* Logs a block just carved out at `at` (nothing happens when the log cannot grow: the block is
 * then simply never recycled). */
static void log_block(char *base, size_t bytes, position at) {
    if (arena.n_blocks == arena.cap_blocks) {
        size_t cap = arena.cap_blocks ? arena.cap_blocks * 2 : 256;
        block *b = realloc(arena.blocks, cap * sizeof *b);
        if (!b) return;
        arena.blocks = b;
        arena.cap_blocks = cap;
    }
    arena.blocks[arena.n_blocks++] = (block){base, bytes, at, at, arena.pass, 0, false, false};
}

static void *bump(size_t bytes) {
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
    position at = here();
    void *p = c->base + arena.offset;
    arena.offset += bytes;
    arena.used += bytes;
    if (arena.used > arena.peak) arena.peak = arena.used;
    if (arena.pass && bytes >= RECYCLE_MIN) log_block(p, bytes, at);
    return p;
}

void *bl_arena_alloc(size_t bytes) {
    bytes = (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    if (bytes == 0) bytes = ARENA_ALIGN;
    block *b = bytes >= RECYCLE_MIN && arena.free_bytes ? best_free_block(bytes) : NULL;
    if (!b) return bump(bytes);
    b->free = false;
    b->taken = here();
    b->pass = arena.pass;
    b->holds = 0;
    b->pinned = false;
    arena.free_bytes -= b->bytes;
    return b->base;
}

bl_scope bl_scope_begin(void) {
    return (bl_scope){arena.current, arena.offset, bl__tape_len(), arena.used};
}

void bl_scope_end(bl_scope mark) {
    bl__tape_truncate(mark.tape_len);
    const position m = {mark.chunk, mark.offset};
    size_t kept = 0;
    for (size_t i = 0; i < arena.n_blocks; i++) {
        block b = arena.blocks[i];
        if (at_or_after(b.carved, m)) { /* the roll-back reclaims it */
            if (b.free) arena.free_bytes -= b.bytes;
            continue;
        }
        if (!b.free && at_or_after(b.taken, m)) { /* reused inside the scope: free again */
            b.free = true;
            arena.free_bytes += b.bytes;
        }
        arena.blocks[kept++] = b;
    }
    arena.n_blocks = kept;
    arena.current = mark.chunk;
    arena.offset = mark.offset;
    arena.used = mark.bytes;
}

size_t bl_arena_used(void) { return arena.used - arena.free_bytes; }
size_t bl_arena_peak(void) { return arena.peak; }

void bl_arena_release_all(void) {
    bl__tape_truncate(0);
    for (size_t i = 0; i < arena.n_chunks; i++) free(arena.chunks[i].base);
    free(arena.chunks);
    free(arena.blocks);
    memset(&arena, 0, sizeof arena);
}

/* ---- recycling, for the autograd engine (declared in autograd.c) ---- */

void bl__arena_recycling_begin(void) {
    if (++arena.passes == 0) arena.passes = 1; /* 0 means "no pass" */
    arena.pass = arena.passes;
}

void bl__arena_recycling_end(void) { arena.pass = 0; }
bool bl__arena_recycling(void) { return arena.pass != 0; }

/* The in-use block of the current pass that holds address p, or NULL (p elsewhere: a block from
 * before the pass, a small allocation, persistent memory). */
static block *block_of(const void *p) {
    if (!arena.pass || !p) return NULL;
    const char *c = p;
    for (size_t i = arena.n_blocks; i-- > 0;) {
        block *b = &arena.blocks[i];
        if (!b->free && b->pass == arena.pass && c >= b->base && c < b->base + b->bytes) return b;
    }
    return NULL;
}

static void make_free(block *b) {
    b->free = true;
    arena.free_bytes += b->bytes;
}

void bl__arena_hold(const void *p) {
    block *b = block_of(p);
    if (b) b->holds++;
}

void bl__arena_release(const void *p) {
    block *b = block_of(p);
    if (b && b->holds > 0 && --b->holds == 0 && !b->pinned) make_free(b);
}

void bl__arena_release_unheld(const void *p) {
    block *b = block_of(p);
    if (b && b->holds == 0 && !b->pinned) make_free(b);
}

void bl__arena_pin(const void *p) {
    block *b = block_of(p);
    if (b) b->pinned = true;
}
