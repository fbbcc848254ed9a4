#include "bridge.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <system_error>
#include <vector>

#include <malloc.h>
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

// A client that breaks the protocol in a way that names no request of its own: it is closed.
struct protocol_violation : std::runtime_error {
    using std::runtime_error::runtime_error;
};

constexpr int max_accepts_per_turn = 64;
}  // namespace

void request_termination() { terminate_requested = 1; }

bridge::bridge(int controller_fd, proto::job_info info, proto::digest key, int listen_fd, limits lim)
    : ctl_fd_(controller_fd), info_(std::move(info)), key_(key), listen_fd_(listen_fd), lim_(lim) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    add(listen_fd_, EPOLLIN);
    add(ctl_fd_, EPOLLIN);
    ctl_events_ = EPOLLIN;
    // A reply the bridge cannot take fails its request; the controller's link stays.
    ctl_reader_.set_skip_bad(true);
}

std::string bridge::run() {
    epoll_event evs[64];
    while (!terminate_requested) {
        const int n = epoll_wait(ep_, evs, 64, next_timeout_ms());
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
                on_client_event(it->second, evs[i].events);
            }
        }
        // Clients let go of a budget with frames already read: no readiness event will come.
        while (!resume_.empty()) {
            std::vector<int> fds;
            fds.swap(resume_);
            for (int fd : fds)
                if (auto it = clients_.find(fd); it != clients_.end() && !it->second.paused) read_client(it->second);
        }
        run_timers();
    }
    return proto::ended_by_signal(SIGTERM);
}

void bridge::farewell(const std::string& reason) {
    const proto::job_ended je{reason};
    for (auto& [fd, c] : clients_)
        if (c.no) c.writer.push(proto::encode(je));
    const auto deadline = steady::now() + std::chrono::seconds(2);
    for (auto& [fd, c] : clients_) {
        try {
            while (c.no && !c.writer.flush(fd) && steady::now() < deadline) usleep(1000);
        } catch (...) {
        }
        for (const auto& p : c.shm_paths) ::unlink(p.c_str());
        ::close(fd);
    }
    clients_.clear();
    pending_.clear();
    refusing_.clear();
    fd_of_client_.clear();
    logs_.tick(steady::now() + std::chrono::hours(1));
}

void bridge::add(int fd, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
}

// The mask follows the client's state; epoll_ctl only when it changes (not once per flush).
void bridge::set_events(client& c) {
    const bool reading = !c.paused && !c.refusing;
    const std::uint32_t want =
        EPOLLRDHUP | (reading ? static_cast<std::uint32_t>(EPOLLIN) : 0u) | (c.writer.empty() ? 0u : static_cast<std::uint32_t>(EPOLLOUT));
    if (want == c.events) return;
    epoll_event ev{};
    ev.events = want;
    ev.data.fd = c.fd;
    epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
    c.events = want;
}

void bridge::set_controller_events(bool want_out) {
    const std::uint32_t want = EPOLLIN | (want_out ? static_cast<std::uint32_t>(EPOLLOUT) : 0u);
    if (want == ctl_events_) return;
    epoll_event ev{};
    ev.events = want;
    ev.data.fd = ctl_fd_;
    epoll_ctl(ep_, EPOLL_CTL_MOD, ctl_fd_, &ev);
    ctl_events_ = want;
}

void bridge::on_client_event(client& c, std::uint32_t events) {
    const int fd = c.fd;
    if (c.paused || c.refusing) {
        // Not reading it: a client that hangs up meanwhile is gone.
        if (events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) return drop(c, "");
    } else if (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
        read_client(c);
    }
    if (auto it = clients_.find(fd); it != clients_.end() && (events & EPOLLOUT)) flush_client(it->second);
}

