#include "bridge_link.hpp"

#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <unistd.h>

#include "pcluster/protocol/codec.hpp"

namespace pcluster::controller {

namespace proto = pcluster::protocol;

bridge_link::~bridge_link() {
    if (fd_ >= 0) ::close(fd_);
}

bool bridge_link::read(const std::function<void(proto::received_frame)>& on_frame) {
    if (fd_ < 0) return false;
    bool any = false;
    try {
        const auto end = proto::drain_frames(reader_, fd_, 64, [&](proto::received_frame f) {
            any = true;
            on_frame(std::move(f));
            return fd_ >= 0;
        });
        if (end == proto::drain_end::closed) {
            close_after("the bridge closed its connection");
            return true;
        }
    } catch (const std::exception& e) {
        close_after(std::string("the bridge connection failed: ") + e.what());
        return true;
    }
    return any;
}

void bridge_link::send(proto::outgoing_frame f) {
    if (fd_ >= 0) writer_.push(std::move(f));
}

void bridge_link::send_raw(std::shared_ptr<proto::byte_buffer> bytes) {
    if (fd_ >= 0) writer_.push_raw(std::move(bytes));
}

void bridge_link::flush() {
    if (fd_ < 0 || writer_.empty()) return;
    try {
        writer_.flush(fd_);
    } catch (const std::exception& e) {
        close_after(std::string("writing to the bridge failed: ") + e.what());
    }
}

void bridge_link::finish(const std::string& reason) {
    if (fd_ < 0) return;
    writer_.push(proto::encode(proto::job_ended{reason}));
    fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) & ~O_NONBLOCK);
    try {
        while (!writer_.flush(fd_)) {
        }
    } catch (const std::exception& e) {
        spdlog::warn("could not pass the last replies to the bridge: {}", e.what());
    }
    ::close(fd_);
    fd_ = -1;
}

void bridge_link::close_after(const std::string& why) {
    spdlog::warn("{}; ending the job", why);
    ::close(fd_);
    fd_ = -1;
    writer_ = proto::frame_writer{};
    if (gone) gone(why);
}

}  // namespace pcluster::controller
