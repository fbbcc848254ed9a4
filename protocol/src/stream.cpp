#include "pcluster/protocol/stream.hpp"

#include <cerrno>
#include <cstring>
#include <system_error>

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

namespace pcluster::protocol {

namespace {
[[noreturn]] void throw_errno(const char* what) {
    throw std::system_error(errno, std::generic_category(), what);
}
constexpr int max_iov = 64;
}  // namespace

void frame_reader::finish(received_frame* out) {
    out->bytes = std::move(body_);
    out->view();  // validates the table against the body
    body_.reset();
    have_ = 0;
    need_ = prefix_size;
}

bool frame_reader::consume_staged(received_frame* out) {
    while (staged_pos_ < staged_len_) {
        const std::size_t avail = staged_len_ - staged_pos_;
        const char* src = stage_.data() + staged_pos_;
        if (have_ < prefix_size) {
            const std::size_t n = std::min<std::size_t>(prefix_size - have_, avail);
            std::memcpy(prefix_buf_ + have_, src, n);
            have_ += n;
            staged_pos_ += n;
            if (have_ == prefix_size) {
                frame_prefix p;
                std::memcpy(&p, prefix_buf_, prefix_size);
                check_prefix(p, max_frame_);
                need_ = frame_size(p);
                body_ = std::make_shared<byte_buffer>(need_);
                std::memcpy(body_->data(), prefix_buf_, prefix_size);
            }
        } else {
            const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(need_ - have_, avail));
            std::memcpy(body_->data() + have_, src, n);
            have_ += n;
            staged_pos_ += n;
        }
        if (body_ && have_ == need_) {
            finish(out);
            return true;
        }
    }
    return false;
}

frame_reader::status frame_reader::read(int fd, received_frame* out) {
    // A short recv in this call means the socket had no more: no second recv to learn it.
    bool drained = false;
    for (;;) {
        if (staged_pos_ < staged_len_ && consume_staged(out)) return status::frame;
        if (drained) return status::again;
        const bool direct = body_ && need_ - have_ >= stage_size;
        char* dst;
        std::size_t chunk;
        if (direct) {
            dst = body_->data() + have_;
            // Cap single reads so one huge frame does not starve other connections of the loop.
            chunk = static_cast<std::size_t>(std::min<std::uint64_t>(need_ - have_, 64u << 20));
        } else {
            if (stage_.empty()) stage_.resize(stage_size);
            dst = stage_.data();
            chunk = stage_size;
        }
        ssize_t n = ::recv(fd, dst, chunk, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return status::again;
            throw_errno("recv");
        }
        if (n == 0) {
            if (have_ == 0) return status::closed;
            throw std::system_error(ECONNRESET, std::generic_category(),
                                    "peer closed the connection in the middle of a frame");
        }
        drained = static_cast<std::size_t>(n) < chunk;
        if (direct) {
            have_ += static_cast<std::uint64_t>(n);
            if (have_ == need_) {
                finish(out);
                return status::frame;
            }
        } else {
            staged_pos_ = 0;
            staged_len_ = static_cast<std::size_t>(n);
        }
    }
}

void frame_writer::push_raw(std::shared_ptr<byte_buffer> bytes) {
    outgoing_frame f;
    f.bufs.emplace_back(bytes->data(), bytes->size());
    f.keepalive = std::move(bytes);
    push(std::move(f));
}

bool frame_writer::flush(int fd) {
    while (!queue_.empty()) {
        // Gather iovecs from as many queued frames as fit, skipping what is already written.
        iovec iov[max_iov];
        int cnt = 0;
        for (auto it = queue_.begin(); it != queue_.end() && cnt < max_iov; ++it) {
            std::uint64_t skip = it->done;
            auto add = [&](const char* p, std::size_t len) {
                if (cnt >= max_iov) return;
                if (skip >= len) { skip -= len; return; }
                iov[cnt].iov_base = const_cast<char*>(p + skip);
                iov[cnt].iov_len = len - skip;
                skip = 0;
                ++cnt;
            };
            add(it->f.head.data(), it->f.head.size());
            for (const auto& b : it->f.bufs) add(b.data(), b.size());
        }
        msghdr mh{};
        mh.msg_iov = iov;
        mh.msg_iovlen = cnt;
        ssize_t n = ::sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
            throw_errno("sendmsg");
        }
        std::uint64_t left = static_cast<std::uint64_t>(n);
        while (left > 0 && !queue_.empty()) {
            auto& front = queue_.front();
            const std::uint64_t rest = front.f.size() - front.done;
            if (left >= rest) {
                left -= rest;
                queue_.pop_front();
            } else {
                front.done += left;
                left = 0;
            }
        }
    }
    return true;
}

namespace {
void wait_fd(int fd, short events, std::optional<clock::time_point> deadline) {
    for (;;) {
        int ms = -1;
        if (deadline) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - clock::now()).count();
            if (left <= 0) throw timeout_error("timed out waiting for the peer");
            ms = static_cast<int>(std::min<long long>(left, 1000));
        }
        pollfd p{fd, events, 0};
        int r = ::poll(&p, 1, ms);
        if (r < 0) {
            if (errno == EINTR) continue;
            throw_errno("poll");
        }
        if (r > 0) return;
    }
}

void read_exact(int fd, char* dst, std::uint64_t len, std::optional<clock::time_point> deadline) {
    while (len > 0) {
        wait_fd(fd, POLLIN, deadline);
        ssize_t n = ::recv(fd, dst, static_cast<std::size_t>(std::min<std::uint64_t>(len, 1u << 30)), 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            throw_errno("recv");
        }
        if (n == 0)
            throw std::system_error(ECONNRESET, std::generic_category(), "connection closed by peer");
        dst += n;
        len -= static_cast<std::uint64_t>(n);
    }
}
}  // namespace

void write_frame(int fd, const outgoing_frame& f) {
    frame_writer w;
    outgoing_frame copy{f.head, f.bufs, nullptr};
    w.push(std::move(copy));
    while (!w.flush(fd)) wait_fd(fd, POLLOUT, std::nullopt);
}

received_frame read_frame(int fd, std::optional<clock::time_point> deadline, std::uint64_t max_frame) {
    char pre[prefix_size];
    read_exact(fd, pre, prefix_size, deadline);
    frame_prefix p;
    std::memcpy(&p, pre, prefix_size);
    check_prefix(p, max_frame);
    auto bytes = std::make_shared<byte_buffer>(frame_size(p));
    std::memcpy(bytes->data(), pre, prefix_size);
    read_exact(fd, bytes->data() + prefix_size, p.body_len, deadline);
    received_frame rf{std::move(bytes)};
    rf.view();
    return rf;
}

}  // namespace pcluster::protocol
