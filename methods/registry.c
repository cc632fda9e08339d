/* The table of training methods: one line per recipe (each defined in its own file in methods/).
 * `ballast train` finds a config's method.name here. */
#include "ballast/train.h"

#include "core/internal.h"

#include <string.h>

extern const bl_method bl_method_ce;
extern const bl_method bl_method_cb_reweight, bl_method_cb_resample, bl_method_focal, bl_method_ldam_drw,
    bl_method_logit_adjust_loss, bl_method_logit_adjust_posthoc, bl_method_crt, bl_method_tau_norm, bl_method_lws,
    bl_method_deconfound_tde;

static const bl_method *const methods[] = {
    &bl_method_ce,
    &bl_method_cb_reweight, &bl_method_cb_resample, &bl_method_focal, &bl_method_ldam_drw,
    &bl_method_logit_adjust_loss, &bl_method_logit_adjust_posthoc, &bl_method_crt, &bl_method_tau_norm,
    &bl_method_lws, &bl_method_deconfound_tde,
};

#define N_METHODS (sizeof methods / sizeof methods[0])

const char *const *bl_method_names(void) {
    static const char *names[N_METHODS + 1];
    for (size_t i = 0; i < N_METHODS; i++) names[i] = methods[i]->name;
    names[N_METHODS] = NULL;
    return names;
}

const bl_method *bl_method_find(const char *name) {
    BL_CHECK(name, "bl_method_find: NULL name");
    for (size_t i = 0; i < N_METHODS; i++)
        if (strcmp(methods[i]->name, name) == 0) return methods[i];
    char known[1024] = "";
    size_t len = 0;
    for (size_t i = 0; i < N_METHODS && len < sizeof known; i++)
        len += (size_t)snprintf(known + len, sizeof known - len, "%s%s", i ? ", " : "", methods[i]->name);
    bl_set_error("unknown method '%s' (known: %s)", name, known);
    return NULL;
}
