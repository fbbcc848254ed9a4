// When a client's requests for engines (push, pull, execute, apply, scatter, gather, map; not
// tasks, which the task farm schedules) are sent to the engines. Pure bookkeeping, no MPI.
//
// Why: a request cannot be taken back once an engine has it, and its reply will come whether
// or not the client reads it. A client that sends many small requests at once and reads no reply
// (600 executes of `'r' * 1_000_000` measured 569 MiB queued in the bridge for a 64 MiB reply
// budget) cannot be bounded where the replies arrive; only where the requests leave. So:
//   - window: at most `window` requests of one client are sent to one engine and not yet
//     answered; more wait here, in the client's order (an engine runs one at a time anyway, so
//     16 keep it busy; PCLUSTER_CLIENT_WINDOW);
//   - hold: when the bridge says the client's unread replies are over its budget
//     (control_action::hold_client), none of its requests is sent until it says release_client;
//   - hold_all: while the bridge is behind in taking replies from the controller (they queue
//     here, on their way to it), nobody's requests are sent: the bridge can hold a client only
//     over what it has read.
// What a held client can still make the bridge buffer is then its budget, the replies of at most
// `window` requests per engine, and what was queued for the bridge when it held it (bounded by
// hold_all's threshold).
//
// A client's requests go in the order they came: one that must wait keeps its followers waiting
// (a later request to every engine must not overtake an earlier one to engine 0). Clients do not
// wait for each other.
//
// Single-threaded, like the controller's event loop.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "requests.hpp"

namespace pcluster::controller {

class admission {
public:
    admission(int engines, int window);

    // A checked request of a client (not a task, not internal, not a shutdown): returned to be
    // sent now (and counted against the window), or kept until there is room (nullopt).
    std::optional<request> offer(request q, const std::vector<bool>& alive);
    // Engine `engine`'s reply to request `id` arrived, or was answered for it (death, lost):
    // room for one more of that client's.
    void answered(std::uint64_t id, int engine);
    void hold(std::uint32_t client);
    void release(std::uint32_t client);
    // Every client at once: the bridge is behind in taking replies (controller.cpp).
    void hold_all(bool on);
    // Requests that may be sent now (counted), each client's in its order. Call after
    // answered(), release() or a death.
    std::vector<request> take_ready(const std::vector<bool>& alive);
    // Engine `e` died: the ids of waiting requests that target it (to be answered with
    // EngineDied for it; when sent later, they go to the other targets only).
    std::vector<std::uint64_t> engine_died(int e);
    // Request `id` is dropped if it still waits here (view.abort): whether it was.
    bool abort(std::uint64_t id);
    // The client left: its waiting requests are dropped (nobody would read their replies); their ids.
    std::vector<std::uint64_t> forget(std::uint32_t client);
    // The job is stopping: every waiting request's id (each to be refused), none kept.
    std::vector<std::uint64_t> take_all();
    std::size_t waiting() const { return waiting_; }

private:
    struct client_state {
        std::deque<request> waiting;
        std::vector<int> sent;  // per engine: sent and not answered
        bool held = false;
    };
    client_state& state_of(std::uint32_t client);
    bool fits(const client_state& c, const request& q, const std::vector<bool>& alive) const;
    void count(client_state& c, const request& q, const std::vector<bool>& alive);

    int engines_;
    int window_;
    std::size_t waiting_ = 0;
    bool all_held_ = false;
    std::unordered_map<std::uint32_t, client_state> clients_;
    std::unordered_set<std::uint32_t> dirty_;  // may have a request ready to go
};

}  // namespace pcluster::controller
