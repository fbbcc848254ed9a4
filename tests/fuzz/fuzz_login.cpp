// libFuzzer target: the bridge's login handshake (client_bridge/login.hpp, what the bridge runs
// on a connection that has not logged in). The input is what a stranger sends, cut into chunks,
// through a reader limited as the bridge limits it; every frame is judged against the job's key.
// With bit 0 of the first byte the stranger knows the key: the fuzzed probe path and token then
// ride in an auth_request with the right MAC, which must be accepted, and its reply encoded.
#include <cstdint>
#include <cstring>
#include <span>

#include "login.hpp"
#include "pcluster/protocol/stream.hpp"
#include "fuzz_support.hpp"

using namespace pcluster::protocol;
using namespace pcluster::bridge;

namespace {
const digest key = [] {
    digest k{};
    for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(i * 7 + 1);
    return k;
}();
const digest nonce = [] {
    digest k{};
    for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(255 - i);
    return k;
}();

void judge(const frame_view& v, bool must_accept) {
    const login_verdict verdict = judge_login(v, key, nonce);
    if (must_accept && !verdict.ok) __builtin_trap();
    if (!verdict.ok && verdict.why.empty()) __builtin_trap();
    if (verdict.ok) {
        if (!verdict.shm_owner.empty() && !shm_path_of_owner(verdict.req.shm_probe, verdict.shm_owner)) __builtin_trap();
        const auto rep = accept_reply(verdict, key, 7, {{0, "h", 1, true, ""}}, false);
        const auto f = encode(rep);
        const auto back = decode<auth_reply>(frame_view(f.head.data(), f.head.size()));
        if (!macs_equal(back.mac, auth_mac(key, bridge_label, verdict.req.client_nonce))) __builtin_trap();
    } else {
        (void)encode(refusal_reply());
    }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const std::uint8_t mode = data[0];
    std::span<const char> rest(reinterpret_cast<const char*>(data + 1), size - 1);
    if (mode & 1) {
        // Knows the key: probe path and token from the input.
        auth_request req;
        req.mac = auth_mac(key, client_label, nonce);
        const std::size_t plen = std::min<std::size_t>(rest.size(), mode >> 1);
        req.shm_probe.assign(rest.data(), plen);
        for (std::size_t i = 0; i < req.shm_token.size() && plen + i < rest.size(); ++i)
            req.shm_token[i] = static_cast<std::uint8_t>(rest[plen + i]);
        const auto f = encode(req);
        if (f.head.size() <= login_max_frame) judge(frame_view(f.head.data(), f.head.size()), true);
        (void)shm_owner_of(req.shm_probe);
        return 0;
    }
    // A stranger's bytes, in chunks as they may arrive.
    frame_reader reader(login_max_frame);
    const std::size_t chunk = (mode >> 1) & 31;
    try {
        pcluster::fuzz::feed_chunked(
            reader, rest, chunk,
            [](received_frame& f) {
                if (f.bytes->size() > login_max_frame) __builtin_trap();
                judge(f.view(), false);
            },
            [] { __builtin_trap(); });  // the bridge never skips a stranger's bad frame
    } catch (const frame_error&) {
        // The bridge closes such a connection.
    }
    return 0;
}
