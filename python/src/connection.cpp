#include "connection.hpp"

#include <cerrno>
#include <cstring>
#include <optional>
#include <system_error>

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pcluster/protocol/auth.hpp"
#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/shm.hpp"

namespace pcluster::client {

namespace proto = pcluster::protocol;

namespace {
int connect_to(const std::string& host, int port, proto::clock::time_point deadline) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
        throw std::system_error(EHOSTUNREACH, std::generic_category(), "cannot resolve " + host + ": " + gai_strerror(rc));
    std::string last = "no address";
    for (addrinfo* a = res; a; a = a->ai_next) {
        int fd = ::socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) continue;
        int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - proto::clock::now()).count();
            pollfd p{fd, POLLOUT, 0};
            if (::poll(&p, 1, static_cast<int>(std::max<long long>(left, 0))) == 1) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                rc = err ? -1 : 0;
                errno = err ? err : ETIMEDOUT;
            } else {
                rc = -1;
                errno = ETIMEDOUT;
            }
        }
        if (rc == 0) {
            freeaddrinfo(res);
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            return fd;
        }
        last = std::strerror(errno);
        ::close(fd);
    }
    freeaddrinfo(res);
    throw std::system_error(ECONNREFUSED, std::generic_category(),
                            "cannot connect to " + host + ":" + std::to_string(port) + " (" + last + ")");
}
}  // namespace

connection::connection(const std::string& host, int port, const std::string& key_hex, double timeout_s) {
    const auto deadline = proto::clock::now() + std::chrono::milliseconds(static_cast<long long>(timeout_s * 1000));
    const proto::digest key = proto::from_hex(key_hex);
    fd_ = connect_to(host, port, deadline);
    try {
        auto ch = proto::decode<proto::challenge>(proto::read_frame(fd_, deadline, 1 << 16).view());
        job_id_ = ch.job_id;
        proto::auth_request req;
        req.mac = proto::auth_mac(key, proto::client_label, ch.nonce);
        req.client_nonce = proto::random_bytes32();
        shm_owner_ = proto::client_shm_owner();
        // Offer a probe file: if the bridge can read it, large frames may go by /dev/shm.
        std::optional<proto::shm_out> probe;
        struct unlink_probe {
            std::optional<proto::shm_out>& p;
            ~unlink_probe() {
                if (p) ::unlink(p->path.c_str());
            }
        } guard{probe};
        try {
            probe = proto::create_shm(shm_owner_, 32);
            req.shm_token = proto::random_bytes32();
            std::memcpy(probe->map->data(), req.shm_token.data(), 32);
            probe->map.reset();
            req.shm_probe = probe->path;
        } catch (const std::exception&) {
        }
        proto::write_frame(fd_, proto::encode(req));
        auto rep = proto::decode<proto::auth_reply>(proto::read_frame(fd_, deadline, 1 << 24).view());
        if (!rep.ok) throw auth_error(rep.message);
        if (!proto::macs_equal(rep.mac, proto::auth_mac(key, proto::bridge_label, req.client_nonce)))
            throw auth_error("the job could not prove it holds the key");
        client_no_ = rep.client_no;
        engines_ = std::move(rep.engines);
        local_ = rep.shm_ok;
        if (local_) proto::remove_dead_client_segments();
    } catch (...) {
        ::close(fd_);
        fd_ = -1;
        throw;
    }
    reader_ = std::thread([this] { read_loop(); });
}

connection::~connection() { close(); }

void connection::send(std::uint64_t id, std::size_t replies, const proto::outgoing_frame& f) {
    {
        std::lock_guard lk2(mu_);
        if (closed_) throw std::system_error(ENOTCONN, std::generic_category(), reason_);
    }
    const std::uint64_t size = f.size();
    if (local_ && size >= proto::shm_threshold) {
        // One copy into shared memory, outside the send lock, instead of two socket hops.
        std::optional<segment> seg;
        try {
            seg = get_segment(size);
        } catch (const std::exception&) {
            // /dev/shm full or missing: the socket path still works.
        }
        if (seg) {
            char* p = seg->map->data();
            std::memcpy(p, f.head.data(), f.head.size());
            p += f.head.size();
            for (const auto& b : f.bufs) {
                std::memcpy(p, b.data(), b.size());
                p += b.size();
            }
            {
                std::lock_guard lk(pool_mu_);
                busy_segments_[id] = busy{*seg, replies};
            }
            std::lock_guard lk(send_mu_);
            send_returns_locked();
            proto::write_frame(fd_, proto::encode(proto::shm_frame{id, seg->path, size, true}));
            return;
        }
    }
    std::lock_guard lk(send_mu_);
    send_returns_locked();
    proto::write_frame(fd_, f);
}

void connection::send_returns_locked() {
    proto::shm_return ret;
    {
        std::lock_guard lk(returns_->mu);
        ret.paths.swap(returns_->paths);
    }
    if (!ret.paths.empty()) proto::write_frame(fd_, proto::encode(ret));
}

