// The results of clients' requests, kept by id after their replies went out: ipyparallel's hub
// database, in the controller (rc.get_result, rc.db_query, a client that reconnects). Pure
// bookkeeping, no MPI; unit-tested (tests/unit/test_result_store.cpp).
//
// What is kept: for every request of a client (not control requests, not a shutdown), when it
// was accepted, the engines it waits for, and each reply's encoded engine_reply frame as it went
// to the client (errors made by the controller too: EngineDied, TaskAborted, refusals). A task
// also keeps its request, so it can be run again (resubmit).
//
// Bounds: at most `records` finished requests and `bytes` of their frames (requests of tasks
// included); the oldest finished go first, and their ids are remembered (up to 8 x `records`)
// so that asking for one says it was dropped rather than that it never existed. One reply larger
// than `item` is not kept (its record says how large it was): keeping a large reply costs a copy
// on the hot path when it arrived in shared memory, and memory the controller's host shares with
// engines. Requests still pending are not bounded here: they are what the task farm and the
// clients' windows hold anyway (a record without replies is about 150 bytes).
//
// Replies handed over as shared byte buffers are kept by reference, without a copy (they are
// never written again); a reply in shared memory lent to a client is copied, since that segment
// is reused once the client returns it. Single-threaded, like the controller's event loop.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "pcluster/protocol/frame.hpp"
#include "pcluster/protocol/messages.hpp"

namespace pcluster::controller {

struct store_limits {
    std::size_t records = 10000;                 // PCLUSTER_RESULTS_KEEP; 0: keep nothing
    std::uint64_t bytes = std::uint64_t{256} << 20;  // PCLUSTER_RESULTS_MIB
    std::uint64_t item = std::uint64_t{1} << 20;     // PCLUSTER_RESULTS_ITEM_KIB
    static store_limits from_settings();
};

class result_store {
public:
    explicit result_store(store_limits limits) : limits_(limits) {}

    bool enabled() const { return limits_.records > 0; }

    // Request `id` of a client was accepted: of message type `type`, waiting for one reply from
    // each of `targets` (a task: one reply from wherever it runs). `request`: a task's own frame
    // in memory the store may keep (null when it lies in the client's shared memory).
    void submitted(std::uint64_t id, std::uint16_t type, const std::vector<int>& targets, bool task, double now,
                   std::shared_ptr<protocol::byte_buffer> request = nullptr);
    // A reply to `id` went to its client: `frame` is its encoded engine_reply from `engine`
    // (no_engine with `whole`: a refusal, which answers the whole request). `owner`, when given,
    // holds exactly those bytes and is kept instead of a copy. A request the store never saw is
    // recorded only when `whole` (a refusal: the answer to an id the client holds).
    void replied(std::uint64_t id, int engine, bool whole, std::span<const char> frame, double now,
                 std::shared_ptr<protocol::byte_buffer> owner = nullptr);

    // The record of `id` as clients see it (state unknown when there is none).
    protocol::result_record record(std::uint64_t id) const;
    // Every kept record (pending and done), oldest accepted first.
    std::vector<protocol::result_record> all() const;
    // The kept frames of `id`'s replies, in record order (empty unless done).
    std::vector<std::shared_ptr<const protocol::byte_buffer>> frames(std::uint64_t id) const;
    // A kept task's request frame, for resubmit: null when `id` is not a finished task whose
    // request is kept.
    std::shared_ptr<const protocol::byte_buffer> task_request(std::uint64_t id) const;
    void resubmitted(std::uint64_t id, std::uint64_t as);

    // Forgets finished request `id` (purged); false when it is pending or unknown.
    bool purge(std::uint64_t id);
    // Ids of every finished record, or of those with a reply from one of `engines` when given.
    std::vector<std::uint64_t> finished(const std::vector<int>& engines = {}) const;

    std::size_t finished_count() const { return finished_count_; }
    std::uint64_t bytes() const { return bytes_; }

private:
    struct kept_reply {
        int engine = protocol::no_engine;
        std::uint64_t size = 0;
        std::shared_ptr<const protocol::byte_buffer> frame;  // null: not kept (over `item`)
        std::uint64_t offset = 0;                            // of the frame inside `frame`
    };
    struct entry {
        std::uint16_t type = 0;
        bool task = false;
        bool done = false;
        std::vector<int> targets;
        std::size_t expected = 0;
        double submitted = 0, completed = 0;
        std::vector<kept_reply> replies;
        std::shared_ptr<const protocol::byte_buffer> request;
        std::uint64_t bytes = 0;  // kept: replies and request
        std::uint64_t resubmitted_as = 0;
        std::uint64_t order = 0;  // acceptance order
    };
    void finish(std::uint64_t id, entry& e, double now);
    void forget(std::uint64_t id, protocol::result_state why);
    void evict();

    store_limits limits_;
    std::unordered_map<std::uint64_t, entry> entries_;
    std::deque<std::uint64_t> finish_order_;  // finished ids, oldest first (purged ones skipped lazily)
    std::unordered_map<std::uint64_t, protocol::result_state> gone_;  // dropped or purged ids
    std::deque<std::uint64_t> gone_order_;
    std::size_t finished_count_ = 0;
    std::uint64_t bytes_ = 0;
    std::uint64_t next_order_ = 0;
};

}  // namespace pcluster::controller
