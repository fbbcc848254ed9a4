// pcluster-bridge: the TCP face of a job. Started by the controller (rank 0) with one end of a
// Unix socket pair (see bridge.hpp for what it does). It ends when the controller closes its
// socket, telling every client the job ended and removing the connection file.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <filesystem>

#include <fcntl.h>
#include <sys/resource.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "addresses.hpp"
#include "bridge.hpp"
#include "job_file.hpp"
#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/connection_file.hpp"
#include "pcluster/protocol/shm.hpp"

namespace proto = pcluster::protocol;
namespace fs = std::filesystem;
using namespace pcluster::bridge;

namespace {

extern "C" void on_term(int) { request_termination(); }

int listen_on(const std::string& ip, int port, std::uint16_t* bound) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST;
    if (int rc = getaddrinfo(ip.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
        throw std::runtime_error("bad --ip " + ip + ": " + gai_strerror(rc) + " (give a numeric address such as 127.0.0.1)");
    const int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
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

// Budgets and limits: the bridge's options, else these environment variables (the bridge
// inherits rank 0's environment), else the defaults in bridge.hpp. A bad value ends the bridge
// with a message naming the variable.
double env_number(const char* name, double fallback, double lo, double hi) {
    const char* v = std::getenv(name);
    if (!v || !*v) return fallback;
    char* end = nullptr;
    const double x = std::strtod(v, &end);
    if (end == v || *end || !(x >= lo && x <= hi))
        throw std::invalid_argument(std::string(name) + "=" + v + " is not a number from " + std::to_string(lo) +
                                    " to " + std::to_string(hi));
    return x;
}

// The bridge is spawned by rank 0, whose MPI library leaves its listening sockets and other
// descriptors inheritable: close everything but stdio and the controller's socket.
void close_inherited(int keep) {
    if (keep > 3) ::close_range(3, static_cast<unsigned>(keep - 1), 0);
    ::close_range(static_cast<unsigned>(std::max(keep + 1, 3)), ~0u, 0);
}

// Room for many connections (idle sockets of an attack, many clients): the hard limit.
void raise_fd_limit() {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

std::string hostname() {
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    return host;
}

}  // namespace

int main(int argc, char** argv) {
    int ctl_fd = -1, port = 0;
    std::string ip, log_level = "info", job_id, conn_file;
    double max_frame_gib = 16;
    CLI::App app{"pcluster-bridge: TCP bridge between clients and a pcluster controller (started by pcluster itself)"};
    app.add_option("--controller-fd", ctl_fd, "socket to the controller")->required();
    app.add_option("--ip", ip);
    app.add_option("--port", port);
    app.add_option("--log-level", log_level);
    app.add_option("--job-id", job_id);
    app.add_option("--connection-file", conn_file);
    app.add_option("--max-frame-gib", max_frame_gib, "largest request a client may send");
    double inflight_mib = -1, reply_mib = -1, pending_logins = -1, login_timeout_s = -1, unanswered = -1;
    app.add_option("--client-inflight-mib", inflight_mib,
                   "per client: MiB of requests sent on and not yet answered before its requests wait "
                   "(default $PCLUSTER_CLIENT_INFLIGHT_MIB or 256)");
    app.add_option("--client-reply-buffer-mib", reply_mib,
                   "per client: MiB of replies it has not read before its requests wait "
                   "(default $PCLUSTER_CLIENT_REPLY_BUFFER_MIB or 64)");
    app.add_option("--client-max-unanswered", unanswered,
                   "per client: requests sent on with no reply yet before its requests wait "
                   "(default $PCLUSTER_CLIENT_MAX_UNANSWERED or 65536)");
    app.add_option("--max-pending-logins", pending_logins,
                   "connections logging in at once; beyond, the oldest is dropped (default $PCLUSTER_MAX_PENDING_LOGINS or 256)");
    app.add_option("--login-timeout-s", login_timeout_s,
                   "seconds a connection may take to log in (default $PCLUSTER_LOGIN_TIMEOUT_S or 10)");
    CLI11_PARSE(app, argc, argv);
    close_inherited(ctl_fd);
    raise_fd_limit();
    spdlog::set_level(spdlog::level::from_str(log_level));
    spdlog::set_pattern("pcluster-bridge %l: %v");
    // Ctrl-C in the terminal reaches the whole process group; the bridge outlives the controller
    // by design (it must tell clients), so it follows the controller's socket, not SIGINT.
    std::signal(SIGINT, SIG_IGN);
    std::signal(SIGPIPE, SIG_IGN);
    std::signal(SIGTERM, on_term);
    fcntl(ctl_fd, F_SETFD, FD_CLOEXEC);

    limits lim;
    try {
        constexpr double mib = 1 << 20;
        lim.max_frame = static_cast<std::uint64_t>(max_frame_gib * (1ull << 30));
        if (inflight_mib < 0) inflight_mib = env_number("PCLUSTER_CLIENT_INFLIGHT_MIB", 256, 1, 1 << 20);
        if (reply_mib < 0) reply_mib = env_number("PCLUSTER_CLIENT_REPLY_BUFFER_MIB", 64, 1, 1 << 20);
        if (unanswered < 0) unanswered = env_number("PCLUSTER_CLIENT_MAX_UNANSWERED", 65536, 1, 1e9);
        if (pending_logins < 0) pending_logins = env_number("PCLUSTER_MAX_PENDING_LOGINS", 256, 1, 1 << 20);
        if (login_timeout_s < 0) login_timeout_s = env_number("PCLUSTER_LOGIN_TIMEOUT_S", 10, 0.1, 3600);
        lim.inflight_bytes = static_cast<std::uint64_t>(inflight_mib * mib);
        lim.reply_buffer_bytes = static_cast<std::uint64_t>(reply_mib * mib);
        lim.max_pending_logins = static_cast<std::size_t>(pending_logins);
        lim.max_unanswered = static_cast<std::size_t>(unanswered);
        lim.login_timeout = std::chrono::milliseconds(static_cast<long long>(login_timeout_s * 1000));
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        return 1;
    }

    fs::path path = conn_file.empty() ? fs::path(proto::default_connection_file()) : fs::path(conn_file);
    bool wrote = false;
    int status = 0;
    try {
        const auto deadline = proto::clock::now() + std::chrono::seconds(30);
        auto info = proto::decode<proto::job_info>(proto::read_frame(ctl_fd, deadline).view());
        const listen_plan plan = plan_listen(ip);
        // Worth a line on mpirun's terminal only when it is not the plain default.
        const auto level = ip.empty() && plan.listen == "127.0.0.1" ? spdlog::level::debug : spdlog::level::info;
        spdlog::log(level, "listening on {} ({}); clients connect to {}", plan.listen, plan.why, plan.connect);
        if (plan.listen == "0.0.0.0" || plan.listen == "::")
            spdlog::warn("listening on all interfaces ({}): anyone who can reach this host may try to connect; "
                         "only the key in the connection file lets them in", plan.listen);
        std::uint16_t bound = 0;
        const int lfd = listen_on(plan.listen, port, &bound);
        const proto::digest key = proto::random_bytes32();
        path = fs::absolute(path);
        proto::connection_info c;
        c.version = proto::protocol_version;
        c.ip = plan.connect;
        c.addresses = plan.addresses;
        c.listen = plan.listen;
        c.host = hostname();
        c.port = bound;
        c.key = proto::to_hex(key);
        c.job_id = info.job_id;
        c.engines = static_cast<std::uint32_t>(info.engines.size());
        c.controller_host = info.controller_host;
        c.controller_pid = info.controller_pid;
        c.bridge_pid = getpid();
        c.created = std::time(nullptr);
        write_connection_file(path, c);
        wrote = true;
        proto::write_frame(ctl_fd, proto::encode(proto::bridge_ready{plan.connect, bound, path.string()}));
        fcntl(ctl_fd, F_SETFL, fcntl(ctl_fd, F_GETFL) | O_NONBLOCK);
        const std::int64_t controller_pid = info.controller_pid;
        bridge b(ctl_fd, std::move(info), key, lfd, lim);
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
