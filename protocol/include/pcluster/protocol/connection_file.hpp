// The connection file: how a client finds and authenticates to a running job. Written by the
// bridge (0600, atomically), read by the Python client and the pcluster CLI; its fields are
// defined once, here.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "pcluster/protocol/fields.hpp"

namespace pcluster::protocol {

struct connection_file_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct connection_info {
    std::uint32_t version = 0;         // the job's protocol_version
    std::string transport = "tcp";
    std::string ip;                    // the address clients connect to (never a wildcard)
    std::vector<std::string> addresses;  // every address the bridge can be reached at, ip first
    std::string listen;                // what the bridge bound (e.g. 0.0.0.0 for all interfaces)
    std::string host;                  // the bridge's host name, for people (clients use ip)
    std::uint32_t port = 0;
    std::string key;                   // 64 hex digits: the job's 256-bit secret
    std::string signature_scheme = "hmac-sha256";
    std::string job_id;
    std::uint32_t engines = 0;
    std::string controller_host;
    std::int64_t controller_pid = 0;
    std::int64_t bridge_pid = 0;
    std::int64_t created = 0;          // seconds since the epoch
    PCLUSTER_FIELDS(connection_info, version, transport, ip, addresses, listen, host, port, key, signature_scheme,
                    job_id, engines, controller_host, controller_pid, bridge_pid, created)
};

// Where connection files go: $PCLUSTER_CONNECTION_DIR, else ~/.pcluster (the home directory from
// the password database when HOME is unset, so a job and its clients always agree).
std::string connection_dir();
// The file of SLURM job `job_id`: <dir>/slurm-<job_id>.json.
std::string connection_file_for_job(const std::string& job_id);
// A job's file when none is given: $PCLUSTER_CONNECTION_FILE, else the SLURM job's own file
// inside a SLURM job (SLURM_JOB_ID), else <dir>/connection.json.
std::string default_connection_file();

// Ownership, as ssh checks its files: a connection file holds the job's key and tells a client
// where to connect, so one that another user can write (or put there) could send the client to a
// port of their choosing. Each throws connection_file_error naming the path and the fix.
//   check_private_dir:  `dir` is a directory owned by this user (or root) that neither group nor
//                       others may write, unless it is sticky like /tmp (then nobody can replace
//                       a file of ours in it).
//   check_private_file: `path` is a regular file owned by this user (or root) that neither group
//                       nor others may write, in a directory that passes check_private_dir.
void check_private_dir(const std::string& dir);
void check_private_file(const std::string& path);

std::string to_json(const connection_info& c);
// Parses and checks a connection file's text; connection_file_error names what is wrong.
connection_info connection_info_from_json(std::string_view text);

}  // namespace pcluster::protocol
