#include "bridge_process.hpp"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <csignal>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/stream.hpp"

extern char** environ;

namespace pcluster::controller {

namespace proto = pcluster::protocol;

namespace {
pid_t spawn(const options& opt, int fd, const std::string& job_id) {
    std::vector<std::string> args = {opt.bridge_path, "--controller-fd", std::to_string(fd), "--ip", opt.ip,
                                     "--port", std::to_string(opt.port), "--log-level", opt.log_level,
                                     "--job-id", job_id, "--max-frame-gib", std::to_string(opt.max_frame_gib)};
    if (!opt.connection_file.empty()) {
        args.push_back("--connection-file");
        args.push_back(opt.connection_file);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    // Its own session: mpirun kills the process group of a rank it tears down (Ctrl-C), and the
    // bridge must outlive the controller long enough to tell clients and remove the file. It
    // notices the controller's end through its socket.
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
    pid_t pid;
    const int rc = posix_spawn(&pid, opt.bridge_path.c_str(), nullptr, &attr, argv.data(), environ);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) throw std::system_error(rc, std::generic_category(), "cannot start the bridge " + opt.bridge_path);
    return pid;
}
}  // namespace

std::optional<started_bridge> start_bridge(const options& opt, const proto::job_info& info) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        throw std::system_error(errno, std::generic_category(), "socketpair");
    // The bridge's end must survive exec; ours must not leak into it.
    fcntl(sv[1], F_SETFD, 0);
    started_bridge b;
    b.fd = sv[0];
    try {
        b.pid = spawn(opt, sv[1], info.job_id);
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        ::close(sv[0]);
        ::close(sv[1]);
        return std::nullopt;
    }
    ::close(sv[1]);
    try {
        proto::write_frame(b.fd, proto::encode(info));
        const auto deadline = proto::clock::now() + std::chrono::milliseconds(static_cast<long>(opt.bridge_timeout_s * 1000));
        b.ready = proto::decode<proto::bridge_ready>(proto::read_frame(b.fd, deadline).view());
    } catch (const std::exception& e) {
        spdlog::error("the bridge did not start: {} (see its message above)", e.what());
        ::close(b.fd);
        reap_bridge(b.pid);
        return std::nullopt;
    }
    fcntl(b.fd, F_SETFL, fcntl(b.fd, F_GETFL) | O_NONBLOCK);
    return b;
}

void reap_bridge(pid_t pid) {
    if (pid <= 0) return;
    for (int i = 0; i < 100; ++i) {
        if (waitpid(pid, nullptr, WNOHANG) == pid) return;
        usleep(20'000);
    }
    kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
}

}  // namespace pcluster::controller
