#include "pcluster/mpi/job_comms.hpp"

#include <boost/mpi/collectives.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <unistd.h>

#include <utility>

#include "pcluster/mpi/wire.hpp"
#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/config.hpp"
#include "pcluster/protocol/host.hpp"

namespace pcluster::mpi_wire {

namespace mpi = boost::mpi;


job_comms open_job(MPI_Comm world_comm, const engine_start& start, std::vector<protocol::engine_info>* all) {
    job_comms c;
    c.world = mpi::communicator(world_comm, mpi::comm_attach);
    const bool controller = c.world.rank() == 0;
    // The engines-only communicator: rank 0 takes part in the split but is not in it.
    MPI_Comm engines;
    check(MPI_Comm_split(world_comm, controller ? MPI_UNDEFINED : 1, c.world.rank(), &engines), "MPI_Comm_split");
    if (!controller) c.engines.emplace(engines, mpi::comm_take_ownership);
    // Where every engine runs, for clients (rc.ids, engine hosts) - encoded as the protocol does.
    const std::string mine = controller ? std::string() : protocol::encode_meta(start(*c.engines));
    std::vector<std::string> infos;
    mpi::gather(c.world, mine, infos, 0);
    if (controller && all) {
        all->clear();
        for (std::size_t r = 1; r < infos.size(); ++r)
            all->push_back(protocol::decode_meta<protocol::engine_info>(infos[r], "engine_info"));
    }
    c.collective = mpi::communicator(world_comm, mpi::comm_duplicate);
    c.direct = mpi::communicator(world_comm, mpi::comm_duplicate);
    c.reply = mpi::communicator(world_comm, mpi::comm_duplicate);
    c.control = mpi::communicator(world_comm, mpi::comm_duplicate);
    c.rebuild = mpi::communicator(world_comm, mpi::comm_duplicate);
    if (!controller) c.engines_private.emplace(*c.engines, mpi::comm_duplicate);
    // The controller's whereabouts, and the name of its doorbell.
    std::string me_as_controller, bell_name;
    if (controller) {
        me_as_controller = protocol::encode_meta(protocol::engine_info{-1, protocol::host_name(), getpid()});
        if (config::flag(config::knob::doorbell)) c.bell = doorbell::create(c.n_engines());
        if (c.bell) bell_name = c.bell->name();
    }
    mpi::broadcast(c.world, me_as_controller, 0);
    mpi::broadcast(c.world, bell_name, 0);
    c.controller = protocol::decode_meta<protocol::engine_info>(me_as_controller, "engine_info");
    if (!controller && !bell_name.empty() && c.controller.host == protocol::host_name())
        c.bell = doorbell::attach(bell_name, c.n_engines());
    c.world.barrier();  // every engine of the host mapped it: the name can go
    if (controller && c.bell) c.bell->unlink();
    return c;
}

}  // namespace pcluster::mpi_wire
