// The job's connection file, on the bridge's side: where it goes, writing it safely, removing it.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>

#include "pcluster/protocol/connection_file.hpp"

namespace pcluster::bridge {

// Writes the file atomically with mode 0600 (the key in it is the job's only secret), creating
// its directory (0700) if needed. Refuses a directory or an existing file that is not this
// user's own or that others may write (protocol::check_private_dir/_file), and the file of a
// job that still runs: one whose bridge answers a login with the file's key. A stale file (its
// port refuses, or someone else answers there) is replaced with a warning.
void write_connection_file(const std::filesystem::path& path, const protocol::connection_info& info);

// Whether the job a connection file describes is alive: its bridge answers at one of its
// addresses and proves it holds the key. `unknown` when nobody answered within `timeout`
// (a bridge may be too busy), `dead` when every address refused or someone else answered.
enum class job_state { live, dead, unknown };
job_state ask_job(const protocol::connection_info& info, std::chrono::milliseconds timeout);

}  // namespace pcluster::bridge
