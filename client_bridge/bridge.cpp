// pcluster-bridge: the TCP face of a job. Started by the controller (rank 0) with one end of a
// Unix socket pair; authenticates clients with HMAC-SHA256 before reading any request from them,
// forwards their request frames to the controller and routes replies back by request id.
// It never interprets user payloads. It ends when the controller closes its socket, telling
// every client the job ended and removing the connection file.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <memory>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcluster/protocol/auth.hpp"
#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/shm.hpp"
#include "pcluster/protocol/stream.hpp"

namespace proto = pcluster::protocol;
namespace fs = std::filesystem;

namespace {

volatile std::sig_atomic_t terminate_requested = 0;
extern "C" void on_term(int) { terminate_requested = 1; }

constexpr std::uint64_t login_max_frame = 4096;
constexpr auto login_timeout = std::chrono::seconds(10);

void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

std::string default_connection_file() {
    if (const char* env = std::getenv("PCLUSTER_CONNECTION_FILE"); env && *env) return env;
    const char* home = std::getenv("HOME");
    return (fs::path(home && *home ? home : "/tmp") / ".pcluster" / "connection.json").string();
}

bool process_alive(long pid) { return pid > 0 && (kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM); }

// Writes the file atomically with mode 0600 (the key in it is the job's only secret).
void write_connection_file(const fs::path& path, const nlohmann::json& j) {
    if (path.has_parent_path() && !fs::exists(path.parent_path())) {
        fs::create_directories(path.parent_path());
        fs::permissions(path.parent_path(), fs::perms::owner_all);
    }
    if (fs::exists(path)) {
        try {
            std::ifstream in(path);
            auto old = nlohmann::json::parse(in);
            const long pid = old.value("bridge_pid", 0L);
            if (process_alive(pid))
                throw std::runtime_error("connection file " + path.string() + " belongs to a running job (bridge pid " +
                                         std::to_string(pid) +
                                         "); stop that job (rc.shutdown()) or give this one its own file with "
                                         "--connection-file PATH");
        } catch (const nlohmann::json::exception&) {
        }
        spdlog::warn("replacing stale connection file {}", path.string());
    }
    const std::string tmp = path.string() + ".tmp." + std::to_string(getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot create " + tmp);
    const std::string text = j.dump(2) + "\n";
    const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::fchmod(fd, 0600);
    ::close(fd);
    if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
        ::unlink(tmp.c_str());
        throw std::system_error(errno, std::generic_category(), "cannot write " + path.string());
    }
}

struct client {
    int fd = -1;
    std::uint32_t no = 0;       // 0 until authenticated
    proto::digest nonce{};
    proto::frame_reader reader{login_max_frame};
    proto::frame_writer writer;
    proto::clock::time_point login_deadline;
    bool closing = false;       // close once the writer drains (after a refusal)
    std::string peer;
    // Shared-memory segments this client named; unlinked when it goes, so a client that dies
    // (no close()) leaves nothing in /dev/shm.
    std::set<std::string> shm_paths;
    // Reply segments the controller lent this client; unlinked if it goes without returning them.
    std::set<std::string> lent_paths;
};

class bridge {
public:
    bridge(int controller_fd, proto::job_info info, proto::digest key, int listen_fd, std::uint64_t max_frame)
        : ctl_fd_(controller_fd), info_(std::move(info)), key_(key), listen_fd_(listen_fd), max_frame_(max_frame) {
        ep_ = epoll_create1(EPOLL_CLOEXEC);
        add(listen_fd_, EPOLLIN);
        add(ctl_fd_, EPOLLIN);
    }

