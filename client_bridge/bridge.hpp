// The bridge's event loop: clients on TCP, the controller on a Unix socket. Authenticates clients
// with HMAC-SHA256 before reading any request from them, forwards their request frames to the
// controller and routes replies back by the client number in each request id. It never
// interprets user payloads.
//
// Under attack and load (docs/security.md):
//   - before login a connection holds a few KiB and at most login_timeout; there are at most
//     max_pending_logins of them (the oldest dropped, refusals first), failed logins from one
//     address wait longer each time, and repeated log lines are counted instead of printed;
//   - after login each client has budgets: request bytes forwarded and not yet answered at all
//     (inflight_bytes), how many such requests (max_unanswered) and replies queued that it has
//     not read (reply_buffer_bytes); over any, the bridge stops reading its requests (they wait
//     in its socket) until it is under again. Over the reply budget the controller also holds
//     the requests it has not yet sent to engines (mpi_controller/admission.hpp): what can still
//     come is the replies of those already sent, at most PCLUSTER_CLIENT_WINDOW per engine;
//   - a frame that cannot be taken fails the one request it belongs to (a refusal, or ReplyLost
//     for a reply), never the client's connection or the controller's; a frame that carries no
//     request id of the client's own, or breaks the framing, closes that client only;
//   - a client names shared memory only if it proved it shares /dev/shm, and only segments of its
//     own (the owner tag of its login probe).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "guard.hpp"
#include "login.hpp"
#include "pcluster/protocol/auth.hpp"
#include "pcluster/protocol/messages.hpp"
#include "pcluster/protocol/stream.hpp"

namespace pcluster::bridge {

struct limits {
    std::uint64_t max_frame = protocol::default_max_frame;  // largest request a client may send
    std::uint64_t inflight_bytes = std::uint64_t{256} << 20;
    std::uint64_t reply_buffer_bytes = std::uint64_t{64} << 20;
    std::size_t max_unanswered = 65536;  // per client: requests forwarded with no reply yet
    std::size_t max_pending_logins = 256;
    std::chrono::milliseconds login_timeout = std::chrono::seconds(10);
};

struct client {
    int fd = -1;
    std::uint64_t seq = 0;  // arrival order: the oldest pending login goes first
    std::uint32_t no = 0;   // 0 until authenticated
    protocol::digest nonce{};
    protocol::frame_reader reader{login_max_frame};
    protocol::frame_writer writer;
    steady::time_point login_deadline;
    // A wrong key: the refusal goes out at this time (later for each failure from the address).
    std::optional<std::multimap<steady::time_point, int>::iterator> refusing;
    bool paused = false;      // over a budget: its requests wait in its socket
    bool held = false;        // over the reply budget: the controller sends none of its requests
    std::uint32_t events = 0;  // the epoll mask it is registered with
    std::string peer;          // host:port
    std::string addr;          // host
    bool shm_ok = false;
    std::string shm_owner;  // the owner tag of its segments (login probe)
    // Shared-memory segments this client named; unlinked when it goes, so a client that dies
    // (no close()) leaves nothing in /dev/shm.
    std::set<std::string> shm_paths;
    // Reply segments the controller lent this client; unlinked if it goes without returning them.
    std::set<std::string> lent_paths;
    // Requests forwarded that no reply has answered yet, and their bytes.
    std::unordered_map<std::uint64_t, std::uint64_t> inflight;
    std::uint64_t inflight_bytes = 0;
};

class bridge {
public:
    bridge(int controller_fd, protocol::job_info info, protocol::digest key, int listen_fd, limits lim);
    // Returns why the job ended, when the controller is gone or a SIGTERM arrived.
    std::string run();
    // Tells every client why the job ended and gives them a moment to read it.
    void farewell(const std::string& reason);

private:
    void add(int fd, std::uint32_t events);
    void set_events(client& c);
    void set_controller_events(bool want_out);
    void on_client_event(client& c, std::uint32_t events);
    void accept_clients();
    void make_room_for_login();
    void drop(client& c, const std::string& why, const char* kind = "closing connection");
    void read_client(client& c);
    void login(client& c, const protocol::received_frame& f);
    void send_refusal(client& c);
    void forward(client& c, protocol::received_frame f);
    // Answers request `id` of client `c` with a refusal naming `why` (the request fails, the
    // client stays). Returns false when the id is not c's own: then c must be closed.
    bool refuse_request(client& c, std::optional<std::uint64_t> id, const std::string& why);
    bool read_controller();
    // A frame from the controller: a reply to route to its client. Returns the client's fd, or -1.
    int route_reply(protocol::received_frame f);
    // A frame from the controller the bridge could not take: its request fails with ReplyLost.
    int reply_lost(const protocol::bad_frame& b);
    void answered(client& c, std::uint64_t id);
    void check_budget(client& c);
    void flush_controller();
    void flush_client(client& c);
    void run_timers();
    int next_timeout_ms() const;

    int ctl_fd_;
    protocol::job_info info_;
    protocol::digest key_;
    int listen_fd_;
    limits lim_;
    int ep_ = -1;
    std::map<int, client> clients_;
    std::map<std::uint64_t, int> pending_;                   // arrival -> fd: logging in, oldest first
    std::multimap<steady::time_point, int> refusing_;        // when -> fd: wrong key, refusal waiting
    std::unordered_map<std::uint32_t, int> fd_of_client_;    // client number -> fd, once authenticated
    std::set<std::string> shm_owners_;                       // owner tags of connected clients
    std::vector<int> resume_;                                // unpaused with frames already buffered
    std::uint64_t next_seq_ = 1;
    protocol::frame_reader ctl_reader_;
    protocol::frame_writer ctl_writer_;
    std::uint32_t ctl_events_ = 0;
    std::uint32_t next_client_no_ = 1;
    std::optional<steady::time_point> listen_paused_until_;
    log_limiter logs_;
    login_throttle throttle_;
    bool trim_due_ = false;
    steady::time_point last_trim_{};
    // Why the job ended, as the controller said before closing; if it just vanished, this.
    std::string end_reason_ = "the controller went away (the job was killed or crashed)";
};

// Set by SIGTERM: run() returns.
void request_termination();

}  // namespace pcluster::bridge
