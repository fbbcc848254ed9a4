// The client's side of a connection to a job's bridge: login, sending request frames (a writer
// thread batches them), and a reader thread that files replies into the request table. Used by
// the Python client through pcluster._core; no Python in here, so neither thread needs the GIL.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "pcluster/protocol/messages.hpp"
#include "pcluster/protocol/shm.hpp"
#include "pcluster/protocol/stream.hpp"
#include "request_table.hpp"

namespace pcluster::client {

struct auth_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Threads: any number of Python threads send and wait; one writer thread batches queued frames
// into few syscalls; one reader thread files replies (request_table.hpp says who gets them).
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
    // Whether the job shares this host (then large frames go by shared memory both ways).
    bool local() const { return local_; }
    request_table& requests() { return table_; }

    // Sends request `id`, which will get `replies` replies. Thread-safe; frames leave in the
    // order of send calls. `direct`: write in the calling thread when nothing is queued (a
    // blocking call: no hand-off); otherwise small frames are copied to the writer thread's queue
    // and send returns at once (non-blocking calls batch into few syscalls). Large frames are
    // always written by the caller (or handed over in shared memory when the job is local).
    void send(std::uint64_t id, std::size_t replies, const protocol::outgoing_frame& f, bool direct);

    // The request table's waits, after making sure what is queued leaves now (someone waits).
    std::optional<completion> wait_take(std::uint64_t id, protocol::clock::time_point deadline);
    std::vector<reply_ptr> wait_count(std::uint64_t id, std::size_t n, protocol::clock::time_point deadline);
    // The request `id` is complete: its shared-memory segment (if any) may carry the next one.
    void release(std::uint64_t id);

    void close();

private:
    void read_loop();
    void write_loop();
    void send_registered(std::uint64_t id, std::size_t replies, const protocol::outgoing_frame& f, bool direct);
    // Writes the queue (then `last`, if any) with send_mu_ released; `lk` holds send_mu_ on entry
    // and exit. Returns the error, empty if none.
    std::string write_queue(std::unique_lock<std::mutex>& lk, std::optional<protocol::outgoing_frame> last);
    void kick_writer();
    // One reply frame from the bridge into the table (a shared-memory one mapped first).
    void file(protocol::received_frame f);
    void add_returns(std::vector<protocol::outgoing_frame>& frames);
    // One reply of `id` is in (all: the request was refused): its segment is free once all are
    // (discard: removed rather than kept for reuse).
    void release_one(std::uint64_t id, bool all, bool discard = false);
    // A reply frame of `type` for request `id` that cannot be taken: the request gets a ReplyLost
    // error for that reply; the connection goes on.
    void lost(std::uint16_t type, std::optional<std::uint64_t> id, const std::string& why);

    int fd_ = -1;
    bool local_ = false;
    std::uint32_t client_no_ = 0;
    std::string job_id_;
    std::vector<protocol::engine_info> engines_;
    request_table table_;

    // Shared-memory segments for large requests: one is busy until its request's replies are in.
    std::unique_ptr<protocol::shm_pool> pool_;
    std::mutex busy_mu_;
    struct busy {
        protocol::shm_out seg;
        std::size_t remaining;  // replies still to come
    };
    std::map<std::uint64_t, busy> busy_;
    // Reply segments whose last Python reference died; handed back with the next send. Shared
    // with the buffers' release hooks, which may run after this connection is gone.
    struct returns {
        std::mutex mu;
        std::vector<std::string> paths;
    };
    std::shared_ptr<returns> returns_ = std::make_shared<returns>();

    // Writing: one thread at a time holds the socket (`writing_`); queued frames own their bytes.
    std::mutex send_mu_;
    std::condition_variable writer_cv_;  // the writer thread: work queued, flush now, or stop
    std::condition_variable idle_cv_;    // senders waiting for the socket (writing_ false)
    std::vector<protocol::outgoing_frame> queue_;
    bool writing_ = false;
    bool stop_writer_ = false;
    bool flush_now_ = false;  // someone waits on a result: write what is queued without lingering
    std::chrono::microseconds linger_{};  // how long the first queued frame waits for company
    std::string write_error_;

    std::thread reader_;
    std::thread writer_;
    std::mutex close_mu_;
    bool close_done_ = false;
};

}  // namespace pcluster::client
