// This machine's name, as every process of a job reports it (engine_info.host, logs).
#pragma once

#include <string>

#include <unistd.h>

namespace pcluster::protocol {

inline std::string host_name() {
    char buf[256] = {0};
    ::gethostname(buf, sizeof buf - 1);  // truncated names stay NUL-terminated
    return buf;
}

}  // namespace pcluster::protocol
