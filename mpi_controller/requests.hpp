// Requests as the controller receives them from the bridge: checked, with their targets resolved.
// Pure apart from mapping a shared-memory frame; unit-tested (tests/unit/test_requests.cpp).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "pcluster/protocol/errors.hpp"
#include "pcluster/protocol/messages.hpp"
#include "pcluster/protocol/stream.hpp"

namespace pcluster::controller {

struct request {
    protocol::received_frame frame;
    protocol::route r;
    std::uint16_t type = 0;
    // Engine ids it goes to, in the route's order: never empty, except for a task that may run
    // on any engine.
    std::vector<int> targets;
    bool internal = false;  // made by the controller itself: its replies are dropped
    bool task = false;      // a farm task: its reply passes the scheduler
    bool shutdown() const { return type == static_cast<std::uint16_t>(protocol::message_type::shutdown_request); }
};

// A request the controller will not serve, with the request id when it could be read.
struct refusal : std::runtime_error {
    refusal(protocol::error_kind k, const std::string& why) : std::runtime_error(why), kind(k) {}
    protocol::error_kind kind;
    std::uint64_t id = 0;
};

// Checks a request frame (or a shm_frame naming one) from the bridge: maps the shared memory,
// decodes the route, resolves and checks the targets and the buffer layout against the frame.
// No targets means every engine the client knew alive: the live ones, and those in
// deaths[route.deaths_seen..] (died since; the controller answers for them, as for a dead engine
// named explicitly). Throws refusal.
request check_request(protocol::received_frame f, const std::vector<bool>& alive, const std::vector<int>& deaths);

// A request the controller makes itself (shutdown when a signal or the bridge's end stops the
// job), for `targets`.
request internal_request(protocol::outgoing_frame f, std::vector<int> targets);

}  // namespace pcluster::controller
