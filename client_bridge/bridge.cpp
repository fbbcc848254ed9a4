#include "bridge.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <system_error>
#include <vector>

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/shm.hpp"

namespace pcluster::bridge {

namespace proto = pcluster::protocol;

namespace {
volatile std::sig_atomic_t terminate_requested = 0;
}  // namespace

void request_termination() { terminate_requested = 1; }

bridge::bridge(int controller_fd, proto::job_info info, proto::digest key, int listen_fd, std::uint64_t max_frame)
    : ctl_fd_(controller_fd), info_(std::move(info)), key_(key), listen_fd_(listen_fd), max_frame_(max_frame) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    add(listen_fd_, EPOLLIN);
    add(ctl_fd_, EPOLLIN);
}

std::string bridge::run() {
    epoll_event evs[64];
    while (!terminate_requested) {
        const int n = epoll_wait(ep_, evs, 64, listen_paused_until_ ? 20 : 500);
        if (n < 0 && errno != EINTR) throw std::system_error(errno, std::generic_category(), "epoll_wait");
        for (int i = 0; i < n; ++i) {
            const int fd = evs[i].data.fd;
            if (fd == listen_fd_) {
                accept_clients();
            } else if (fd == ctl_fd_) {
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                    if (!read_controller()) return end_reason_;
                }
                if (evs[i].events & EPOLLOUT) flush_controller();
            } else if (auto it = clients_.find(fd); it != clients_.end()) {
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) read_client(it->second);
                if (clients_.count(fd) && (evs[i].events & EPOLLOUT)) flush_client(clients_.at(fd));
            }
        }
        expire_logins();
        if (listen_paused_until_ && proto::clock::now() > *listen_paused_until_) {
            add(listen_fd_, EPOLLIN);
            listen_paused_until_.reset();
        }
    }
    return proto::ended_by_signal(SIGTERM);
}

void bridge::farewell(const std::string& reason) {
    const proto::job_ended je{reason};
    for (auto& [fd, c] : clients_)
        if (c.no) c.writer.push(proto::encode(je));
    const auto deadline = proto::clock::now() + std::chrono::seconds(2);
    for (auto& [fd, c] : clients_) {
        try {
            while (!c.writer.flush(fd) && proto::clock::now() < deadline) usleep(1000);
        } catch (...) {
        }
        for (const auto& p : c.shm_paths) ::unlink(p.c_str());
        ::close(fd);
    }
    clients_.clear();
    fd_of_client_.clear();
}

void bridge::add(int fd, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
}

void bridge::mod(int fd, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    epoll_ctl(ep_, EPOLL_CTL_MOD, fd, &ev);
}

void bridge::accept_clients() {
    for (;;) {
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                // Out of descriptors: the listening socket stays readable, so stop watching it
                // for a moment rather than spin.
                spdlog::warn("cannot accept more clients ({}); pausing for 100 ms", std::strerror(errno));
                epoll_ctl(ep_, EPOLL_CTL_DEL, listen_fd_, nullptr);
                listen_paused_until_ = proto::clock::now() + std::chrono::milliseconds(100);
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char host[NI_MAXHOST] = "?", serv[NI_MAXSERV] = "?";
        getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV);
        client c;
        c.fd = fd;
        c.peer = std::string(host) + ":" + serv;
        c.nonce = proto::random_bytes32();
        c.login_deadline = proto::clock::now() + login_timeout;
        c.writer.push(proto::encode(proto::challenge{c.nonce, info_.job_id}));
        spdlog::debug("client {} connected", c.peer);
        auto [it, _] = clients_.emplace(fd, std::move(c));
        add(fd, EPOLLIN);
        flush_client(it->second);
    }
}

