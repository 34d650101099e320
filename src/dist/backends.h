// The communicator backends behind create_communicator() and the argument checks they share. A malformed call
// (sizes that do not match the world size, a tensor on the wrong device, a dtype the backend cannot reduce) is a
// bug in the caller: RLCU_CHECK.
#pragma once

#include <memory>

#include "rlcu/dist.h"

namespace rlcu::dist {

std::unique_ptr<Communicator> make_local_communicator(Device device);
std::unique_ptr<Communicator> make_socket_communicator(const DistEnv& env, const DistOptions& opt);
// In nccl_communicator.cpp, built (and RLCU_HAVE_NCCL defined) only where CMake found NCCL.
std::unique_ptr<Communicator> make_nccl_communicator(const DistEnv& env, Context& ctx, const DistOptions& opt);

// Checks shared by every backend; `reducible` says whether the backend reduces x's dtype.
void check_all_reduce(const Communicator& c, const Tensor& x, bool reducible);
void check_reduce_scatter(const Communicator& c, const Tensor& out, const Tensor& in, bool reducible);
void check_all_gather(const Communicator& c, const Tensor& out, const Tensor& in);
void check_broadcast(const Communicator& c, const Tensor& x, int root);

// The slice [r*n, (r+1)*n) of a flat tensor, as a 1-D view.
Tensor rank_slice(const Tensor& t, int r, int64_t n);

}  // namespace rlcu::dist
