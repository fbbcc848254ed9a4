// Starting the bridge (pcluster-bridge) from rank 0 and waiting for it at the end.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "controller.hpp"
#include "pcluster/protocol/messages.hpp"

namespace pcluster::controller {

struct started_bridge {
    pid_t pid = -1;
    int fd = -1;  // the controller's end of the socket pair, non-blocking
    protocol::bridge_ready ready;
};

// Spawns the bridge in its own session, hands it the job's description and waits (bounded by
// opt.bridge_timeout_s) until it listens and wrote the connection file. nullopt (logged) when it
// could not start; the job then ends at once.
std::optional<started_bridge> start_bridge(const options& opt, const protocol::job_info& info);

// Waits (bounded) for the bridge to exit once the controller closed its end; then SIGTERM.
void reap_bridge(pid_t pid);

}  // namespace pcluster::controller