void bridge::accept_clients() {
    // A bounded number per turn: a flood of connections must not keep authenticated clients waiting.
    for (int i = 0; i < max_accepts_per_turn; ++i) {
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                // Out of descriptors: the listening socket stays readable, so stop watching it
                // for a moment rather than spin, and let the oldest login go.
                if (logs_.allow("cannot accept"))
                    spdlog::warn("cannot accept more clients ({}); pausing for 100 ms", std::strerror(errno));
                epoll_ctl(ep_, EPOLL_CTL_DEL, listen_fd_, nullptr);
                listen_paused_until_ = steady::now() + std::chrono::milliseconds(100);
                if (!pending_.empty() || !refusing_.empty()) {
                    auto& old = clients_.at(!refusing_.empty() ? refusing_.begin()->second : pending_.begin()->second);
                    drop(old, "");
                }
            }
            return;
        }
        make_room_for_login();
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char host[NI_MAXHOST] = "?", serv[NI_MAXSERV] = "?";
        getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV);
        client c;
        c.fd = fd;
        c.seq = next_seq_++;
        c.addr = host;
        c.peer = std::string(host) + ":" + serv;
        c.nonce = proto::random_bytes32();
        c.login_deadline = steady::now() + lim_.login_timeout;
        c.writer.push(proto::encode(proto::challenge{c.nonce, info_.job_id}));
        spdlog::debug("client {} connected", c.peer);
        auto [it, _] = clients_.emplace(fd, std::move(c));
        pending_.emplace(it->second.seq, fd);
        add(fd, EPOLLIN | EPOLLRDHUP);
        it->second.events = EPOLLIN | EPOLLRDHUP;
        flush_client(it->second);
    }
}

// At most max_pending_logins connections wait for their login: beyond, one goes. First a
// connection that has sat there for a second without logging in (an honest client logs in
// within a round trip), then a refusal still waiting (a wrong key: dropping it only ends its
// wait early), then the oldest.
void bridge::make_room_for_login() {
    while (pending_.size() + refusing_.size() >= std::max<std::size_t>(lim_.max_pending_logins, 1)) {
        const auto now = steady::now();
        int fd = -1;
        if (!pending_.empty()) {
            const client& oldest = clients_.at(pending_.begin()->second);
            if (now - (oldest.login_deadline - lim_.login_timeout) > std::chrono::seconds(1)) fd = oldest.fd;
        }
        if (fd < 0) fd = !refusing_.empty() ? refusing_.begin()->second : pending_.begin()->second;
        client& c = clients_.at(fd);
        if (logs_.allow("too many logins"))
            spdlog::warn("more than {} connections are logging in; dropping one ({})", lim_.max_pending_logins, c.peer);
        drop(c, "");
    }
}

void bridge::drop(client& c, const std::string& why, const char* kind) {
    if (!why.empty() && logs_.allow(kind)) spdlog::warn("{} from {}: {}", kind, c.peer, why);
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
        // What it held (queued replies, frames) goes back to the system, not only to malloc.
        trim_due_ = true;
    } else {
        pending_.erase(c.seq);
    }
    if (c.refusing) refusing_.erase(*c.refusing);
    if (!c.shm_owner.empty() && c.shm_ok) shm_owners_.erase(c.shm_owner);
    if (!ctl_writer_.empty()) flush_controller();
    epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    clients_.erase(fd);
}

