/* ballast profiling: per-op wall time and FLOPs, collected while enabled.
 *
 * Ops report each kernel call under a short name ("conv2d.fwd", "matmul", "batch_norm.bwd", ...);
 * `ballast bench --profile` prints the table so the next bottleneck is visible. When disabled (the
 * default) the cost is one branch per op. */
#ifndef BALLAST_PROFILE_H
#define BALLAST_PROFILE_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *name;
    int64_t calls;
    double seconds;
    double flops;
} bl_profile_entry;

void bl_profile_enable(bool on);
bool bl_profile_enabled(void);
void bl_profile_reset(void);
/* The entries collected so far, most time first; returns their count. */
int bl_profile_entries(const bl_profile_entry **entries);
/* Sum of FLOPs over all entries. */
double bl_profile_total_flops(void);
/* Monotonic wall clock in seconds. */
double bl_now(void);

/* For op implementers: `double t = bl_profile_start();` before the kernel, then
 * `bl_profile_stop("name", t, flops);` after it. Both are no-ops while disabled. */
double bl_profile_start(void);
void bl_profile_stop(const char *name, double start, double flops);

#ifdef __cplusplus
}
#endif
#endif
