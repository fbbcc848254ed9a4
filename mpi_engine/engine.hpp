// An engine: ranks 1..N-1 of a pcluster job. Embeds one Python interpreter whose __main__
// namespace persists across requests; pcluster._kernel does the Python side of each request.
#pragma once

#include <mpi.h>

namespace pcluster::engine {

// Runs until the controller sends shutdown. Collective with pcluster::controller::run on rank 0.
// Returns the process exit status.
int run(MPI_Comm world);

}  // namespace pcluster::engine
