// The controller's end of the Unix socket to the bridge: request frames in, replies out.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "pcluster/protocol/frame.hpp"
#include "pcluster/protocol/stream.hpp"

namespace pcluster::controller {

class bridge_link {
public:
    // fd: the controller's end, non-blocking; -1 when the bridge did not start.
    explicit bridge_link(int fd) : fd_(fd) {}
    ~bridge_link();
    bridge_link(const bridge_link&) = delete;
    bridge_link& operator=(const bridge_link&) = delete;

    bool open() const { return fd_ >= 0; }
    int fd() const { return fd_; }
    bool has_output() const { return !writer_.empty(); }
    // Replies queued for the bridge and not yet written to its socket.
    std::uint64_t queued_bytes() const { return writer_.queued_bytes(); }

    // Reads the frames that are there and hands each to on_frame; whether any came. When the
    // bridge closes its end or fails, the link closes and gone(reason) is called.
    bool read(const std::function<void(protocol::received_frame)>& on_frame);
    // Queue a frame for the bridge (dropped when the link is closed).
    void send(protocol::outgoing_frame f);
    void send_raw(std::shared_ptr<protocol::byte_buffer> bytes);
    // Writes what the socket takes now.
    void flush();
    // The job is over: tells the bridge why, writes what is left (blocking) and closes, which
    // is what tells the bridge to end.
    void finish(const std::string& reason);

    std::function<void(const std::string&)> gone;

private:
    void close_after(const std::string& why);
    int fd_;
    protocol::frame_reader reader_;
    protocol::frame_writer writer_;
};

}  // namespace pcluster::controller
