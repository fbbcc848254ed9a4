// The controller: rank 0 of a pcluster job. Pure C++; it routes request frames from the bridge
// to engines over MPI and replies back, runs the task farm, and never interprets user data.
#pragma once

#include <mpi.h>

#include <string>

namespace pcluster::controller {

struct options {
    std::string connection_file;  // empty: the bridge's default
    std::string ip;               // empty: the bridge decides (loopback, or under SLURM the login node's way)
    int port = 0;
    std::string log_level = "info";
    std::string bridge_path;      // pcluster-bridge executable
    double bridge_timeout_s = 30;
    double max_frame_gib = 16;  // the largest request frame a client may send
};

// Runs the controller until a client shuts the job down, a signal stops it or the bridge goes
// away. `world` is MPI_COMM_WORLD; the engines run pcluster::engine::run on ranks 1..size-1 at
// the same time. Returns the process exit status.
int run(MPI_Comm world, const options& opt);

}  // namespace pcluster::controller
