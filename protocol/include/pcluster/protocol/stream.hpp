// Frames over a stream socket: a non-blocking reader and writer for the event loops of the
// bridge and controller, and blocking helpers with deadlines for clients and handshakes.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <vector>

#include "pcluster/protocol/frame.hpp"

namespace pcluster::protocol {

// A complete received frame; the storage is shared so views into it can outlive the reader.
struct received_frame {
    std::shared_ptr<byte_buffer> bytes;
    frame_view view() const { return frame_view(bytes->data(), bytes->size()); }
};

// Incrementally assembles frames from a non-blocking fd. The prefix is checked as soon as it
// arrives, so an oversize or garbage frame is refused before its body is allocated.
class frame_reader {
public:
    explicit frame_reader(std::uint64_t max_frame = default_max_frame) : max_frame_(max_frame) {}

    enum class status { again, frame, closed };
    // Reads what is available. `frame`: *out holds a frame (call again, more may be buffered).
    // `again`: nothing complete yet. `closed`: orderly EOF between frames.
    // Throws frame_error for a bad frame and std::system_error for a socket error or an EOF
    // in the middle of a frame.
    status read(int fd, received_frame* out);
    // Whether bytes already read from the fd are waiting here: an event loop that stops calling
    // read() before `again` must come back without waiting for the fd to be readable.
    bool buffered() const { return staged_pos_ < staged_len_; }
    void set_max_frame(std::uint64_t n) { max_frame_ = n; }

private:
    // Small frames are read many per recv through a staging buffer; a large body is received
    // straight into its own storage.
    static constexpr std::size_t stage_size = 64 << 10;
    bool consume_staged(received_frame* out);
    void finish(received_frame* out);

    std::uint64_t max_frame_;
    char prefix_buf_[prefix_size] = {};
    std::shared_ptr<byte_buffer> body_;
    std::uint64_t have_ = 0;
    std::uint64_t need_ = prefix_size;
    std::vector<char> stage_;
    std::size_t staged_pos_ = 0, staged_len_ = 0;
};

// Reads the frames available on `fd` and hands each to on_frame(received_frame&&), which returns
// false to stop (e.g. it closed the connection). At most `budget` frames unless more are already
// buffered here (a loop serving several peers must not stay with one); a blocking fd may pass a
// budget as large as it likes. Returns how reading ended; throws as frame_reader::read does.
enum class drain_end { again, closed, stopped };
template <class F>
drain_end drain_frames(frame_reader& reader, int fd, int budget, F&& on_frame) {
    for (int i = 0; i < budget || reader.buffered(); ++i) {
        received_frame f;
        const auto st = reader.read(fd, &f);
        if (st == frame_reader::status::again) return drain_end::again;
        if (st == frame_reader::status::closed) return drain_end::closed;
        if (!on_frame(std::move(f))) return drain_end::stopped;
    }
    return drain_end::again;
}

// Queue of outgoing frames written with writev as the fd accepts them.
class frame_writer {
public:
    void push(outgoing_frame f) { queue_.push_back({std::move(f), 0}); }
    void push_raw(std::shared_ptr<byte_buffer> bytes);
    // Writes as much as the fd takes; returns true when the queue is empty. Throws system_error.
    bool flush(int fd);
    bool empty() const { return queue_.empty(); }

private:
    struct item {
        outgoing_frame f;
        std::uint64_t done;
    };
    std::deque<item> queue_;
};

using clock = std::chrono::steady_clock;

// Blocking helpers for a blocking fd, bounded by `deadline` (poll-based). Throw timeout_error on
// time-out and std::system_error on failure or EOF.
struct timeout_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
void write_frame(int fd, const outgoing_frame& f);
received_frame read_frame(int fd, std::optional<clock::time_point> deadline,
                          std::uint64_t max_frame = default_max_frame);

}  // namespace pcluster::protocol