// Requests read in one go reach the controller in one write.
void bridge::read_client(client& c) {
    const int fd = c.fd;  // `c` dies with drop(); test clients_ by fd afterwards
    bool touched = false;
    try {
        const auto end = proto::drain_frames(
            c.reader, fd, 64,
            [&](proto::received_frame f) {
                if (!c.no) {
                    login(c, f);
                    return clients_.count(fd) != 0 && !c.refusing;
                }
                const auto id = proto::peek_id(f.view());
                try {
                    forward(c, std::move(f));
                } catch (const proto::frame_error& e) {
                    // Malformed, or refused by a check: that request fails, the client stays.
                    touched = true;
                    if (!refuse_request(c, id, e.what())) {
                        drop(c, e.what());
                        return false;
                    }
                } catch (const std::exception& e) {
                    drop(c, e.what());
                    return false;
                }
                return !c.paused;
            },
            [&](const proto::bad_frame& b) {
                touched = true;
                if (refuse_request(c, b.id, b.error)) return true;
                drop(c, b.error);
                return false;
            });
        if (end == proto::drain_end::closed) {
            spdlog::debug("client {} disconnected", c.peer);
            drop(c, "");
        }
    } catch (const std::exception& e) {
        if (clients_.count(fd)) drop(c, e.what(), c.no ? "closing connection" : "refused login");
    }
    if (touched && clients_.count(fd)) flush_client(c);
    if (!ctl_writer_.empty()) flush_controller();
}

void bridge::login(client& c, const proto::received_frame& f) {
    const login_verdict v = judge_login(f.view(), key_, c.nonce);
    if (!v.ok) {
        // Refused after a wait that grows with each failure from this address; meanwhile the
        // connection is among the pending logins, the first dropped when there are too many.
        const auto wait = throttle_.failed(c.addr);
        if (logs_.allow("failed login"))
            spdlog::warn("client {} failed authentication ({}); {} failure(s) from {} lately", c.peer, v.why,
                         throttle_.failures(c.addr), c.addr);
        pending_.erase(c.seq);
        c.refusing = refusing_.emplace(steady::now() + wait, c.fd);
        set_events(c);
        return;
    }
    c.no = next_client_no_++;
    pending_.erase(c.seq);
    fd_of_client_[c.no] = c.fd;
    c.reader.set_max_frame(lim_.max_frame);
    c.reader.set_skip_bad(true);
    // Shared memory only for a client whose probe file is here, with segments of its own.
    c.shm_ok = !v.shm_owner.empty() && !shm_owners_.count(v.shm_owner) &&
               proto::probe_matches(v.req.shm_probe, v.req.shm_token);
    if (c.shm_ok) {
        c.shm_owner = v.shm_owner;
        shm_owners_.insert(c.shm_owner);
    }
    c.writer.push(proto::encode(accept_reply(v, key_, c.no, info_.engines, c.shm_ok)));
    spdlog::debug("client {} authenticated as client {}", c.peer, c.no);
    flush_client(c);
}

void bridge::send_refusal(client& c) {
    refusing_.erase(*c.refusing);
    c.refusing.reset();
    c.writer.push(proto::encode(refusal_reply()));
    try {
        c.writer.flush(c.fd);
    } catch (const std::exception&) {
    }
    drop(c, "");
}

bool bridge::refuse_request(client& c, std::optional<std::uint64_t> id, const std::string& why) {
    if (!id || proto::client_of(*id) != c.no) return false;
    if (logs_.allow("refused request")) spdlog::warn("refused request {:#x} of client {} ({}): {}", *id, c.no, c.peer, why);
    c.writer.push(proto::encode(proto::error_reply(*id, proto::reply_origin::refused, proto::no_engine,
                                                   proto::error_kind::bad_request, "the bridge refused the request: " + why)));
    return true;
}

