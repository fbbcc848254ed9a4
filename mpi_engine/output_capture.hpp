// What the running request prints, when its client asked for it (route_flags::capture_output).
// Python's sys.stdout/sys.stderr write here (pcluster._kernel installs them). Once a request has
// run for PCLUSTER_STREAM_AFTER, a thread of its own sends what accumulated every
// PCLUSTER_STREAM_EVERY as protocol::output messages, so a client sees a long cell's prints
// while it runs, even while the cell sits in C code holding the GIL. finish() hands the rest to
// the reply.
//
// Ordering: a chunk is taken from the buffer and sent under send_mu_, and finish() takes
// send_mu_ first, so every output message of a request leaves before its reply.
#pragma once

#include <mpi.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

namespace pcluster::engine {

class output_capture {
public:
    output_capture(int engine, MPI_Comm reply_comm);
    ~output_capture();

    void begin(std::uint64_t id, bool capture);
    // False when no request captures: the caller writes to the real stream instead.
    bool write(int stream, std::string_view text);
    // Stops capturing; returns what was not streamed (stdout, stderr) - at most max_chunk of each:
    // more goes out first as output messages, so a reply's header stays small whatever was
    // printed (a reply's meta is limited to 16 MiB). `send` must hold send_mutex().
    std::pair<std::string, std::string> finish(std::unique_lock<std::mutex>& send);
    std::mutex& send_mutex() { return send_mu_; }

private:
    using clock = std::chrono::steady_clock;
    // More than this printed between two sends is dropped, with a note saying how much.
    static constexpr std::size_t max_buffered = std::size_t{64} << 20;
    static constexpr std::size_t max_chunk = std::size_t{1} << 20;

    void stream_loop();
    void send_chunk();
    // Takes up to max_chunk of each stream and sends it as one output message; mu_ must not be
    // held, send_mu_ must be. False when the send failed (streaming then stops).
    bool send_one_locked();

    const int engine_;
    const MPI_Comm comm_;
    std::chrono::duration<double> stream_after_, stream_every_;
    std::mutex send_mu_;  // held while a chunk is taken and sent; see the class comment
    std::mutex mu_;
    std::condition_variable cv_;
    std::uint64_t id_ = 0;
    bool capturing_ = false;
    bool streaming_ = true;
    bool stop_ = false;
    // The stream thread parks (waits without a timeout) once no request began for park_after;
    // only then does begin() wake it. Waking it at every request cost a context switch per
    // request: +40% on small all-engine round trips with 4 engines on 2 cores (bench A/B).
    bool parked_ = false;
    static constexpr std::chrono::seconds park_after{2};
    clock::time_point started_{};
    std::string out_[2];
    std::size_t dropped_ = 0;
    std::thread thread_;
};

// The capture of this process's engine, for the embedded module (null outside an engine loop).
extern output_capture* current_capture;

}  // namespace pcluster::engine
