// One templated round trip per message: encode into a frame, parse the frame, decode, compare.
#include <catch2/catch.hpp>

#include "pcluster/protocol/codec.hpp"

using namespace pcluster::protocol;

namespace {

route sample_route() { return route{0x0000000700000003ull, {0, 2, 5}, 2, {1, 3, 2}}; }
engine_info sample_engine(int i) { return engine_info{i, "node-" + std::to_string(i), 4242 + i}; }

template <class T> T sample();
template <> challenge sample() { challenge c; c.nonce.fill(7); c.job_id = "vm-123"; return c; }
template <> auth_request sample() { auth_request a; a.mac.fill(1); a.client_nonce.fill(2); return a; }
template <> auth_reply sample() { auth_reply a; a.ok = true; a.message = "welcome"; a.client_no = 9; a.mac.fill(3); a.engines = {sample_engine(0), sample_engine(1)}; return a; }
template <> execute_request sample() { return execute_request{sample_route(), "import numpy as np\nx = 1", false}; }
template <> push_request sample() { return push_request{sample_route()}; }
template <> pull_request sample() { return pull_request{sample_route(), {"a", "b"}, false}; }
template <> apply_request sample() { return apply_request{sample_route()}; }
template <> scatter_request sample() { return scatter_request{sample_route(), "x", true}; }
template <> gather_request sample() { return gather_request{sample_route(), "x"}; }
template <> map_request sample() { return map_request{sample_route()}; }
template <> shutdown_request sample() { return shutdown_request{route{}}; }
template <> task_request sample() {
    return task_request{sample_route(), task_kind::map_chunk, {1, 2}, {3}, 2, 30.5, true, true};
}
template <> control_request sample() { return control_request{sample_route(), control_action::abort, {5, 6}}; }
template <> control_reply sample() {
    return control_reply{9, true, "ok", {5}, {"task 6: running on engine 2"}, {{0, 2, 10, true}, {1, 0, 3, false}}, 4, 1};
}
template <> engine_reply sample() {
    return engine_reply{42, 3, reply_status::error, "NameError", "name 'a' is not defined", {"Traceback...", "NameError"}, 1.5, 2.5,
                        "printed\n", "warned\n", "42", true};
}
template <> job_ended sample() { return job_ended{"shutdown requested"}; }
template <> output sample() { return output{(std::uint64_t{7} << 32) | 9, 2, "step 1\n", "careful\n"}; }
template <> job_info sample() { return job_info{"vm-1", {sample_engine(0)}, "vm", 77}; }
template <> shm_frame sample() { return shm_frame{0x0000000200000009ull, "/dev/shm/pcluster-c12x34-abcdef", 1 << 20, true}; }
template <> shm_return sample() { return shm_return{{"/dev/shm/pcluster-s1-aa", "/dev/shm/pcluster-s1-bb"}, false}; }
template <> bridge_ready sample() { return bridge_ready{"127.0.0.1", 40000, "/root/.pcluster/connection.json"}; }

}  // namespace

TEMPLATE_TEST_CASE("every message survives a frame round trip", "[messages]", challenge, auth_request, auth_reply,
                   execute_request, push_request, pull_request, apply_request, scatter_request, gather_request,
                   map_request, shutdown_request, task_request, control_request, control_reply, engine_reply, job_ended, output, shm_frame, shm_return, job_info,
                   bridge_ready) {
    const TestType msg = sample<TestType>();
    const std::string payload_a = "stream", payload_b(100000, 'z');
    auto out = encode(msg, {{payload_a.data(), payload_a.size()}, {payload_b.data(), payload_b.size()}});
    const auto flat = out.flatten();
    REQUIRE(flat.size() == out.size());

    frame_view v(flat.data(), flat.size());
    CHECK(v.type() == static_cast<std::uint16_t>(type_of<TestType>::value));
    REQUIRE(v.nbufs() == 2);
    CHECK(std::string(v.data() + v.buf_offset(0), v.buf_len(0)) == payload_a);
    CHECK(std::string(v.data() + v.buf_offset(1), v.buf_len(1)) == payload_b);
    CHECK(decode<TestType>(v) == msg);
}

TEST_CASE("decoding as the wrong type names both types", "[messages]") {
    const auto flat = encode(sample<pull_request>()).flatten();
    frame_view v(flat.data(), flat.size());
    try {
        decode<push_request>(v);
        FAIL("decoded a pull_request as a push_request");
    } catch (const frame_error& e) {
        CHECK_THAT(e.what(), Catch::Contains("push_request") && Catch::Contains("pull_request"));
    }
}

TEST_CASE("the route of any request is readable without knowing its type", "[messages]") {
    const auto flat = encode(sample<scatter_request>()).flatten();
    CHECK(decode_route(frame_view(flat.data(), flat.size())) == sample_route());
    const auto reply = encode(sample<engine_reply>()).flatten();
    CHECK_THROWS_AS(decode_route(frame_view(reply.data(), reply.size())), frame_error);
}
