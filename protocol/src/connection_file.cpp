#include "pcluster/protocol/connection_file.hpp"

#include <nlohmann/json.hpp>

#include <cstdlib>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcluster/protocol/config.hpp"

#include "pcluster/protocol/auth.hpp"
#include "pcluster/protocol/frame.hpp"

namespace pcluster::protocol {

std::string connection_dir() {
    if (auto d = config::text(config::knob::connection_dir); !d.empty()) return d;
    const char* home = std::getenv("HOME");
    std::string h = home && *home ? home : "";
    if (h.empty()) {
        if (const passwd* pw = getpwuid(geteuid()); pw && pw->pw_dir) h = pw->pw_dir;
    }
    return (h.empty() ? std::string("/") : h) + "/.pcluster";
}

std::string connection_file_for_job(const std::string& job_id) { return connection_dir() + "/slurm-" + job_id + ".json"; }

std::string default_connection_file() {
    if (auto f = config::text(config::knob::connection_file); !f.empty()) return f;
    if (const char* job = std::getenv("SLURM_JOB_ID"); job && *job) return connection_file_for_job(job);
    return connection_dir() + "/connection.json";
}

namespace {
std::string octal_mode(mode_t m) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(m & 07777));
    return buf;
}

// Why `st` (of `what` at `path`) is not safe, or "".
std::string unsafe(const struct stat& st, const std::string& what, const std::string& path, bool dir) {
    const uid_t me = ::geteuid();
    if (st.st_uid != me && st.st_uid != 0)
        return what + " " + path + " is owned by uid " + std::to_string(st.st_uid) + ", not by you (uid " +
               std::to_string(me) + "): another user could have put it there; remove it" +
               (dir ? " or choose another place (--connection-file, PCLUSTER_CONNECTION_DIR)" : "");
    const bool others_write = st.st_mode & (S_IWGRP | S_IWOTH);
    if (others_write && !(dir && (st.st_mode & S_ISVTX)))
        return what + " " + path + " is writable by " + ((st.st_mode & S_IWOTH) ? "others" : "its group") + " (mode " +
               octal_mode(st.st_mode) + "): another user could replace what is in it; chmod go-w " + path;
    return "";
}
}  // namespace

void check_private_dir(const std::string& dir) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0)
        throw connection_file_error("cannot use directory " + dir + ": " + std::strerror(errno));
    if (!S_ISDIR(st.st_mode)) throw connection_file_error(dir + " is not a directory");
    if (auto why = unsafe(st, "directory", dir, true); !why.empty()) throw connection_file_error(why);
}

void check_private_file(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        throw connection_file_error("cannot use connection file " + path + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) throw connection_file_error("connection file " + path + " is not a regular file");
    if (auto why = unsafe(st, "connection file", path, false); !why.empty()) throw connection_file_error(why);
    // The directory it is named in (a link there could be swapped) and the one it really is in.
    const auto named = std::filesystem::absolute(path).parent_path();
    check_private_dir(named.string());
    std::error_code ec;
    const auto real = std::filesystem::canonical(path, ec);
    if (!ec && real.parent_path() != named) check_private_dir(real.parent_path().string());
}

std::string to_json(const connection_info& c) {
    nlohmann::json j;
    for_each_field<connection_info>([&](auto fd) { j[fd.name] = c.*(fd.member); });
    return j.dump(2) + "\n";
}

connection_info connection_info_from_json(std::string_view text) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw connection_file_error(std::string("not JSON (") + e.what() + ")");
    }
    if (!j.is_object()) throw connection_file_error("not a JSON object");
    if (auto v = j.find("version"); v == j.end() || !v->is_number_unsigned() || *v != protocol_version)
        throw connection_file_error("written by a pcluster of protocol version " +
                                    (v == j.end() ? std::string("?") : v->dump()) + ", this one speaks version " +
                                    std::to_string(protocol_version) +
                                    ": use the same pcluster build for the job and the client");
    connection_info c;
    for_each_field<connection_info>([&](auto fd) {
        auto it = j.find(fd.name);
        if (it == j.end()) throw connection_file_error(std::string("field '") + fd.name + "' is missing");
        try {
            it->get_to(c.*(fd.member));
        } catch (const nlohmann::json::exception&) {
            throw connection_file_error(std::string("field '") + fd.name + "' has the wrong type");
        }
    });
    try {
        from_hex(c.key);
    } catch (const std::exception&) {
        throw connection_file_error("field 'key' is not 64 hex digits");
    }
    if (c.port == 0 || c.port > 65535) throw connection_file_error("field 'port' is not a TCP port");
    if (c.ip.empty()) throw connection_file_error("field 'ip' is empty");
    return c;
}

}  // namespace pcluster::protocol
