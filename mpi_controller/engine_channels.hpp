// The controller's side of the MPI channels to the engines: issues requests (collective for
// every engine, direct for some, see pcluster/mpi/envelope.hpp), keeps per engine the requests
// awaiting its reply in issue order, and receives replies and streamed output.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
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
};

// Where a reply of some length is received into, and what to do once it is there.
struct reply_landing {
    char* dest;
    std::function<void()> then;
};

class engine_channels {
public:
    explicit engine_channels(const mpi_wire::job_comms& comms);

    // Sends a request to its targets (q.targets): collective when it goes to every engine,
    // direct to each target otherwise. Every engine replays the controller's issue order.
    void issue(const request& q);
    // Advances transfers in flight; whether any completed.
    bool progress();
    bool transferring() const { return !inflight_.empty(); }
    // Receives what the engines sent: each reply lands where land(len, awaited) says, each
    // streamed output frame goes to on_output. Whether anything came.
    bool receive(const std::function<reply_landing(std::uint64_t len, const awaited_reply&)>& land,
                 const std::function<void(std::shared_ptr<protocol::byte_buffer>)>& on_output);
    // The shutdown request went out and every engine answered it.
    bool shutdown_done() const { return shutdown_issued_ && shutdown_replies_left_ == 0 && inflight_.empty(); }

private:
    // An MPI operation in flight: when all `reqs` are done, `then` runs; `keep` holds the
    // memory MPI reads or writes until then.
    struct inflight {
        std::vector<MPI_Request> reqs;
        std::shared_ptr<void> keep;
        std::function<void()> then;
    };
    void issue_collective(const request& q, const protocol::request_layout& l);
    void issue_direct(const request& q, const protocol::request_layout& l, std::size_t k);
    awaited_reply awaited_of(const request& q, int engine) const;
    void receive_pieces(int src, const std::vector<std::uint64_t>& lens, reply_landing to);

    MPI_Comm collective_, direct_, reply_;
    int n_;
    std::uint64_t collective_sent_ = 0;
    std::vector<std::uint64_t> direct_sent_;          // per engine
    std::vector<std::deque<awaited_reply>> awaited_;  // per engine, in issue order
    std::list<inflight> inflight_;
    bool shutdown_issued_ = false;
    int shutdown_replies_left_ = 0;
};

}  // namespace pcluster::controller
