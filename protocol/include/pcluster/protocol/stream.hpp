// Frames over a stream socket: a non-blocking reader and writer for the event loops of the
// bridge and controller, and blocking helpers with deadlines for clients and handshakes.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "pcluster/protocol/frame.hpp"

namespace pcluster::protocol {

// A complete received frame; the storage is shared so views into it can outlive the reader.
struct received_frame {
    std::shared_ptr<byte_buffer> bytes;
    frame_view view() const { return frame_view(bytes->data(), bytes->size()); }
};

// A frame the reader read past without keeping (see frame_reader::set_skip_bad): what it
// claimed to be, and the request it belongs to when its type carries an id.
struct bad_frame {
    std::uint16_t type = 0;
    std::uint64_t size = 0;  // the whole frame, as its prefix claims
    std::optional<std::uint64_t> id;
    std::optional<std::int32_t> engine;  // an engine_reply's or output's engine, when readable
    std::string error;
};

// Incrementally assembles frames from a non-blocking fd. The prefix is checked as soon as it
// arrives, so an oversize or garbage frame is refused before its body is allocated; memory held
// is the staging buffer (at most 64 KiB, never more than the frame limit) plus the frame being
// received.
class frame_reader {
public:
    explicit frame_reader(std::uint64_t max_frame = default_max_frame) : max_frame_(max_frame) {}

    enum class status { again, frame, closed, bad };
    // Reads what is available. `frame`: *out holds a frame (call again, more may be buffered).
    // `again`: nothing complete yet. `closed`: orderly EOF between frames. `bad` (only with
    // set_skip_bad(true)): a frame that cannot be taken - over the size limits, or a table that
    // does not add up - was read past without being kept; last_bad() says what it was, and the
    // stream goes on with the next frame.
    // Throws frame_error for a bad frame (without skip_bad) and for a prefix that loses the
    // framing (bad magic, another protocol version: version_error), and std::system_error for a
    // socket error or an EOF in the middle of a frame. After a throw the reader is still
    // consistent, but the stream is best closed.
    status read(int fd, received_frame* out);
    // The same over bytes in memory: consumes from the front of `in` and returns `again` once it
    // is used up without completing a frame (tests and fuzzing).
    status feed(std::span<const char>& in, received_frame* out);
    // Whether bytes already read from the fd are waiting here: an event loop that stops calling
    // read() before `again` must come back without waiting for the fd to be readable.
    bool buffered() const { return staged_pos_ < staged_len_; }
    // Whether a frame is partly received.
    bool mid_frame() const { return have_ > 0; }
    void set_max_frame(std::uint64_t n) { max_frame_ = n; }
    // Frames whose prefix is sound but which break a limit are skipped (status bad) instead of
    // ending the stream: one request fails, not the connection.
    void set_skip_bad(bool on) { skip_bad_ = on; }
    const bad_frame& last_bad() const { return bad_; }
    // Bytes of memory this reader holds now (staging buffer and the frame being received).
    std::size_t held_bytes() const { return stage_.capacity() + (body_ ? body_->size() : 0); }

private:
    static constexpr std::size_t max_stage = 64 << 10;
    std::size_t stage_size() const {
        return static_cast<std::size_t>(std::min<std::uint64_t>(max_stage, std::max<std::uint64_t>(max_frame_, 256)));
    }
    // Takes bytes [src, src + n) until a frame completes (*done set to frame or bad); returns
    // how many it used.
    std::size_t consume(const char* src, std::size_t n, received_frame* out, std::optional<status>* done);
    void start_body();
    status finish(received_frame* out);
    void reset();

    std::uint64_t max_frame_;
    bool skip_bad_ = false;
    char prefix_buf_[prefix_size] = {};
    std::shared_ptr<byte_buffer> body_;
    std::uint64_t have_ = 0;
    std::uint64_t need_ = prefix_size;
    // Skipping a bad frame: its bytes are counted, not kept, except the first ones of its meta
    // (the request id).
    bool skipping_ = false;
    std::uint64_t meta_off_ = 0;
    char head_[16] = {};
    std::size_t head_len_ = 0;
    bad_frame bad_;
    std::vector<char> stage_;
    std::size_t staged_pos_ = 0, staged_len_ = 0;
};

// Reads the frames available on `fd` and hands each to on_frame(received_frame&&), which returns
// false to stop (e.g. it closed the connection). At most `budget` frames unless more are already
// buffered here (a loop serving several peers must not stay with one); a blocking fd may pass a
// budget as large as it likes. A frame the reader skipped (set_skip_bad) goes to
// on_bad(const bad_frame&), which returns false to stop as well; without on_bad it is a
// frame_error. Returns how reading ended; throws as frame_reader::read does.
enum class drain_end { again, closed, stopped };
template <class F, class B>
drain_end drain_frames(frame_reader& reader, int fd, int budget, F&& on_frame, B&& on_bad) {
    for (int i = 0; i < budget || reader.buffered(); ++i) {
        received_frame f;
        const auto st = reader.read(fd, &f);
        if (st == frame_reader::status::again) return drain_end::again;
        if (st == frame_reader::status::closed) return drain_end::closed;
        if (st == frame_reader::status::bad) {
            if (!on_bad(reader.last_bad())) return drain_end::stopped;
            continue;
        }
        if (!on_frame(std::move(f))) return drain_end::stopped;
    }
    return drain_end::again;
}
template <class F>
drain_end drain_frames(frame_reader& reader, int fd, int budget, F&& on_frame) {
    return drain_frames(reader, fd, budget, std::forward<F>(on_frame),
                        [](const bad_frame& b) -> bool { throw frame_error(b.error); });
}

// Queue of outgoing frames written with writev as the fd accepts them.
class frame_writer {
public:
    void push(outgoing_frame f) {
        queued_ += f.size();
        queue_.push_back({std::move(f), 0});
    }
    void push_raw(std::shared_ptr<byte_buffer> bytes);
    // Writes as much as the fd takes; returns true when the queue is empty. Throws system_error.
    bool flush(int fd);
    bool empty() const { return queue_.empty(); }
    // Bytes queued and not yet written.
    std::uint64_t queued_bytes() const { return queued_; }

private:
    struct item {
        outgoing_frame f;
        std::uint64_t done;
    };
    std::deque<item> queue_;
    std::uint64_t queued_ = 0;
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
