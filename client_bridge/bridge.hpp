// The bridge's event loop: clients on TCP, the controller on a Unix socket. Authenticates clients
// with HMAC-SHA256 before reading any request from them, forwards their request frames to the
// controller and routes replies back by the client number in each request id. It never
// interprets user payloads. One bad client is one closed connection.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "pcluster/protocol/auth.hpp"
#include "pcluster/protocol/messages.hpp"
#include "pcluster/protocol/stream.hpp"

namespace pcluster::bridge {

// Frames a client may send before it is authenticated are at most this large.
inline constexpr std::uint64_t login_max_frame = 4096;
inline constexpr auto login_timeout = std::chrono::seconds(10);

struct client {
    int fd = -1;
    std::uint32_t no = 0;  // 0 until authenticated
    protocol::digest nonce{};
    protocol::frame_reader reader{login_max_frame};
    protocol::frame_writer writer;
    protocol::clock::time_point login_deadline;
    bool closing = false;  // close once the writer drains (after a refusal)
    std::string peer;
    // Shared-memory segments this client named; unlinked when it goes, so a client that dies
    // (no close()) leaves nothing in /dev/shm.
    std::set<std::string> shm_paths;
    // Reply segments the controller lent this client; unlinked if it goes without returning them.
    std::set<std::string> lent_paths;
};

class bridge {
public:
    bridge(int controller_fd, protocol::job_info info, protocol::digest key, int listen_fd, std::uint64_t max_frame);
    // Returns why the job ended, when the controller is gone or a SIGTERM arrived.
    std::string run();
    // Tells every client why the job ended and gives them a moment to read it.
    void farewell(const std::string& reason);

private:
    void add(int fd, std::uint32_t events);
    void mod(int fd, std::uint32_t events);
    void accept_clients();
    void drop(client& c, const std::string& why);
    void read_client(client& c);
    void login(client& c, const protocol::received_frame& f);
    void forward(client& c, protocol::received_frame f);
    bool read_controller();
    // A frame from the controller: a reply to route to its client. Returns the client's fd, or -1.
    int route_reply(protocol::received_frame f);
    void flush_controller();
    void flush_client(client& c);
    void expire_logins();

    int ctl_fd_;
    protocol::job_info info_;
    protocol::digest key_;
    int listen_fd_;
    std::uint64_t max_frame_;
    int ep_ = -1;
    std::map<int, client> clients_;
    std::map<std::uint32_t, int> fd_of_client_;  // client number -> fd, once authenticated
    protocol::frame_reader ctl_reader_;
    protocol::frame_writer ctl_writer_;
    std::uint32_t next_client_no_ = 1;
    std::optional<protocol::clock::time_point> listen_paused_until_;
    // Why the job ended, as the controller said before closing; if it just vanished, this.
    std::string end_reason_ = "the controller went away (the job was killed or crashed)";
};

// Set by SIGTERM: run() returns.
void request_termination();

}  // namespace pcluster::bridge
