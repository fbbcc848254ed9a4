// Which address the bridge listens on and which one the connection file gives clients.
#pragma once

#include <string>
#include <vector>

namespace pcluster::bridge {

struct listen_plan {
    std::string listen;                  // what to bind (may be a wildcard)
    std::string connect;                 // what clients connect to: never a wildcard
    std::vector<std::string> addresses;  // every address clients may try, `connect` first
    std::string why;                     // for the log
};

// requested: --ip as given ("" when not given). Not given: under SLURM, the address of the
// interface that routes to the submitting host (the login node), unless that is this host;
// otherwise loopback. A wildcard (0.0.0.0, ::) listens everywhere and gives clients this host's
// interface addresses. Never silently loopback when the job was submitted from elsewhere.
listen_plan plan_listen(const std::string& requested);

// This host's IPv4 addresses of interfaces that are up, loopback last.
std::vector<std::string> interface_addresses();

}  // namespace pcluster::bridge
