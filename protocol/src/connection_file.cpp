#include "pcluster/protocol/connection_file.hpp"

#include <nlohmann/json.hpp>

#include <cstdlib>

#include <pwd.h>
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
