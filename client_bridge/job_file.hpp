// The job's connection file, on the bridge's side: where it goes, writing it safely, removing it.
#pragma once

#include <filesystem>
#include <string>

#include "pcluster/protocol/connection_file.hpp"

namespace pcluster::bridge {

// Writes the file atomically with mode 0600 (the key in it is the job's only secret), creating
// its directory (0700) if needed. Refuses to replace the file of a job that still runs (its
// bridge process is alive); a stale one is replaced with a warning.
void write_connection_file(const std::filesystem::path& path, const protocol::connection_info& info);

}  // namespace pcluster::bridge
