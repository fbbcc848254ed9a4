#include "output_capture.hpp"

#include <spdlog/spdlog.h>

#include "pcluster/mpi/wire.hpp"
#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/config.hpp"

namespace pcluster::engine {

output_capture* current_capture = nullptr;

output_capture::output_capture(int engine, MPI_Comm reply_comm)
    : engine_(engine),
      comm_(reply_comm),
      stream_after_(config::number(config::knob::stream_after)),
      stream_every_(config::number(config::knob::stream_every)) {
    // Sending from a second thread while the main thread uses MPI needs MPI_THREAD_MULTIPLE.
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    streaming_ = level == MPI_THREAD_MULTIPLE;
    thread_ = std::thread([this] { stream_loop(); });
}

output_capture::~output_capture() {
    {
        std::lock_guard lk(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
}

void output_capture::begin(std::uint64_t id, bool capture) {
    std::lock_guard send(send_mu_);
    std::lock_guard lk(mu_);
    id_ = id;
    capturing_ = capture;
    started_ = clock::now();
    out_[0].clear();
    out_[1].clear();
    dropped_ = 0;
    if (capture && parked_) cv_.notify_one();
}

bool output_capture::write(int stream, std::string_view text) {
    std::lock_guard lk(mu_);
    if (!capturing_) return false;
    auto& b = out_[stream == 2 ? 1 : 0];
    if (b.size() + text.size() > max_buffered) {
        dropped_ += text.size();
        return true;
    }
    b.append(text);
    return true;
}

std::pair<std::string, std::string> output_capture::finish(std::unique_lock<std::mutex>& send) {
    (void)send;
    for (;;) {
        {
            std::lock_guard lk(mu_);
            if (out_[0].size() <= max_chunk && out_[1].size() <= max_chunk) break;
        }
        if (!send_one_locked()) break;
    }
    std::lock_guard lk(mu_);
    capturing_ = false;
    if (dropped_) {
        out_[1] += "\n[pcluster: " + std::to_string(dropped_) + " bytes of output dropped: more than " +
                   std::to_string(max_buffered >> 20) + " MiB were printed between two sends]\n";
        dropped_ = 0;
    }
    return {std::exchange(out_[0], {}), std::exchange(out_[1], {})};
}

void output_capture::stream_loop() {
    std::unique_lock lk(mu_);
    while (!stop_) {
        // Long between requests, it sleeps until one begins (an idle engine's threads stay
        // asleep); while requests keep coming it looks every stream_every_ without being woken.
        if (!capturing_ && clock::now() - started_ > park_after) {
            parked_ = true;
            cv_.wait(lk, [&] { return capturing_ || stop_; });
            parked_ = false;
        }
        cv_.wait_for(lk, stream_every_);
        if (stop_) return;
        if (!streaming_ || !capturing_ || (out_[0].empty() && out_[1].empty()) || clock::now() - started_ < stream_after_)
            continue;
        lk.unlock();
        send_chunk();
        lk.lock();
    }
}

void output_capture::send_chunk() {
    std::lock_guard send(send_mu_);
    if (!send_one_locked()) {
        // The reply still carries what was not sent; stop streaming rather than end the engine.
        spdlog::error("engine {}: streaming output failed; output now comes with replies only", engine_);
        std::lock_guard lk(mu_);
        streaming_ = false;
    }
}

bool output_capture::send_one_locked() {
    protocol::output o;
    {
        std::lock_guard lk(mu_);
        if (!capturing_) return true;  // finish() came first: the reply carries it all
        o.id = id_;
        o.engine = engine_;
        for (int k = 0; k < 2; ++k) {
            auto& b = out_[k];
            std::size_t n = std::min(b.size(), max_chunk);
            // Never cut a UTF-8 character in two: back off to its first byte.
            while (n > 0 && n < b.size() && (static_cast<unsigned char>(b[n]) & 0xC0) == 0x80) --n;
            (k == 0 ? o.stdout_text : o.stderr_text).assign(b, 0, n);
            b.erase(0, n);
        }
    }
    const auto bytes = protocol::encode(o).flatten();
    return MPI_Send(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, 0, mpi_wire::tag_output, comm_) == MPI_SUCCESS;
}

}  // namespace pcluster::engine

