// The CUDA branch of an op's dispatch: RLCU_CUDA_BACKEND(cuda::op(...)) is the call in a build with CUDA, and in a
// build without it (RLCU_CUDA=OFF, no CUDA kernels compiled) an rlcu::Error — unreachable there in practice, since
// no CUDA tensor can be allocated without CUDA.
#pragma once

#include "rlcu/error.h"

#if RLCU_WITH_CUDA
#define RLCU_CUDA_BACKEND(...) __VA_ARGS__
#else
#define RLCU_CUDA_BACKEND(...) throw ::rlcu::Error("a CUDA tensor reached an op in a build without CUDA")
#endif
