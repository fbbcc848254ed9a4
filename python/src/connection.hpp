// The client's side of a connection to a job's bridge: login, sending request frames, and a
// reader thread that files replies by request id. Used by the Python client through
// pcluster._core; no Python in here, so the reader never needs the GIL.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "pcluster/protocol/messages.hpp"
#include "pcluster/protocol/stream.hpp"

namespace pcluster::client {

struct auth_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// One engine's reply, with the frame it came in (its buffers are views into it).
struct reply {
    protocol::engine_reply meta;
    protocol::received_frame frame;
};
using reply_ptr = std::shared_ptr<const reply>;

class connection {
public:
    // Connects and logs in; throws auth_error (wrong key), protocol::version_error,
    // protocol::timeout_error or std::system_error. Bounded by timeout_s.
    connection(const std::string& host, int port, const std::string& key_hex, double timeout_s);
    ~connection();
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;

    std::uint32_t client_no() const { return client_no_; }
    const std::vector<protocol::engine_info>& engines() const { return engines_; }
    const std::string& job_id() const { return job_id_; }

    // Thread-safe; blocks until the frame is handed to the kernel (or to shared memory, when the
    // job is on this host and the frame is large). `id` is the request's id.
    // `replies`: how many replies the request will get (its targets).
    void send(std::uint64_t id, std::size_t replies, const protocol::outgoing_frame& f);
    // Whether the job shares this host (then large frames go by shared memory both ways).
    bool local() const { return local_; }

    // Waits until `id` has at least `n` replies, or a refusal (engine -1), or the connection
    // ends, or `deadline`. Returns whether the request is complete.
    bool wait(std::uint64_t id, std::size_t n, protocol::clock::time_point deadline);
    std::size_t count(std::uint64_t id);
    // Removes and returns the replies filed for `id` so far.
    std::vector<reply_ptr> take(std::uint64_t id);
    // The request `id` is complete: its shared-memory segment (if any) may carry the next one.
    void release(std::uint64_t id);

    bool closed();
    std::string close_reason();
    void close();

private:
    void read_loop();
    bool complete_locked(std::uint64_t id, std::size_t n);

    int fd_ = -1;
    bool local_ = false;
    std::string shm_owner_;
    // Shared-memory segments for large requests, reused once a request's replies are in.
    struct segment {
        std::string path;
        std::shared_ptr<protocol::byte_buffer> map;
    };
    std::mutex pool_mu_;
    std::vector<segment> free_segments_;
    struct busy {
        segment seg;
        std::size_t remaining;  // replies still to come
    };
    std::map<std::uint64_t, busy> busy_segments_;
    segment get_segment(std::uint64_t size);
    void trim_pool_locked();
    void file_reply(reply_ptr r);
    // Reply segments whose last Python reference died; handed back with the next send. Shared
    // with the buffers' release hooks, which may run after this connection is gone.
    struct returns {
        std::mutex mu;
        std::vector<std::string> paths;
    };
    std::shared_ptr<returns> returns_ = std::make_shared<returns>();
    void send_returns_locked();
    std::uint32_t client_no_ = 0;
    std::string job_id_;
    std::vector<protocol::engine_info> engines_;
    std::mutex send_mu_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::map<std::uint64_t, std::vector<reply_ptr>> replies_;
    std::map<std::uint64_t, bool> refused_;
    // Requests a thread is blocked on, with the reply count it needs: the reader wakes waiters
    // only when that count is reached (each needless wake-up costs a context switch).
    std::map<std::uint64_t, std::size_t> waiting_;
    bool closed_ = false;
    std::string reason_;
    std::thread reader_;
};

}  // namespace pcluster::client
