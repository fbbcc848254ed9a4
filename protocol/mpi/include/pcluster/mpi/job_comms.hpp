// The communicators of a job and its start-up exchange, made the same way on every rank: the
// controller (rank 0) and the engines call open_job() at the same point, so the collective calls
// inside match.
//
// Boost.MPI owns the communicators (freed with the job) and does the start-up gather; the hot
// paths (envelopes, requests, replies) use MPI's C API directly on the same communicators, since
// they need non-blocking collectives, matched probes and derived datatypes Boost.MPI does not
// wrap.
#pragma once

#include <boost/mpi/communicator.hpp>

#include <functional>
#include <optional>
#include <vector>

#include "pcluster/mpi/doorbell.hpp"
#include "pcluster/protocol/messages.hpp"

namespace pcluster::mpi_wire {

struct job_comms {
    boost::mpi::communicator world;
    boost::mpi::communicator collective;  // requests for every engine: Ibcast/Iscatterv, root 0
    boost::mpi::communicator direct;      // requests for some engines, large reply pieces
    boost::mpi::communicator reply;       // replies and output, engines -> rank 0
    boost::mpi::communicator control;     // heartbeats, interrupts, deaths (control.hpp)
    boost::mpi::communicator rebuild;     // only for building the survivors' communicator after a death
    // Engines only (engine k is its rank k), for user code (pcluster.engine.comm); empty on rank 0.
    std::optional<boost::mpi::communicator> engines;
    // A private duplicate of `engines`, from which the survivors of a death build the next one
    // (user code's messages on `engines` cannot interfere).
    std::optional<boost::mpi::communicator> engines_private;
    // The controller's host and pid, on every rank (engines watch it).
    protocol::engine_info controller;
    // On the controller and the engines of its host: the doorbell (null elsewhere, or when
    // /dev/shm is not available: then engines idle by polling).
    std::shared_ptr<doorbell> bell;
    int n_engines() const { return world.size() - 1; }
};

// Collective over `world`. On an engine, start(engines) runs once the engines-only communicator
// exists and returns this engine's info, which rank 0 receives for every engine, in engine order,
// in `all` - so the controller reports a job ready only once every engine has started.
using engine_start = std::function<protocol::engine_info(const boost::mpi::communicator& engines)>;
job_comms open_job(MPI_Comm world, const engine_start& start, std::vector<protocol::engine_info>* all);

}  // namespace pcluster::mpi_wire
