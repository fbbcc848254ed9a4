// The client's table of requests in flight: the replies and streamed output each has so far,
// and who takes it once complete. No socket and no Python, so it is tested on its own
// (tests/unit/test_request_table.cpp); the connection's reader thread files into it and any
// number of Python threads wait on it.
//
// Each complete request goes to exactly one consumer: a thread blocked in wait_take() on it (the
// fast path of a blocking call: one wake-up) or, when nobody waits on it, the completion queue
// the client's result thread drains with next_completed() - that is how futures resolve,
// callbacks run and `await` wakes without anyone polling.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "pcluster/protocol/messages.hpp"
#include "pcluster/protocol/stream.hpp"

namespace pcluster::client {

// One reply, with the frame it came in (its buffers are views into it). A control_reply (the
// controller's answer to abort / queue_status) comes as `control`, with meta.origin controller.
struct reply {
    protocol::engine_reply meta;
    protocol::received_frame frame;
    std::optional<protocol::control_reply> control;
};
using reply_ptr = std::shared_ptr<const reply>;

// What a request printed while it ran (protocol::output), in arrival order.
using output_chunk = protocol::output;

// A request's replies and streamed output, handed over once.
struct completion {
    std::vector<reply_ptr> replies;
    std::vector<output_chunk> output;
};

class request_table {
public:
    using time_point = protocol::clock::time_point;

    // Registers request `id`, complete once `expected` replies are in (or one that answers the
    // whole request: a refusal). Throws std::system_error (ENOTCONN) once closed.
    void add(std::uint64_t id, std::size_t expected);
    // Forgets a request that was never sent.
    void remove(std::uint64_t id);
    // Files a reply under its request (ignored when the request is unknown or the table closed).
    void file_reply(reply_ptr r);
    void file_output(output_chunk o);

    // Waits until `id` is complete (or the table closes, or `deadline`) and takes its
    // completion; nullopt when not complete, unknown, or already taken by another caller.
    std::optional<completion> wait_take(std::uint64_t id, time_point deadline);
    // Takes a complete request's completion; nullopt when incomplete or already taken.
    std::optional<completion> take(std::uint64_t id);
    // Whether `id` is still here (added, not yet taken).
    bool pending(std::uint64_t id);
    // Ids of requests completed with nobody waiting on them, waiting until there is one, an
    // engine event comes, the table closes or `deadline`.
    std::vector<std::uint64_t> next_completed(time_point deadline);
    // News of engines (a death), in arrival order, for the client's result thread.
    void file_event(protocol::engine_event ev);
    std::vector<protocol::engine_event> take_events();
    // Waits until `id` has at least `n` replies (or is complete, gone, closed, or `deadline`);
    // the replies so far, not taken.
    std::vector<reply_ptr> wait_count(std::uint64_t id, std::size_t n, time_point deadline);
    // Output streamed for `id` so far, removed from here.
    std::vector<output_chunk> take_output(std::uint64_t id);
    // Once closed: forgets request `id` (every request when nullopt) unless it is complete, and
    // returns the ids forgotten; their replies will never come, the caller fails them. Complete
    // ones stay for whoever takes them, so no result is failed twice.
    std::vector<std::uint64_t> abandon(std::optional<std::uint64_t> id = std::nullopt);

    // Freezes the table (the first reason stays) and wakes every waiter.
    void close(const std::string& reason);
    bool closed();
    std::string close_reason();

private:
    struct request {
        std::size_t expected = 0;
        std::vector<reply_ptr> replies;
        std::vector<output_chunk> output;
        bool whole = false;  // a reply answered the whole request (a refusal)
        int takers = 0;      // threads in wait_take for it
        int counters = 0;    // threads in wait_count for it
        bool complete() const { return whole || replies.size() >= expected; }
    };
    std::optional<completion> take_locked(std::unordered_map<std::uint64_t, request>::iterator it);

    std::mutex mu_;
    std::condition_variable cv_;       // wait_take / wait_count
    std::condition_variable done_cv_;  // next_completed
    std::unordered_map<std::uint64_t, request> requests_;
    std::deque<std::uint64_t> completed_;
    std::vector<protocol::engine_event> events_;
    bool closed_ = false;
    std::string reason_;
};

}  // namespace pcluster::client
