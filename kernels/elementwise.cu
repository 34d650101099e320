// PLACEHOLDER: elementwise ops on cuda are not written yet.
#include "ops_cuda.h"

namespace rlcu::cuda {

void add(const Tensor& /*out*/, const Tensor& /*a*/, const Tensor& /*b*/, Context& /*ctx*/) { throw Error("add is not implemented on cuda"); }
void scale(const Tensor& /*out*/, const Tensor& /*x*/, float /*s*/, Context& /*ctx*/) { throw Error("scale is not implemented on cuda"); }
void cast(const Tensor& /*out*/, const Tensor& /*x*/, Context& /*ctx*/) { throw Error("cast is not implemented on cuda"); }
void fill(const Tensor& /*out*/, float /*value*/, Context& /*ctx*/) { throw Error("fill is not implemented on cuda"); }

}  // namespace rlcu::cuda