void bridge::forward(client& c, proto::received_frame f) {
    const auto v = f.view();
    if (proto::is(v, proto::message_type::shm_return)) {
        const auto ret = proto::decode<proto::shm_return>(v);
        if (!ret.reuse) throw protocol_violation("clients return segments for reuse only");
        for (const auto& p : ret.paths)
            if (!c.lent_paths.erase(p)) throw protocol_violation("returned segment " + p + " was not lent to it");
        ctl_writer_.push_raw(std::move(f.bytes));
        return;
    }
    std::uint64_t id;
    // What the request costs the job until it is answered: its bytes through the sockets (a
    // shared-memory frame is the client's own memory, mapped where it is needed, never copied).
    const std::uint64_t cost = f.bytes->size();
    if (proto::is(v, proto::message_type::shm_frame)) {
        // The controller maps and checks the file itself; the bridge never touches user data.
        const auto ref = proto::decode<proto::shm_frame>(v);
        id = ref.id;
        if (proto::client_of(id) != c.no) throw protocol_violation("shared-memory frame of another client");
        if (!c.shm_ok)
            throw proto::frame_error("shared-memory frames are taken only from a client that proved at login that it "
                                     "shares this host's /dev/shm");
        if (!shm_path_of_owner(ref.path, c.shm_owner))
            throw proto::frame_error("shared-memory frame " + ref.path + " is not one of this client's own segments");
        if (ref.size > lim_.max_frame)
            throw proto::frame_error("shared-memory frame of " + std::to_string(ref.size) +
                                     " bytes exceeds the maximum of " + std::to_string(lim_.max_frame));
        if (ref.keep) c.shm_paths.insert(ref.path);
    } else if (proto::is_request(v.type())) {
        id = proto::decode_route(v).id;  // also checks the whole meta is well formed
        if (proto::is(v, proto::message_type::control_request) &&
            proto::bridge_only(proto::decode<proto::control_request>(v).action))
            throw proto::frame_error("that control action is the bridge's own; a client may not send it");
    } else {
        throw proto::frame_error(std::string("a client may not send ") + proto::type_name(v.type()));
    }
    if (proto::client_of(id) != c.no)
        throw protocol_violation("request id " + std::to_string(id) + " does not carry this client's number " +
                                 std::to_string(c.no));
    c.inflight[id] += cost;
    c.inflight_bytes += cost;
    ctl_writer_.push_raw(std::move(f.bytes));
    check_budget(c);
}

void bridge::answered(client& c, std::uint64_t id) {
    auto it = c.inflight.find(id);
    if (it == c.inflight.end()) return;
    c.inflight_bytes -= it->second;
    c.inflight.erase(it);
}

// Over a budget the bridge stops reading the client's requests; under again (replies queued
// down to half their budget), it reads on. Over the reply budget the controller is also told to
// send none of the client's requests to engines (hold_client) until it has read down to half:
// requests already forwarded would otherwise go on producing replies here, unbounded.
void bridge::check_budget(client& c) {
    const std::uint64_t queued = c.writer.queued_bytes();
    if (c.held != (c.held ? queued >= lim_.reply_buffer_bytes / 2 : queued >= lim_.reply_buffer_bytes)) {
        c.held = !c.held;
        proto::control_request tell;
        tell.r.id = proto::request_id(c.no, 0);
        tell.action = c.held ? proto::control_action::hold_client : proto::control_action::release_client;
        ctl_writer_.push(proto::encode(tell));
        flush_controller();
        spdlog::debug("client {} {}: {} bytes of replies unread", c.no, c.held ? "held" : "released", queued);
    }
    if (!c.paused) {
        if (c.inflight_bytes < lim_.inflight_bytes && c.inflight.size() < lim_.max_unanswered &&
            queued < lim_.reply_buffer_bytes)
            return;
        c.paused = true;
        spdlog::debug("client {} paused: {} bytes of requests unanswered, {} bytes of replies unread", c.no,
                      c.inflight_bytes, queued);
    } else {
        if (c.inflight_bytes >= lim_.inflight_bytes || c.inflight.size() >= lim_.max_unanswered ||
            queued >= lim_.reply_buffer_bytes / 2)
            return;
        c.paused = false;
        spdlog::debug("client {} reads on", c.no);
        if (c.reader.buffered()) resume_.push_back(c.fd);
    }
    set_events(c);
}

