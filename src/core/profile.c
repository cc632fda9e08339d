/* Per-op time and FLOP accounting (see include/ballast/profile.h). Entries are keyed by the name
 * pointer's string; ops pass string literals, so the table stays small. */
#include "ballast/profile.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_ENTRIES 128

static bool enabled;
static bl_profile_entry entries[MAX_ENTRIES];
static int n_entries;

double bl_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void bl_profile_enable(bool on) { enabled = on; }
bool bl_profile_enabled(void) { return enabled; }
void bl_profile_reset(void) { n_entries = 0; }

double bl_profile_start(void) { return enabled ? bl_now() : 0.0; }

void bl_profile_stop(const char *name, double start, double flops) {
    if (!enabled) return;
    double dt = bl_now() - start;
    int i = 0;
    while (i < n_entries && strcmp(entries[i].name, name) != 0) i++;
    if (i == n_entries) {
        if (n_entries == MAX_ENTRIES) return;
        entries[n_entries++] = (bl_profile_entry){name, 0, 0, 0};
    }
    entries[i].calls++;
    entries[i].seconds += dt;
    entries[i].flops += flops;
}

static int by_time(const void *a, const void *b) {
    double x = ((const bl_profile_entry *)a)->seconds, y = ((const bl_profile_entry *)b)->seconds;
    return (x < y) - (x > y);
}

int bl_profile_entries(const bl_profile_entry **out) {
    qsort(entries, (size_t)n_entries, sizeof entries[0], by_time);
    *out = entries;
    return n_entries;
}

double bl_profile_total_flops(void) {
    double f = 0;
    for (int i = 0; i < n_entries; i++) f += entries[i].flops;
    return f;
}