    // Returns when the controller is gone or a SIGTERM arrived.
    std::string run() {
        epoll_event evs[64];
        while (!terminate_requested) {
            const int n = epoll_wait(ep_, evs, 64, listen_paused_until_ ? 20 : 500);
            if (n < 0 && errno != EINTR) throw std::system_error(errno, std::generic_category(), "epoll_wait");
            for (int i = 0; i < n; ++i) {
                const int fd = evs[i].data.fd;
                if (fd == listen_fd_) accept_clients();
                else if (fd == ctl_fd_) {
                    if (evs[i].events & EPOLLIN || evs[i].events & (EPOLLHUP | EPOLLERR)) {
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
        return "the bridge was terminated (SIGTERM)";
    }

    // Tells every client why the job ended and gives them a moment to read it.
    void farewell(const std::string& reason) {
        proto::job_ended je{reason};
        for (auto& [fd, c] : clients_) {
            if (!c.no) continue;
            c.writer.push(proto::encode(je));
        }
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
    }

private:
    void add(int fd, std::uint32_t events) {
        epoll_event ev{};
        ev.events = events;
        ev.data.fd = fd;
        epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
    }
    void mod(int fd, std::uint32_t events) {
        epoll_event ev{};
        ev.events = events;
        ev.data.fd = fd;
        epoll_ctl(ep_, EPOLL_CTL_MOD, fd, &ev);
    }

    void accept_clients() {
        for (;;) {
            sockaddr_storage ss{};
            socklen_t len = sizeof ss;
            int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
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
            proto::challenge ch;
            ch.nonce = c.nonce;
            ch.job_id = info_.job_id;
            c.writer.push(proto::encode(ch));
            spdlog::debug("client {} connected", c.peer);
            auto [it, _] = clients_.emplace(fd, std::move(c));
            add(fd, EPOLLIN);
            flush_client(it->second);
        }
    }

    void drop(client& c, const std::string& why) {
        if (!why.empty()) spdlog::warn("closing connection from {}: {}", c.peer, why);
        const int fd = c.fd;
        for (const auto& p : c.shm_paths) ::unlink(p.c_str());
        if (!c.lent_paths.empty()) {
            // The controller must forget them: the client's process may still map them.
            proto::shm_return ret;
            ret.paths.assign(c.lent_paths.begin(), c.lent_paths.end());
            ret.reuse = false;
            ctl_writer_.push(proto::encode(ret));
        }
        if (c.no) {
            // Its tasks not yet sent to an engine would only produce replies nobody reads.
            proto::control_request forget;
            forget.r.id = std::uint64_t{c.no} << 32;
            forget.action = proto::control_action::forget_client;
            ctl_writer_.push(proto::encode(forget));
        }
        if (!ctl_writer_.empty()) flush_controller();
        epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
        ::close(fd);
        clients_.erase(fd);
    }

    // Requests read in one go reach the controller in one write.
    void read_client(client& c) {
        read_client_frames(c);
        if (!ctl_writer_.empty()) flush_controller();
    }

    void read_client_frames(client& c) {
        const int fd = c.fd;  // `c` dies with drop(); test clients_ by fd afterwards
        for (int i = 0; i < 64 || c.reader.buffered(); ++i) {
            proto::received_frame f;
            proto::frame_reader::status st;
            try {
                st = c.reader.read(c.fd, &f);
            } catch (const std::exception& e) {
                return drop(c, e.what());
            }
            if (st == proto::frame_reader::status::again) return;
            if (st == proto::frame_reader::status::closed) {
                spdlog::debug("client {} disconnected", c.peer);
                return drop(c, "");
            }
            if (c.closing) continue;
            try {
                if (!c.no) login(c, f);
                else forward(c, std::move(f));
            } catch (const std::exception& e) {
                return drop(c, e.what());
            }
            if (!clients_.count(fd)) return;
        }
    }

    void login(client& c, const proto::received_frame& f) {
        auto req = proto::decode<proto::auth_request>(f.view());
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

    void forward(client& c, proto::received_frame f) {
        auto v = f.view();
        if (proto::is(v, proto::message_type::shm_return)) {
            auto ret = proto::decode<proto::shm_return>(v);
            if (!ret.reuse) throw proto::frame_error("clients return segments for reuse only");
            for (const auto& p : ret.paths)
                if (!c.lent_paths.erase(p)) throw proto::frame_error("returned segment " + p + " was not lent to it");
            ctl_writer_.push_raw(std::move(f.bytes));
            return;
        }
        std::uint64_t id;
        if (proto::is(v, proto::message_type::shm_frame)) {
            // The controller maps and checks the file itself; the bridge never touches user data.
            auto ref = proto::decode<proto::shm_frame>(v);
            if (!proto::valid_shm_path(ref.path) || ref.size > max_frame_)
                throw proto::frame_error("shared-memory frame " + ref.path + " refused");
            id = ref.id;
            if (ref.keep) c.shm_paths.insert(ref.path);
        } else {
            id = proto::decode_route(v).id;  // also checks the whole meta is well formed
        }
        if ((id >> 32) != c.no)
            throw proto::frame_error("request id " + std::to_string(id) + " does not carry this client's number " +
                                     std::to_string(c.no));
        ctl_writer_.push_raw(std::move(f.bytes));
    }

    bool read_controller() {
        std::vector<int> touched;
        const bool alive = read_controller_frames(touched);
        flush_touched(touched);
        if (alive && !ctl_writer_.empty()) flush_controller();
        return alive;
    }

    bool read_controller_frames(std::vector<int>& touched) {
        for (int i = 0; i < 256 || ctl_reader_.buffered(); ++i) {
            proto::received_frame f;
            proto::frame_reader::status st;
            try {
                st = ctl_reader_.read(ctl_fd_, &f);
            } catch (const std::exception& e) {
                spdlog::error("controller connection failed: {}", e.what());
                return false;
            }
            if (st == proto::frame_reader::status::again) return true;
            if (st == proto::frame_reader::status::closed) return false;
            if (proto::is(f.view(), proto::message_type::job_ended)) {
                try {
                    end_reason_ = proto::decode<proto::job_ended>(f.view()).reason;
                } catch (const std::exception&) {
                }
                continue;  // the socket closes next
            }
            std::uint64_t id = 0;
            std::string shm_path;
            try {
                auto v = f.view();
                if (proto::is(v, proto::message_type::shm_frame)) {
                    auto ref = proto::decode<proto::shm_frame>(v);
                    id = ref.id;
                    if (proto::valid_shm_path(ref.path)) shm_path = ref.path;
                } else {
                    id = proto::reply_id(v);
                }
            } catch (const std::exception& e) {
                spdlog::error("unexpected frame from the controller: {}", e.what());
                continue;
            }
            const std::uint32_t no = static_cast<std::uint32_t>(id >> 32);
            auto it = std::find_if(clients_.begin(), clients_.end(), [&](auto& kv) { return kv.second.no == no; });
            if (it == clients_.end()) {
                spdlog::debug("reply {:#x} for a client that has left; dropped", id);
                if (!shm_path.empty()) {
                    ::unlink(shm_path.c_str());
                    // The controller keeps the segment mapped until told: let it go.
                    proto::shm_return ret;
                    ret.paths.push_back(shm_path);
                    ret.reuse = false;
                    ctl_writer_.push(proto::encode(ret));
                }
                continue;
            }
            if (!shm_path.empty()) it->second.lent_paths.insert(shm_path);
            it->second.writer.push_raw(std::move(f.bytes));
            if (std::find(touched.begin(), touched.end(), it->first) == touched.end()) touched.push_back(it->first);
        }
        return true;
    }

    // Replies read in one go reach each client in one write.
    void flush_touched(const std::vector<int>& touched) {
        for (int fd : touched)
            if (auto it = clients_.find(fd); it != clients_.end()) flush_client(it->second);
    }

    void flush_controller() {
        try {
            const bool done = ctl_writer_.flush(ctl_fd_);
            mod(ctl_fd_, EPOLLIN | (done ? 0u : static_cast<std::uint32_t>(EPOLLOUT)));
        } catch (const std::exception& e) {
            spdlog::error("writing to the controller failed: {}", e.what());
            terminate_requested = 1;
        }
    }

    void flush_client(client& c) {
        try {
            const bool done = c.writer.flush(c.fd);
            if (done && c.closing) return drop(c, "");
            mod(c.fd, EPOLLIN | (done ? 0u : static_cast<std::uint32_t>(EPOLLOUT)));
        } catch (const std::exception& e) {
            drop(c, e.what());
        }
    }

    void expire_logins() {
        const auto now = proto::clock::now();
        std::vector<int> late;
        for (auto& [fd, c] : clients_)
            if (!c.no && now > c.login_deadline) late.push_back(fd);
        for (int fd : late) drop(clients_.at(fd), "did not authenticate within 10 s");
    }

    int ctl_fd_;
    proto::job_info info_;
    proto::digest key_;
    int listen_fd_;
    std::uint64_t max_frame_;
    int ep_ = -1;
    std::map<int, client> clients_;
    proto::frame_reader ctl_reader_;
    proto::frame_writer ctl_writer_;
    std::uint32_t next_client_no_ = 1;
    std::optional<proto::clock::time_point> listen_paused_until_;
    // Why the job ended, as the controller said before closing; if it just vanished, this.
    std::string end_reason_ = "the controller went away (the job was killed or crashed)";
};

int listen_on(const std::string& ip, int port, std::uint16_t* bound) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST;
    if (int rc = getaddrinfo(ip.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
        throw std::runtime_error("bad --ip " + ip + ": " + gai_strerror(rc) + " (give a numeric address such as 127.0.0.1)");
    int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, res->ai_addr, res->ai_addrlen) != 0) {
        const int err = errno;
        freeaddrinfo(res);
        throw std::system_error(err, std::generic_category(),
                                "cannot listen on " + ip + ":" + std::to_string(port) +
                                    (port ? " (choose another --port, or leave it out for a free one)" : ""));
    }
    freeaddrinfo(res);
    if (::listen(fd, 128) != 0) throw std::system_error(errno, std::generic_category(), "listen");
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    *bound = ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                           : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
    return fd;
}

}  // namespace

int main(int argc, char** argv) {
    int ctl_fd = -1, port = 0;
    std::string ip = "127.0.0.1", log_level = "info", job_id, conn_file;
    double max_frame_gib = 16;
    CLI::App app{"pcluster-bridge: TCP bridge between clients and a pcluster controller (started by pcluster itself)"};
    app.add_option("--controller-fd", ctl_fd, "socket to the controller")->required();
    app.add_option("--ip", ip);
    app.add_option("--port", port);
    app.add_option("--log-level", log_level);
    app.add_option("--job-id", job_id);
    app.add_option("--connection-file", conn_file);
    app.add_option("--max-frame-gib", max_frame_gib, "largest request a client may send");
    CLI11_PARSE(app, argc, argv);
    spdlog::set_level(spdlog::level::from_str(log_level));
    spdlog::set_pattern("pcluster-bridge %l: %v");
    // Ctrl-C in the terminal reaches the whole process group; the bridge outlives the controller
    // by design (it must tell clients), so it follows the controller's socket, not SIGINT.
    std::signal(SIGINT, SIG_IGN);
    std::signal(SIGPIPE, SIG_IGN);
    std::signal(SIGTERM, on_term);
    fcntl(ctl_fd, F_SETFD, FD_CLOEXEC);

    fs::path path = conn_file.empty() ? default_connection_file() : conn_file;
    bool wrote = false;
    int status = 0;
    std::int64_t controller_pid = 0;
    try {
        auto deadline = proto::clock::now() + std::chrono::seconds(30);
        auto info = proto::decode<proto::job_info>(proto::read_frame(ctl_fd, deadline).view());
        controller_pid = info.controller_pid;
        if (ip == "0.0.0.0" || ip == "::")
            spdlog::warn("listening on all interfaces ({}): anyone who can reach this host may try to connect; "
                         "only the key in the connection file lets them in", ip);
        std::uint16_t bound = 0;
        int lfd = listen_on(ip, port, &bound);
        const proto::digest key = proto::random_bytes32();
        path = fs::absolute(path);
        char host[256] = {0};
        gethostname(host, sizeof host - 1);
        nlohmann::json j = {
            {"version", proto::protocol_version},
            {"transport", "tcp"},
            {"ip", ip},
            {"host", host},
            {"port", bound},
            {"key", proto::to_hex(key)},
            {"signature_scheme", "hmac-sha256"},
            {"job_id", info.job_id},
            {"engines", info.engines.size()},
            {"controller", {{"host", info.controller_host}, {"pid", info.controller_pid}}},
            {"bridge_pid", getpid()},
            {"created", std::time(nullptr)},
        };
        write_connection_file(path, j);
        wrote = true;
        proto::bridge_ready ready{ip, bound, path.string()};
        proto::write_frame(ctl_fd, proto::encode(ready));
        set_nonblocking(ctl_fd);
        bridge b(ctl_fd, std::move(info), key, lfd, static_cast<std::uint64_t>(max_frame_gib * (1ull << 30)));
        const std::string reason = b.run();
        // Remove the file first: a client that sees the job end must not find it again.
        fs::remove(path);
        wrote = false;
        b.farewell(reason);
        // Shared-memory replies the controller made that no client took (a client died first).
        // Clients read a reply before the farewell that follows it; give them a moment anyway.
        proto::remove_dead_client_segments();
        const std::string owner = "s" + std::to_string(controller_pid);
        if (proto::has_shm_leftovers(owner)) {
            usleep(500'000);
            proto::remove_shm_leftovers(owner);
        }
        spdlog::debug("bridge done: {}", reason);
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        status = 1;
    }
    if (wrote) {
        std::error_code ec;
        fs::remove(path, ec);
    }
    return status;
}
