/* Helpers shared by the nn modules and the models built from them. Not installed. */
#ifndef BALLAST_NN_INTERNAL_H
#define BALLAST_NN_INTERNAL_H

#include "ballast/nn.h"
#include "core/internal.h"

/* Fills `bias` with U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in taken from `weight`: the default
 * bias of torch's Linear and Conv layers. */
int bl__init_default_bias(bl_tensor *bias, const bl_tensor *weight, bl_rng *rng);

#endif
