/* ballast: one include for the whole public API. */
#ifndef BALLAST_H
#define BALLAST_H

#include "ballast/tensor.h"
#include "ballast/autograd.h"
#include "ballast/ops.h"
#include "ballast/params.h"

#endif
