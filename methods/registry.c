/* The recipes of methods/, one line each (each defined in its own file), registered with the
 * trainer's table so configs can name them in method.name. */
#include "recipes.h"

#include "ballast/train.h"

extern const bl_recipe bl_recipe_ce;
extern const bl_recipe bl_recipe_cb_reweight, bl_recipe_cb_resample, bl_recipe_focal, bl_recipe_ldam_drw,
    bl_recipe_logit_adjust_loss, bl_recipe_logit_adjust_posthoc, bl_recipe_crt, bl_recipe_tau_norm, bl_recipe_lws,
    bl_recipe_deconfound_tde;

static const bl_recipe *const recipes[] = {
    &bl_recipe_ce,
    &bl_recipe_cb_reweight, &bl_recipe_cb_resample, &bl_recipe_focal, &bl_recipe_ldam_drw,
    &bl_recipe_logit_adjust_loss, &bl_recipe_logit_adjust_posthoc, &bl_recipe_crt, &bl_recipe_tau_norm,
    &bl_recipe_lws, &bl_recipe_deconfound_tde,
};

int bl_recipes_register_builtin(void) {
    for (size_t i = 0; i < sizeof recipes / sizeof recipes[0]; i++)
        if (bl_recipe_register(recipes[i]) != BL_OK) return BL_ERR;
    return BL_OK;
}
