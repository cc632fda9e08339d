/* The recipes shipped with ballast. Programs that train them (the ballast tool, tests) register
 * them once before naming one in a config. */
#ifndef BALLAST_METHODS_RECIPES_H
#define BALLAST_METHODS_RECIPES_H

/* Registers every recipe of methods/ with bl_recipe_register (once; later calls do nothing). */
int bl_recipes_register_builtin(void);

#endif
