#include "job_file.hpp"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <system_error>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcluster/protocol/config.hpp"

namespace fs = std::filesystem;

namespace pcluster::bridge {

namespace {
bool process_alive(long pid) { return pid > 0 && (kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM); }
}  // namespace

void write_connection_file(const fs::path& path, const protocol::connection_info& info) {
    if (path.has_parent_path() && !fs::exists(path.parent_path())) {
        fs::create_directories(path.parent_path());
        fs::permissions(path.parent_path(), fs::perms::owner_all);
    }
    if (fs::exists(path)) {
        std::ifstream in(path);
        std::stringstream text;
        text << in.rdbuf();
        try {
            const auto old = protocol::connection_info_from_json(text.str());
            if (process_alive(old.bridge_pid))
                throw std::runtime_error("connection file " + path.string() + " belongs to a running job (bridge pid " +
                                         std::to_string(old.bridge_pid) +
                                         "); stop that job (rc.shutdown()) or give this one its own file with "
                                         "--connection-file PATH");
        } catch (const protocol::connection_file_error&) {
        }
        spdlog::warn("replacing stale connection file {}", path.string());
    }
    const std::string tmp = path.string() + ".tmp." + std::to_string(getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
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
