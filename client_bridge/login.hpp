// The bridge's side of the login handshake as pure functions (no sockets, no clock), so the
// fuzzer (tests/fuzz/fuzz_login.cpp) drives exactly what the bridge runs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "pcluster/protocol/auth.hpp"
#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/messages.hpp"
#include "pcluster/protocol/shm.hpp"

namespace pcluster::bridge {

// Frames a client may send before it is authenticated are at most this large.
inline constexpr std::uint64_t login_max_frame = 4096;

struct login_verdict {
    bool ok = false;
    std::string why;  // when refused: for the log (the client hears only "authentication failed")
    protocol::auth_request req;
    // The owner tag of the client's shared-memory segments ("c<pid>x<random>"), proven by the
    // probe file it named; empty when it offered none. Only the bridge's shm_probe check (which
    // reads the file) decides whether the client shares /dev/shm.
    std::string shm_owner;
};

// "/dev/shm/pcluster-<owner>-<random>" -> "<owner>" (the tag create_shm puts in every segment the
// client makes); "" for any other form. The owner may itself hold no '-'.
inline std::string shm_owner_of(const std::string& path) {
    if (!protocol::valid_shm_path(path)) return "";
    const std::string head = std::string(protocol::shm_dir) + "/" + protocol::shm_prefix;
    const std::string rest = path.substr(head.size());
    const auto dash = rest.find('-');
    if (dash == std::string::npos || dash == 0 || dash + 1 == rest.size()) return "";
    if (rest.find('-', dash + 1) != std::string::npos) return "";
    return rest.substr(0, dash);
}

// Whether `path` is a segment of owner `owner` (see shm_owner_of).
inline bool shm_path_of_owner(const std::string& path, const std::string& owner) {
    return !owner.empty() && shm_owner_of(path) == owner;
}

// Judges a client's first frame against the job's key and the nonce the bridge sent it. Never
// throws: anything malformed is a refusal saying why.
inline login_verdict judge_login(const protocol::frame_view& f, const protocol::digest& key,
                                 const protocol::digest& nonce) {
    login_verdict v;
    try {
        v.req = protocol::decode<protocol::auth_request>(f);
    } catch (const std::exception& e) {
        v.why = std::string("not a login: ") + e.what();
        return v;
    }
    if (!protocol::macs_equal(v.req.mac, protocol::auth_mac(key, protocol::client_label, nonce))) {
        v.why = "wrong key";
        return v;
    }
    v.ok = true;
    if (!v.req.shm_probe.empty()) v.shm_owner = shm_owner_of(v.req.shm_probe);
    return v;
}

// The reply to an accepted login.
inline protocol::auth_reply accept_reply(const login_verdict& v, const protocol::digest& key, std::uint32_t client_no,
                                         std::vector<protocol::engine_info> engines, bool shm_ok) {
    protocol::auth_reply rep;
    rep.ok = true;
    rep.client_no = client_no;
    rep.mac = protocol::auth_mac(key, protocol::bridge_label, v.req.client_nonce);
    rep.engines = std::move(engines);
    rep.shm_ok = shm_ok;
    return rep;
}

// The reply to a refused login: the same words whatever went wrong.
inline protocol::auth_reply refusal_reply() {
    protocol::auth_reply rep;
    rep.ok = false;
    rep.message = "authentication failed: the key does not match this job";
    return rep;
}

}  // namespace pcluster::bridge
