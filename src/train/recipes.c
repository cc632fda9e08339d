/* The table of recipes configs can name (method.name). Recipes register themselves from outside
 * the trainer (methods/ registers ballast's own), so the trainer never calls up into them. */
#include "ballast/train.h"

#include "core/internal.h"

#include <string.h>

#define MAX_RECIPES 128

static const bl_recipe *recipes[MAX_RECIPES];
static const char *names[MAX_RECIPES + 1];
static int n_recipes;

int bl_recipe_register(const bl_recipe *recipe) {
    BL_CHECK_RC(recipe && recipe->name && recipe->step && recipe->predict,
                "bl_recipe_register: a recipe needs a name, a step and a predict function");
    for (int i = 0; i < n_recipes; i++)
        BL_CHECK_RC(strcmp(recipes[i]->name, recipe->name) != 0 || recipes[i] == recipe,
                    "recipe '%s' is registered twice", recipe->name);
    for (int i = 0; i < n_recipes; i++)
        if (recipes[i] == recipe) return BL_OK;
    BL_CHECK_RC(n_recipes < MAX_RECIPES, "recipe '%s': at most %d recipes", recipe->name, MAX_RECIPES);
    recipes[n_recipes] = recipe;
    names[n_recipes++] = recipe->name;
    names[n_recipes] = NULL;
    return BL_OK;
}

const char *const *bl_recipe_names(void) { return names; }

const bl_recipe *bl_recipe_find(const char *name) {
    BL_CHECK(name, "bl_recipe_find: NULL name");
    for (int i = 0; i < n_recipes; i++)
        if (strcmp(recipes[i]->name, name) == 0) return recipes[i];
    char known[2048] = "";
    size_t len = 0;
    for (int i = 0; i < n_recipes && len < sizeof known; i++)
        len += (size_t)snprintf(known + len, sizeof known - len, "%s%s", i ? ", " : "", recipes[i]->name);
    bl_set_error("unknown method '%s' (known: %s)", name, n_recipes ? known : "none registered");
    return NULL;
}
