/* ballast: one include for the whole public API. */
#ifndef BALLAST_H
#define BALLAST_H

#include "ballast/tensor.h"
#include "ballast/error.h"
#include "ballast/autograd.h"
#include "ballast/ops.h"
#include "ballast/params.h"
#include "ballast/nn.h"
#include "ballast/models.h"
#include "ballast/optim.h"
#include "ballast/io.h"
#include "ballast/files.h"
#include "ballast/data.h"
#include "ballast/profile.h"
#include "ballast/metrics.h"
#include "ballast/regression.h"
#include "ballast/train.h"
#include "ballast/dist.h"

#endif
