#include "pcluster/protocol/stream.hpp"

#include "pcluster/protocol/codec.hpp"

#include <cerrno>
#include <limits>
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

void frame_reader::reset() {
    body_.reset();
    have_ = 0;
    need_ = prefix_size;
    skipping_ = false;
    head_len_ = 0;
}

void frame_reader::start_body() {
    frame_prefix p;
    std::memcpy(&p, prefix_buf_, prefix_size);
    // A wrong magic or version loses the framing itself: nothing after it can be trusted.
    if (p.magic != frame_magic || p.version != protocol_version) check_prefix(p, max_frame_);
    if (p.body_len > std::numeric_limits<std::uint64_t>::max() - prefix_size)
        throw frame_error("frame length " + std::to_string(p.body_len) + " is not a length");
    try {
        check_prefix(p, max_frame_);
    } catch (const frame_error& e) {
        if (!skip_bad_) throw;
        // Sound framing, a broken limit: read past it without allocating anything.
        skipping_ = true;
        bad_ = bad_frame{p.type, frame_size(p), std::nullopt, std::nullopt, e.what()};
        meta_off_ = prefix_size + 8ull * p.nbufs;
        need_ = frame_size(p);
        return;
    }
    need_ = frame_size(p);
    body_ = std::make_shared<byte_buffer>(need_);
    std::memcpy(body_->data(), prefix_buf_, prefix_size);
}

frame_reader::status frame_reader::finish(received_frame* out) {
    if (skipping_) {
        bad_.id = peek_id(bad_.type, {head_, head_len_});
        bad_.engine = peek_engine(bad_.type, {head_, head_len_});
        reset();
        return status::bad;
    }
    out->bytes = std::move(body_);
    reset();
    try {
        out->view();  // validates the table against the body
    } catch (const frame_error& e) {
        if (!skip_bad_) throw;
        const auto& b = *out->bytes;
        frame_prefix p;
        std::memcpy(&p, b.data(), prefix_size);
        const std::uint64_t meta_at = prefix_size + 8ull * p.nbufs;
        bad_ = bad_frame{p.type, b.size(), std::nullopt, std::nullopt, e.what()};
        if (meta_at < b.size()) {
            const std::span<const char> head{
                b.data() + meta_at, static_cast<std::size_t>(std::min<std::uint64_t>(b.size() - meta_at, p.meta_len))};
            bad_.id = peek_id(p.type, head);
            bad_.engine = peek_engine(p.type, head);
        }
        out->bytes.reset();
        return status::bad;
    }
    return status::frame;
}

std::size_t frame_reader::consume(const char* src, std::size_t n, received_frame* out, std::optional<status>* done) {
    std::size_t used = 0;
    while (used < n) {
        if (have_ < prefix_size) {
            const std::size_t k = std::min<std::size_t>(prefix_size - have_, n - used);
            std::memcpy(prefix_buf_ + have_, src + used, k);
            have_ += k;
            used += k;
            if (have_ == prefix_size) start_body();
        } else if (have_ < need_) {
            const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(need_ - have_, n - used));
            if (skipping_) {
                // Keep the bytes of [meta_off_, meta_off_ + 16) that pass by: the request id.
                const std::uint64_t lo = std::max<std::uint64_t>(have_, meta_off_);
                const std::uint64_t hi = std::min<std::uint64_t>(have_ + k, meta_off_ + sizeof head_);
                if (lo < hi && lo - meta_off_ == head_len_) {
                    std::memcpy(head_ + head_len_, src + used + (lo - have_), static_cast<std::size_t>(hi - lo));
                    head_len_ += static_cast<std::size_t>(hi - lo);
                }
            } else {
                std::memcpy(body_->data() + have_, src + used, k);
            }
            have_ += k;
            used += k;
        }
        if (have_ >= prefix_size && have_ == need_) {
            *done = finish(out);
            return used;
        }
    }
    return used;
}

frame_reader::status frame_reader::feed(std::span<const char>& in, received_frame* out) {
    std::optional<status> done;
    const std::size_t used = consume(in.data(), in.size(), out, &done);
    in = in.subspan(used);
    return done ? *done : status::again;
}

frame_reader::status frame_reader::read(int fd, received_frame* out) {
    // A short recv in this call means the socket had no more: no second recv to learn it.
    bool drained = false;
    for (;;) {
        if (staged_pos_ < staged_len_) {
            std::optional<status> done;
            staged_pos_ += consume(stage_.data() + staged_pos_, staged_len_ - staged_pos_, out, &done);
            if (done) return *done;
        }
        if (drained) return status::again;
        const bool direct = body_ && !skipping_ && need_ - have_ >= max_stage;
        char* dst;
        std::size_t chunk;
        if (direct) {
            dst = body_->data() + have_;
            // Cap single reads so one huge frame does not starve other connections of the loop.
            chunk = static_cast<std::size_t>(std::min<std::uint64_t>(need_ - have_, 64u << 20));
        } else {
            // Sized to the frame limit: a connection still logging in holds a few KiB at most.
            if (stage_.size() != stage_size()) {
                stage_.clear();
                stage_.shrink_to_fit();
                stage_.resize(stage_size());
            }
            dst = stage_.data();
            chunk = stage_.size();
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
            if (have_ == need_) return finish(out);
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
        queued_ -= left;
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