void connection::read_loop() {
    std::string why;
    try {
        for (;;) {
            auto f = proto::read_frame(fd_, std::nullopt);
            auto v = f.view();
            if (proto::is(v, proto::message_type::job_ended)) {
                why = "the job ended: " + proto::decode<proto::job_ended>(v).reason;
                break;
            }
            if (proto::is(v, proto::message_type::shm_frame)) {
                auto ref = proto::decode<proto::shm_frame>(v);
                try {
                    f.bytes = proto::take_shm(ref);
                } catch (const std::exception& e) {
                    // That reply is lost to us; the request fails, the connection lives on.
                    proto::engine_reply err;
                    err.id = ref.id;
                    err.engine = -1;
                    err.status = proto::reply_status::error;
                    err.ename = "SharedMemoryError";
                    err.evalue = std::string("cannot map the reply in shared memory: ") + e.what();
                    file_reply(std::make_shared<reply>(reply{err, proto::received_frame{}}));
                    continue;
                }
                if (ref.keep) {
                    // The job lends this segment: give it back once nothing here uses it.
                    std::weak_ptr<returns> q = returns_;
                    f.bytes->on_release([q, path = ref.path] {
                        if (auto r = q.lock()) {
                            std::lock_guard lk(r->mu);
                            r->paths.push_back(path);
                        }
                    });
                }
                v = f.view();
            }
            file_reply(std::make_shared<reply>(reply{proto::decode<proto::engine_reply>(v), std::move(f)}));
        }
    } catch (const std::exception& e) {
        why = std::string("connection to the job lost: ") + e.what();
    }
    std::lock_guard lk(mu_);
    if (!closed_) {
        closed_ = true;
        reason_ = why;
    }
    cv_.notify_all();
}

void connection::file_reply(reply_ptr r) {
    const std::uint64_t id = r->meta.id;
    const bool refused = r->meta.engine < 0;
    {
        // Every target has replied (or the request was refused): no engine reads the request's
        // segment any more, so it may carry the next one.
        std::lock_guard lk(pool_mu_);
        if (auto it = busy_segments_.find(id); it != busy_segments_.end() && (refused || --it->second.remaining == 0)) {
            free_segments_.push_back(std::move(it->second.seg));
            busy_segments_.erase(it);
            trim_pool_locked();
        }
    }
    std::lock_guard lk(mu_);
    if (refused) refused_[id] = true;
    replies_[id].push_back(std::move(r));
    if (auto w = waiting_.find(id); w != waiting_.end() && complete_locked(id, w->second)) cv_.notify_all();
}

bool connection::complete_locked(std::uint64_t id, std::size_t n) {
    auto it = replies_.find(id);
    return (it != replies_.end() && it->second.size() >= n) || refused_.count(id);
}

bool connection::wait(std::uint64_t id, std::size_t n, proto::clock::time_point deadline) {
    std::unique_lock lk(mu_);
    if (complete_locked(id, n)) return true;
    waiting_[id] = n;
    cv_.wait_until(lk, deadline, [&] { return complete_locked(id, n) || closed_; });
    waiting_.erase(id);
    return complete_locked(id, n);
}

std::size_t connection::count(std::uint64_t id) {
    std::lock_guard lk(mu_);
    auto it = replies_.find(id);
    return it == replies_.end() ? 0 : it->second.size();
}

std::vector<reply_ptr> connection::take(std::uint64_t id) {
    std::lock_guard lk(mu_);
    std::vector<reply_ptr> out;
    if (auto it = replies_.find(id); it != replies_.end()) {
        out = std::move(it->second);
        replies_.erase(it);
    }
    refused_.erase(id);
    return out;
}

connection::segment connection::get_segment(std::uint64_t size) {
    {
        std::lock_guard lk(pool_mu_);
        // Smallest free segment that fits.
        auto best = free_segments_.end();
        for (auto it = free_segments_.begin(); it != free_segments_.end(); ++it)
            if (it->map->size() >= size && (best == free_segments_.end() || it->map->size() < best->map->size())) best = it;
        if (best != free_segments_.end()) {
            segment s = std::move(*best);
            free_segments_.erase(best);
            return s;
        }
    }
    auto out = proto::create_shm(shm_owner_, size);
    return segment{out.path, std::move(out.map)};
}

void connection::release(std::uint64_t id) {
    std::lock_guard lk(pool_mu_);
    auto it = busy_segments_.find(id);
    if (it == busy_segments_.end()) return;
    free_segments_.push_back(std::move(it->second.seg));
    busy_segments_.erase(it);
    trim_pool_locked();
}

void connection::trim_pool_locked() {
    // Bound what the pool holds: at most 4 segments; the largest go first.
    while (free_segments_.size() > 4) {
        auto big = std::max_element(free_segments_.begin(), free_segments_.end(),
                                    [](auto& a, auto& b) { return a.map->size() < b.map->size(); });
        ::unlink(big->path.c_str());
        free_segments_.erase(big);
    }
}

bool connection::closed() {
    std::lock_guard lk(mu_);
    return closed_;
}

std::string connection::close_reason() {
    std::lock_guard lk(mu_);
    return reason_;
}

void connection::close() {
    {
        std::lock_guard lk(mu_);
        if (!closed_) {
            closed_ = true;
            reason_ = "the client closed the connection";
        }
    }
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
    if (reader_.joinable()) reader_.join();
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    {
        std::lock_guard lk(pool_mu_);
        free_segments_.clear();
        busy_segments_.clear();
    }
    if (!shm_owner_.empty()) proto::remove_shm_leftovers(shm_owner_);
    cv_.notify_all();
}

}  // namespace pcluster::client