bool bridge::read_controller() {
    std::vector<int> touched;
    auto touch = [&](int fd) {
        if (fd >= 0 && std::find(touched.begin(), touched.end(), fd) == touched.end()) touched.push_back(fd);
        return true;
    };
    bool alive = true;
    try {
        const auto end = proto::drain_frames(
            ctl_reader_, ctl_fd_, 256, [&](proto::received_frame f) { return touch(route_reply(std::move(f))); },
            [&](const proto::bad_frame& b) { return touch(reply_lost(b)); });
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

int bridge::reply_lost(const proto::bad_frame& b) {
    if (logs_.allow("reply lost"))
        spdlog::error("a {} of {} bytes from the controller cannot be passed on: {}", proto::type_name(b.type), b.size,
                      b.error);
    if (!b.id || b.type == static_cast<std::uint16_t>(proto::message_type::output)) return -1;
    auto no = fd_of_client_.find(proto::client_of(*b.id));
    if (no == fd_of_client_.end()) return -1;
    client& c = clients_.at(no->second);
    answered(c, *b.id);
    // In place of that engine's reply (the request's other replies still come); when the engine
    // is not known, the whole request fails at once.
    const auto origin = b.engine ? proto::reply_origin::controller : proto::reply_origin::refused;
    c.writer.push(proto::encode(proto::error_reply(*b.id, origin, b.engine.value_or(proto::no_engine),
                                                   proto::error_kind::reply_lost,
                                                   "a reply of " + std::to_string(b.size) +
                                                       " bytes could not be passed on by the bridge: " + b.error)));
    return c.fd;
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
        } else if (auto pid = proto::peek_id(v)) {
            id = *pid;  // the client decodes the rest; the bridge only routes
        } else {
            throw proto::frame_error(std::string("a ") + proto::type_name(v.type()) + " is not a reply");
        }
    } catch (const std::exception& e) {
        if (logs_.allow("unexpected frame")) spdlog::error("unexpected frame from the controller: {}", e.what());
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
    if (!proto::is(v, proto::message_type::output)) answered(c, id);
    c.writer.push_raw(std::move(f.bytes));
    if (!c.held && c.writer.queued_bytes() >= lim_.reply_buffer_bytes) check_budget(c);
    return c.fd;
}

void bridge::flush_controller() {
    try {
        set_controller_events(!ctl_writer_.flush(ctl_fd_));
    } catch (const std::exception& e) {
        spdlog::error("writing to the controller failed: {}", e.what());
        terminate_requested = 1;
    }
}

void bridge::flush_client(client& c) {
    try {
        c.writer.flush(c.fd);
    } catch (const std::exception& e) {
        return drop(c, e.what());
    }
    if (c.paused) check_budget(c);  // replies drained: it may read on (held implies paused)
    set_events(c);
}

void bridge::run_timers() {
    const auto now = steady::now();
    while (!pending_.empty()) {
        client& c = clients_.at(pending_.begin()->second);
        if (c.login_deadline > now) break;
        drop(c, fmt::format("did not log in within {:g} s", lim_.login_timeout.count() / 1000.0), "login timeout");
    }
    while (!refusing_.empty() && refusing_.begin()->first <= now) send_refusal(clients_.at(refusing_.begin()->second));
    if (listen_paused_until_ && now > *listen_paused_until_) {
        add(listen_fd_, EPOLLIN);
        listen_paused_until_.reset();
    }
    if (trim_due_ && now - last_trim_ > std::chrono::seconds(1)) {
        ::malloc_trim(0);
        trim_due_ = false;
        last_trim_ = now;
    }
    logs_.tick(now);
}

int bridge::next_timeout_ms() const {
    auto next = steady::now() + std::chrono::milliseconds(500);
    if (!pending_.empty()) next = std::min(next, clients_.at(pending_.begin()->second).login_deadline);
    if (!refusing_.empty()) next = std::min(next, refusing_.begin()->first);
    if (listen_paused_until_) next = std::min(next, *listen_paused_until_);
    if (trim_due_) next = std::min(next, last_trim_ + std::chrono::seconds(1));
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - steady::now()).count();
    return static_cast<int>(std::clamp<long long>(ms + 1, 0, 500));
}

}  // namespace pcluster::bridge
