// The client's side of a connection to a job's bridge: login, sending request frames, and a
// reader thread that files replies by request id. Used by the Python client through
// pcluster._core; no Python in here, so the reader never needs the GIL.
#pragma once

#include <condition_variable>
#include <deque>
#include <optional>
#include <unordered_map>
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
    // A request the controller answered itself (abort, queue_status): meta.engine is
    // controller_engine and this holds the answer.
    std::optional<protocol::control_reply> control;
};
inline constexpr std::int32_t controller_engine = -2;
// A reply this client could not receive (a shared-memory reply it failed to map).
inline constexpr std::int32_t local_failure_engine = -3;
using reply_ptr = std::shared_ptr<const reply>;

// What a request printed while it ran (protocol::output), in arrival order.
using output_chunk = protocol::output;

// A request's replies and streamed output, handed over once.
struct outcome {
    std::vector<reply_ptr> replies;
    std::vector<output_chunk> output;
};

// Threads: any number of Python threads send and wait; one writer thread batches queued frames
// into few syscalls; one reader thread files replies by request id. Each complete request goes
// either to a thread blocked in wait_take() on it (the fast path of a blocking call: one wake-up)
// or, when nobody waits on it, to the completion queue that the client's result thread drains
// with next_completed(): that is how futures resolve, callbacks run and `await` wakes without
// anyone polling. Exactly one caller gets a request's outcome (wait_take or take).
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

    // Sends request `id`, which will get `replies` replies. Thread-safe; frames leave in the
    // order of send calls. `direct`: write in the calling thread when nothing is queued (a
    // blocking call: no hand-off); otherwise small frames are copied to the writer thread's queue
    // and send returns at once (non-blocking calls batch into few syscalls). Large frames are
    // always written by the caller (or handed over in shared memory when the job is local).
    void send(std::uint64_t id, std::size_t replies, const protocol::outgoing_frame& f, bool direct);
    // Whether the job shares this host (then large frames go by shared memory both ways).
    bool local() const { return local_; }

    // Waits until request `id` is complete (or refused, or the connection ends, or `deadline`)
    // and takes its outcome. nullopt: not complete yet, or already taken by another caller.
    std::optional<outcome> wait_take(std::uint64_t id, protocol::clock::time_point deadline);
    // Takes the outcome of a complete request; nullopt when incomplete or already taken.
    std::optional<outcome> take(std::uint64_t id);
    // Whether `id` is still known here (sent, outcome not yet taken).
    bool pending(std::uint64_t id);
    // Ids of requests completed with nobody waiting on them, waiting until there is one, the
    // connection ends or `deadline`.
    std::vector<std::uint64_t> next_completed(protocol::clock::time_point deadline);
    // Waits until `id` has at least `n` replies (or is complete, gone, the connection ends, or
    // `deadline`); returns the replies so far without taking them.
    std::vector<reply_ptr> wait_count(std::uint64_t id, std::size_t n, protocol::clock::time_point deadline);
    // Output streamed for `id` so far, removed from here.
    std::vector<output_chunk> take_output(std::uint64_t id);
    // Once the connection is closed: forgets request `id` (all requests when nullopt) unless it
    // is complete, and returns the ids forgotten. Their outcome will never come; the caller
    // fails them. Complete ones stay for whoever takes them, so no result is failed twice.
    std::vector<std::uint64_t> abandon(std::optional<std::uint64_t> id = std::nullopt);
    // The request `id` is complete: its shared-memory segment (if any) may carry the next one.
    void release(std::uint64_t id);

    bool closed();
    std::string close_reason();
    void close();

private:
    void read_loop();
    void write_loop();
    void send_registered(std::uint64_t id, std::size_t replies, const protocol::outgoing_frame& f, bool direct);
    // Writes the queue (then `last`, if any) with send_mu_ released; `lk` holds send_mu_ on entry
    // and exit. Returns the error, empty if none.
    std::string write_queue(std::unique_lock<std::mutex>& lk, std::optional<protocol::outgoing_frame> last);
    struct request;
    static bool complete(const request& r);
    void on_complete_locked(std::uint64_t id, request& r);

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
    void file_output(protocol::output o);
    // Reply segments whose last Python reference died; handed back with the next send. Shared
    // with the buffers' release hooks, which may run after this connection is gone.
    struct returns {
        std::mutex mu;
        std::vector<std::string> paths;
    };
    std::shared_ptr<returns> returns_ = std::make_shared<returns>();
    void add_returns(std::vector<protocol::outgoing_frame>& frames);
    std::uint32_t client_no_ = 0;
    std::string job_id_;
    std::vector<protocol::engine_info> engines_;

    // Writing: one thread at a time holds the socket (`writing_`); queued frames own their bytes.
    std::mutex send_mu_;
    std::condition_variable writer_cv_;  // the writer thread: work queued, flush now, or stop
    std::condition_variable idle_cv_;    // senders waiting for the socket (writing_ false)
    std::vector<protocol::outgoing_frame> queue_;
    bool writing_ = false;
    bool stop_writer_ = false;
    bool flush_now_ = false;  // someone waits on a result: write what is queued without lingering
    void kick_writer();
    std::string write_error_;

    struct request {
        std::size_t expected = 0;
        std::vector<reply_ptr> replies;
        std::vector<output_chunk> output;
        bool refused = false;
        int takers = 0;             // threads in wait_take for it
        int counters = 0;           // threads in wait_count for it
    };
    std::mutex mu_;
    std::condition_variable cv_;       // wait_take / wait_count
    std::condition_variable done_cv_;  // next_completed
    std::unordered_map<std::uint64_t, request> requests_;
    std::deque<std::uint64_t> completed_;
    bool closed_ = false;
    std::string reason_;
    std::thread reader_;
    std::thread writer_;
    std::mutex close_mu_;
    bool close_done_ = false;
};

}  // namespace pcluster::client