void bridge::drop(client& c, const std::string& why) {
    if (!why.empty()) spdlog::warn("closing connection from {}: {}", c.peer, why);
    const int fd = c.fd;
    for (const auto& p : c.shm_paths) ::unlink(p.c_str());
    if (!c.lent_paths.empty()) {
        // The controller must forget them: the client's process may still map them.
        ctl_writer_.push(proto::encode(proto::shm_return{{c.lent_paths.begin(), c.lent_paths.end()}, false}));
    }
    if (c.no) {
        // Its tasks not yet sent to an engine would only produce replies nobody reads.
        proto::control_request forget;
        forget.r.id = proto::request_id(c.no, 0);
        forget.action = proto::control_action::forget_client;
        ctl_writer_.push(proto::encode(forget));
        fd_of_client_.erase(c.no);
    }
    if (!ctl_writer_.empty()) flush_controller();
    epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    clients_.erase(fd);
}

// Requests read in one go reach the controller in one write.
void bridge::read_client(client& c) {
    const int fd = c.fd;  // `c` dies with drop(); test clients_ by fd afterwards
    try {
        const auto end = proto::drain_frames(c.reader, fd, 64, [&](proto::received_frame f) {
            if (c.closing) return true;
            try {
                if (!c.no) login(c, f);
                else forward(c, std::move(f));
            } catch (const std::exception& e) {
                drop(c, e.what());
                return false;
            }
            return clients_.count(fd) != 0;
        });
        if (end == proto::drain_end::closed) {
            spdlog::debug("client {} disconnected", c.peer);
            drop(c, "");
        }
    } catch (const std::exception& e) {
        if (clients_.count(fd)) drop(c, e.what());
    }
    if (!ctl_writer_.empty()) flush_controller();
}

void bridge::login(client& c, const proto::received_frame& f) {
    const auto req = proto::decode<proto::auth_request>(f.view());
    proto::auth_reply rep;
    if (!proto::macs_equal(req.mac, proto::auth_mac(key_, proto::client_label, c.nonce))) {
        spdlog::warn("client {} failed authentication (wrong key)", c.peer);
        rep.ok = false;
        rep.message = "authentication failed: the key does not match this job";
        c.writer.push(proto::encode(rep));
        c.closing = true;
        flush_client(c);
        return;
    }
    c.no = next_client_no_++;
    fd_of_client_[c.no] = c.fd;
    c.reader.set_max_frame(max_frame_);
    rep.ok = true;
    rep.client_no = c.no;
    rep.mac = proto::auth_mac(key_, proto::bridge_label, req.client_nonce);
    rep.engines = info_.engines;
    rep.shm_ok = !req.shm_probe.empty() && proto::probe_matches(req.shm_probe, req.shm_token);
    c.writer.push(proto::encode(rep));
    spdlog::debug("client {} authenticated as client {}", c.peer, c.no);
    flush_client(c);
}

void bridge::forward(client& c, proto::received_frame f) {
    const auto v = f.view();
    if (proto::is(v, proto::message_type::shm_return)) {
        const auto ret = proto::decode<proto::shm_return>(v);
        if (!ret.reuse) throw proto::frame_error("clients return segments for reuse only");
        for (const auto& p : ret.paths)
            if (!c.lent_paths.erase(p)) throw proto::frame_error("returned segment " + p + " was not lent to it");
        ctl_writer_.push_raw(std::move(f.bytes));
        return;
    }
    std::uint64_t id;
    if (proto::is(v, proto::message_type::shm_frame)) {
        // The controller maps and checks the file itself; the bridge never touches user data.
        const auto ref = proto::decode<proto::shm_frame>(v);
        if (!proto::valid_shm_path(ref.path) || ref.size > max_frame_)
            throw proto::frame_error("shared-memory frame " + ref.path + " refused");
        id = ref.id;
        if (ref.keep) c.shm_paths.insert(ref.path);
    } else {
        id = proto::decode_route(v).id;  // also checks the whole meta is well formed
    }
    if (proto::client_of(id) != c.no)
        throw proto::frame_error("request id " + std::to_string(id) + " does not carry this client's number " +
                                 std::to_string(c.no));
    ctl_writer_.push_raw(std::move(f.bytes));
}

