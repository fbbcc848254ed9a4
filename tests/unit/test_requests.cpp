// The controller's checks of a request from the bridge (mpi_controller/requests.hpp): each
// refusal has its error kind, the request id, and words that say what is wrong.
#include <catch2/catch.hpp>

#include <cstring>

#include "pcluster/protocol/codec.hpp"
#include "requests.hpp"

using namespace pcluster::protocol;
using pcluster::controller::check_request;
using pcluster::controller::refusal;

namespace {
template <class T>
received_frame frame_of(const T& msg, std::vector<std::string> bufs = {}) {
    std::vector<std::span<const char>> spans;
    for (auto& b : bufs) spans.emplace_back(b.data(), b.size());
    const auto flat = encode(msg, spans).flatten();
    auto bytes = std::make_shared<byte_buffer>(flat.size());
    std::memcpy(bytes->data(), flat.data(), flat.size());
    return {bytes};
}

route to(std::vector<std::int32_t> targets, std::uint32_t shared = 0, std::vector<std::uint32_t> parts = {}) {
    return route{request_id(4, 2), std::move(targets), shared, std::move(parts), 0, 1};
}

const std::vector<bool> alive4(4, true);

refusal refused(received_frame f, const std::vector<bool>& alive) {
    try {
        check_request(std::move(f), alive, {});
    } catch (const refusal& r) {
        return r;
    }
    FAIL("the request was accepted");
    return refusal(error_kind::none, "");
}
}  // namespace

TEST_CASE("requests: targets resolved, every engine when none are named", "[requests]") {
    auto q = check_request(frame_of(pull_request{to({}), {"a"}, true}), alive4, {});
    CHECK(q.targets == std::vector<int>{0, 1, 2, 3});
    q = check_request(frame_of(pull_request{to({2, 0}), {"a"}, true}), alive4, {});
    CHECK(q.targets == std::vector<int>{2, 0});
    CHECK(q.r.id == request_id(4, 2));
    CHECK_FALSE(q.task);
}

TEST_CASE("requests: no targets means every live engine; a dead one named stays a target", "[requests]") {
    const std::vector<bool> alive = {true, false, true, true};
    auto q = check_request(frame_of(pull_request{to({}), {"a"}, true}), alive, {1});
    CHECK(q.targets == std::vector<int>{0, 2, 3});
    q = check_request(frame_of(pull_request{to({1, 3}), {"a"}, true}), alive, {1});
    CHECK(q.targets == std::vector<int>{1, 3});  // the controller answers EngineDied for 1
    // A client that had not heard of the death meant engine 1 too: it gets its EngineDied.
    auto r = to({});
    r.deaths_seen = 0;
    pull_request p{r, {"a"}, true};
    q = check_request(frame_of(p), alive, {1});
    CHECK(q.targets == std::vector<int>{0, 1, 2, 3});
    p.r.deaths_seen = 1;
    q = check_request(frame_of(p), alive, {1});
    CHECK(q.targets == std::vector<int>{0, 2, 3});
}

TEST_CASE("requests: a task may run anywhere when it names no engines", "[requests]") {
    task_request t;
    t.r = to({});
    const auto q = check_request(frame_of(t), alive4, {});
    CHECK(q.task);
    CHECK(q.targets.empty());
}

TEST_CASE("requests: refusals name the kind, the id and the fix", "[requests]") {
    auto r = refused(frame_of(pull_request{to({7}), {"a"}, true}), alive4);
    CHECK(r.kind == error_kind::no_such_engine);
    CHECK(r.id == request_id(4, 2));
    CHECK_THAT(r.what(), Catch::Contains("engine id 7 out of range") && Catch::Contains("0..3"));

    r = refused(frame_of(pull_request{to({1, 1}), {"a"}, true}), alive4);
    CHECK(r.kind == error_kind::bad_request);
    CHECK_THAT(r.what(), Catch::Contains("given twice"));

    r = refused(frame_of(scatter_request{to({0, 1}, 0, {1}), "x", false}, {"p"}), alive4);
    CHECK_THAT(r.what(), Catch::Contains("1 parts for 2 targets"));

    r = refused(frame_of(push_request{to({0}, 2)}, {"only one"}), alive4);
    CHECK_THAT(r.what(), Catch::Contains("names 2 buffers, the frame has 1"));

    r = refused(frame_of(shutdown_request{to({0})}), alive4);
    CHECK_THAT(r.what(), Catch::Contains("shutdown must target every engine"));

    task_request t;
    t.r = to({}, 0, {1});
    r = refused(frame_of(t, {"x"}), alive4);
    CHECK_THAT(r.what(), Catch::Contains("a task has no parts"));

    r = refused(frame_of(engine_reply{}), alive4);  // not a request at all
    CHECK(r.kind == error_kind::bad_request);
}

TEST_CASE("requests: a shared-memory reference to a file that is not pcluster's is refused", "[requests]") {
    const auto r = refused(frame_of(shm_frame{request_id(4, 3), "/etc/passwd", 10, false}), alive4);
    CHECK(r.kind == error_kind::bad_request);
    CHECK(r.id == request_id(4, 3));
    CHECK_THAT(r.what(), Catch::Contains("not one pcluster makes"));
}
