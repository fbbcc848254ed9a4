#include "pcluster/mpi/control.hpp"

#include <cstring>

namespace pcluster::mpi_wire {

std::string describe_death(std::uint64_t how, std::uint64_t code, const std::string& fallback) {
    if (how == death_exit) return "exited with code " + std::to_string(code);
    if (how == death_signal) {
        const char* abbrev = sigabbrev_np(static_cast<int>(code));
        return "killed by SIG" + (abbrev ? std::string(abbrev) : std::to_string(code));
    }
    return fallback;
}

}  // namespace pcluster::mpi_wire