bool bridge::read_controller() {
    std::vector<int> touched;
    bool alive = true;
    try {
        const auto end = proto::drain_frames(ctl_reader_, ctl_fd_, 256, [&](proto::received_frame f) {
            const int fd = route_reply(std::move(f));
            if (fd >= 0 && std::find(touched.begin(), touched.end(), fd) == touched.end()) touched.push_back(fd);
            return true;
        });
        alive = end != proto::drain_end::closed;
    } catch (const std::exception& e) {
        spdlog::error("controller connection failed: {}", e.what());
        alive = false;
    }
    // Replies read in one go reach each client in one write.
    for (int fd : touched)
        if (auto it = clients_.find(fd); it != clients_.end()) flush_client(it->second);
    if (alive && !ctl_writer_.empty()) flush_controller();
    return alive;
}

int bridge::route_reply(proto::received_frame f) {
    const auto v = f.view();
    if (proto::is(v, proto::message_type::job_ended)) {
        try {
            end_reason_ = proto::decode<proto::job_ended>(v).reason;
        } catch (const std::exception&) {
        }
        return -1;  // the socket closes next (or the job goes on until it does)
    }
    if (proto::is(v, proto::message_type::engine_event)) {
        // For every client, and for those that log in later (auth_reply's engine list).
        try {
            const auto ev = proto::decode<proto::engine_event>(v);
            for (auto& e : info_.engines)
                if (e.id == ev.engine.id) e = ev.engine;
        } catch (const std::exception& e) {
            spdlog::error("bad engine_event from the controller: {}", e.what());
            return -1;
        }
        std::vector<int> fds;
        for (auto& [fd, c] : clients_) {
            if (!c.no) continue;
            c.writer.push_raw(f.bytes);
            fds.push_back(fd);
        }
        for (int fd : fds)  // flushing may drop a client: look each up again
            if (auto it = clients_.find(fd); it != clients_.end()) flush_client(it->second);
        return -1;
    }
    std::uint64_t id = 0;
    std::string shm_path;
    try {
        if (proto::is(v, proto::message_type::shm_frame)) {
            const auto ref = proto::decode<proto::shm_frame>(v);
            id = ref.id;
            if (proto::valid_shm_path(ref.path)) shm_path = ref.path;
        } else {
            id = proto::reply_id(v);
        }
    } catch (const std::exception& e) {
        spdlog::error("unexpected frame from the controller: {}", e.what());
        return -1;
    }
    auto no = fd_of_client_.find(proto::client_of(id));
    if (no == fd_of_client_.end()) {
        spdlog::debug("reply {:#x} for a client that has left; dropped", id);
        if (!shm_path.empty()) {
            ::unlink(shm_path.c_str());
            // The controller keeps the segment mapped until told: let it go.
            ctl_writer_.push(proto::encode(proto::shm_return{{shm_path}, false}));
        }
        return -1;
    }
    client& c = clients_.at(no->second);
    if (!shm_path.empty()) c.lent_paths.insert(shm_path);
    c.writer.push_raw(std::move(f.bytes));
    return c.fd;
}

void bridge::flush_controller() {
    try {
        const bool done = ctl_writer_.flush(ctl_fd_);
        mod(ctl_fd_, EPOLLIN | (done ? 0u : static_cast<std::uint32_t>(EPOLLOUT)));
    } catch (const std::exception& e) {
        spdlog::error("writing to the controller failed: {}", e.what());
        terminate_requested = 1;
    }
}

void bridge::flush_client(client& c) {
    try {
        const bool done = c.writer.flush(c.fd);
        if (done && c.closing) return drop(c, "");
        mod(c.fd, EPOLLIN | (done ? 0u : static_cast<std::uint32_t>(EPOLLOUT)));
    } catch (const std::exception& e) {
        drop(c, e.what());
    }
}

void bridge::expire_logins() {
    const auto now = proto::clock::now();
    std::vector<int> late;
    for (auto& [fd, c] : clients_)
        if (!c.no && now > c.login_deadline) late.push_back(fd);
    for (int fd : late) drop(clients_.at(fd), "did not authenticate within 10 s");
}

}  // namespace pcluster::bridge
