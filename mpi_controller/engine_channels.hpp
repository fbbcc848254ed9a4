// The controller's side of the MPI channels to the engines: issues requests (collective for
// every engine, direct for some, see pcluster/mpi/envelope.hpp), keeps per engine the requests
// awaiting its reply in issue order, and receives replies and streamed output.
//
// After an engine dies the collective communicator (which contains it) cannot be used again:
// requests for every engine go direct to each survivor while a thread builds the survivors'
// communicator with them (MPI_Comm_create_group: only survivors take part), and collectives
// resume on it. Collective requests that were on their way when the engine died may never reach
// some survivors (the broadcast tree may run through the dead one): each survivor reports how
// many it completed (epoch_done), and the rest are answered for it (RequestLost).
//
// Hazard: MPI_Comm_create_group never returns if one of its members is dead (Open MPI 4.1 has
// no way to end it), and after that the process can build no communicator at all (checked: a
// second create_group, on the same or another parent, waits behind the first forever), while
// the stuck thread spins in MPI's progress loop. A silent death on another host is noticed only
// after PCLUSTER_DEAD_AFTER_S, and a node that fails takes several engines at once, so a member
// being dead already is the common case, not a corner. Hence a handshake: after a death every
// survivor's watch thread answers rebuild_ready (proof that it is alive and has no build of its
// own under way), and only once all have answered does the controller send rebuild_go and
// everyone build. A death noticed meanwhile starts a new epoch and a new round of answers; the
// old round is dropped. What is left is a death inside the build itself (between the answer and
// the end of the build, milliseconds): then no communicator is ever built again in this job,
// and requests for every engine stay direct for good (said in the log and in docs/faults.md).
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "pcluster/mpi/job_comms.hpp"
#include "pcluster/protocol/frame.hpp"
#include "pcluster/protocol/layout.hpp"
#include "requests.hpp"

namespace pcluster::controller {

// What the controller remembers about a request until one target's reply is in.
struct awaited_reply {
    std::uint64_t id = 0;
    int engine = -1;
    bool by_shm = false;    // the client shares our /dev/shm: a large reply may go there
    bool internal = false;  // the controller's own request: the reply is dropped
    bool shutdown = false;
    bool task = false;
    std::uint64_t collective_seq = 0;  // its number on the collective channel (0: direct)
};

// Where a reply of some length is received into, and what to do once it is there.
struct reply_landing {
    char* dest;
    std::function<void()> then;
};

class engine_channels {
public:
    explicit engine_channels(const mpi_wire::job_comms& comms);
    ~engine_channels();

    // Sends a request to its live targets (q.targets): collective when it goes to every engine
    // and the collective communicator is whole, direct to each target otherwise. Every engine
    // replays the controller's issue order.
    void issue(const request& q);
    // Advances transfers in flight and a rebuild; whether anything completed.
    bool progress();
    // The epoch whose communicator is wanted once every survivor answered rebuild_ready (none:
    // the collective communicator is whole, the job is ending, or a build is under way).
    std::optional<std::uint64_t> rebuild_wanted() const;
    // Every survivor answered: builds the survivors' communicator on a thread (the survivors
    // build theirs when told rebuild_go). Returns how many survivors take part.
    int start_rebuild();
    // A build is wanted or under way, begun less than `within` ago: the controller's idle sleep
    // stays short so the handshake and the switch back to collectives are not delayed by it.
    bool rebuilding(std::chrono::steady_clock::duration within) const;
    bool transferring() const { return !inflight_.empty(); }
    // Nothing in flight and no reply awaited: the controller may sleep until a socket wakes it.
    bool quiet() const;
    // Rings the doorbell of every engine that owes a reply (a safety net: a ring sent before a
    // broadcast physically reached a sleeping engine would otherwise be lost until its timeout).
    void ring_owed();
    // Receives what the engines sent: each reply lands where land(len, awaited) says, each
    // streamed output frame goes to on_output, each epoch report to on_epoch(engine, done,
    // epoch). Whether anything came.
    bool receive(const std::function<reply_landing(std::uint64_t len, const awaited_reply&)>& land,
                 const std::function<void(std::shared_ptr<protocol::byte_buffer>)>& on_output,
                 const std::function<void(int, std::uint64_t, std::uint64_t)>& on_epoch);
    // The shutdown request went out and every engine answered it (or is dead).
    bool shutdown_done() const { return shutdown_issued_ && shutdown_replies_left_ <= 0 && inflight_.empty(); }

