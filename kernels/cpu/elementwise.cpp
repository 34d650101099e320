// PLACEHOLDER: elementwise ops on cpu are not written yet.
#include "ops_cpu.h"

namespace rlcu::cpu {

void add(const Tensor& /*out*/, const Tensor& /*a*/, const Tensor& /*b*/, Context& /*ctx*/) { throw Error("add is not implemented on cpu"); }
void scale(const Tensor& /*out*/, const Tensor& /*x*/, float /*s*/, Context& /*ctx*/) { throw Error("scale is not implemented on cpu"); }
void cast(const Tensor& /*out*/, const Tensor& /*x*/, Context& /*ctx*/) { throw Error("cast is not implemented on cpu"); }
void fill(const Tensor& /*out*/, float /*value*/, Context& /*ctx*/) { throw Error("fill is not implemented on cpu"); }

}  // namespace rlcu::cpu
