#include "job_file.hpp"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcluster/protocol/auth.hpp"
#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/config.hpp"
#include "pcluster/protocol/stream.hpp"

namespace fs = std::filesystem;

namespace pcluster::bridge {

namespace proto = pcluster::protocol;

namespace {
// A connected socket to ip:port, or -1 (refused, unreachable, or not within the deadline).
int connect_before(const std::string& ip, std::uint32_t port, proto::clock::time_point deadline, bool* timed_out) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST;
    if (getaddrinfo(ip.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) return -1;
    int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int rc = fd < 0 ? -1 : ::connect(fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (fd >= 0 && rc != 0 && errno == EINPROGRESS) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - proto::clock::now()).count();
        pollfd p{fd, POLLOUT, 0};
        if (left > 0 && ::poll(&p, 1, static_cast<int>(left)) == 1) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            rc = err ? -1 : 0;
        } else {
            *timed_out = true;
        }
    }
    if (rc != 0 && fd >= 0) {
        ::close(fd);
        fd = -1;
    }
    return fd;
}

bool process_alive(long pid) { return pid > 0 && (kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM); }

std::string process_name(long pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
    std::string name;
    std::getline(in, name);
    return name;
}
}  // namespace

job_state ask_job(const proto::connection_info& info, std::chrono::milliseconds timeout) {
    const auto deadline = proto::clock::now() + timeout;
    const proto::digest key = proto::from_hex(info.key);
    std::vector<std::string> addrs{info.ip};
    for (const auto& a : info.addresses)
        if (a != info.ip) addrs.push_back(a);
    bool timed_out = false;
    for (const auto& ip : addrs) {
        const int fd = connect_before(ip, info.port, deadline, &timed_out);
        if (fd < 0) continue;
        try {
            const auto ch = proto::decode<proto::challenge>(proto::read_frame(fd, deadline, 1 << 16).view());
            proto::auth_request req;
            req.mac = proto::auth_mac(key, proto::client_label, ch.nonce);
            req.client_nonce = proto::random_bytes32();
            proto::write_frame(fd, proto::encode(req));
            const auto rep = proto::decode<proto::auth_reply>(proto::read_frame(fd, deadline, 1 << 24).view());
            ::close(fd);
            if (rep.ok && proto::macs_equal(rep.mac, proto::auth_mac(key, proto::bridge_label, req.client_nonce)))
                return job_state::live;
            // Someone answers there without the key: the port is another job's now.
        } catch (const proto::timeout_error&) {
            ::close(fd);
            timed_out = true;
        } catch (const std::exception&) {
            ::close(fd);  // not pcluster's protocol, or it hung up: not this job
        }
    }
    return timed_out ? job_state::unknown : job_state::dead;
}

void write_connection_file(const fs::path& path, const protocol::connection_info& info) {
    const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::current_path();
    if (!fs::exists(dir)) {
        fs::create_directories(dir);
        fs::permissions(dir, fs::perms::owner_all);
    }
    // Checked after creating it: someone may have made it first.
    protocol::check_private_dir(dir.string());
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISREG(st.st_mode))
            throw std::runtime_error("connection file " + path.string() +
                                     " exists and is not a regular file: remove it or choose another place");
        if (st.st_uid != ::geteuid())
            throw std::runtime_error("connection file " + path.string() + " belongs to uid " + std::to_string(st.st_uid) +
                                     ", not to you: not replacing another user's file; choose another place with "
                                     "--connection-file");
        std::ifstream in(path);
        std::stringstream text;
        text << in.rdbuf();
        try {
            const auto old = protocol::connection_info_from_json(text.str());
            // Judged by asking its port, not by its pid alone (pids are reused).
            auto state = ask_job(old, std::chrono::seconds(3));
            if (state == job_state::unknown && process_alive(old.bridge_pid) &&
                process_name(old.bridge_pid) == "pcluster-bridge")
                state = job_state::live;  // nobody answered in time, but its bridge is there
            if (state == job_state::live)
                throw std::runtime_error("connection file " + path.string() + " belongs to a running job (job " +
                                         old.job_id + ", answering at " + old.ip + ":" + std::to_string(old.port) +
                                         "); stop that job (rc.shutdown()) or give this one its own file with "
                                         "--connection-file PATH");
        } catch (const protocol::connection_file_error&) {
        }
        spdlog::warn("replacing stale connection file {}", path.string());
    }
    const std::string tmp = path.string() + ".tmp." + std::to_string(getpid());
    ::unlink(tmp.c_str());  // our own leftover, if any (the directory is ours)
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot create " + tmp);
    const std::string text = protocol::to_json(info);
    const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::fchmod(fd, 0600);
    ::close(fd);
    if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
        ::unlink(tmp.c_str());
        throw std::system_error(errno, std::generic_category(), "cannot write " + path.string());
    }
}

}  // namespace pcluster::bridge