    // Engine `e` died: returns the requests that awaited its reply (to be answered for it),
    // drops its transfers, and starts building the survivors' collective communicator.
    // Returns also the epoch and how many collective requests were issued before it.
    struct death_effects {
        std::vector<awaited_reply> lost;
        std::uint64_t epoch = 0;
        std::uint64_t collectives_issued = 0;
    };
    // No rebuild when `rebuild` is false (the job is ending: survivors may be dying too, and a
    // rebuild would wait for them); else one is wanted (rebuild_wanted).
    death_effects engine_died(int e, const std::vector<bool>& alive, bool rebuild = true);
    // A survivor reached `epoch` having completed `done` collective requests: the ones after
    // that, issued before the epoch began, never reach it; returns them (to be answered).
    std::vector<awaited_reply> epoch_reached(int e, std::uint64_t done, std::uint64_t epoch);
    bool alive(int e) const { return alive_[static_cast<std::size_t>(e)]; }

private:
    // An MPI operation in flight: when all `reqs` are done, `then` runs; `keep` holds the memory
    // MPI reads or writes until then. `from`: the engine a receive waits on (-1: none).
    struct inflight {
        std::vector<MPI_Request> reqs;
        std::shared_ptr<void> keep;
        std::function<void()> then;
        int from = -1;
        std::optional<awaited_reply> awaited;  // the reply it receives, if any
    };
    void issue_collective(const request& q, const protocol::request_layout& l);
    void issue_direct(const request& q, const protocol::request_layout& l, std::size_t k);
    awaited_reply awaited_of(const request& q, int engine, std::uint64_t seq = 0) const;
    void receive_pieces(int src, const std::vector<std::uint64_t>& lens, reply_landing to, const awaited_reply& a);
    void finish_rebuild();

    // One build of the survivors' communicator. Shared with its thread, which may never end
    // (see the hazard above): the thread touches nothing else.
    struct rebuild_job {
        std::uint64_t epoch = 0;
        std::vector<int> ranks;  // world ranks: 0 and the survivors'
        MPI_Comm comm = MPI_COMM_NULL;
        std::atomic<bool> done{false};
        std::chrono::steady_clock::time_point began;
    };

    MPI_Comm collective_, direct_, reply_, rebuild_comm_;
    std::shared_ptr<mpi_wire::doorbell> bell_;
    int n_;
    std::vector<bool> alive_;
    std::vector<int> rank_of_;  // engine -> its rank in the current collective communicator
    std::uint64_t collective_sent_ = 0;
    std::vector<std::uint64_t> direct_sent_;          // per engine
    std::vector<std::deque<awaited_reply>> awaited_;  // per engine, in issue order
    std::list<inflight> inflight_;
    std::vector<std::shared_ptr<void>> abandoned_;    // buffers of transfers that never complete
    bool shutdown_issued_ = false;
    int shutdown_replies_left_ = 0;
    // Epochs: one per death. epoch_issued_[k] = collective requests issued before epoch k+1.
    std::uint64_t epoch_ = 0;
    std::vector<std::uint64_t> epoch_issued_;
    bool collective_whole_ = true;
    bool rebuild_wanted_ = false;  // for epoch_, once the survivors answered
    std::chrono::steady_clock::time_point wanted_since_;
    std::shared_ptr<rebuild_job> rebuild_;  // the build under way (or stuck), if any
    std::thread rebuild_thread_;
    bool stuck_reported_ = false;
};

}  // namespace pcluster::controller
