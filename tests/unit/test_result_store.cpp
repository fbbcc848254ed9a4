// The controller's store of results by id (mpi_controller/result_store.hpp): records, kept
// frames by reference or copy, bounds by count and bytes with the oldest finished dropped first,
// dropped and purged ids that say so, task requests kept for resubmit.
#include <catch2/catch.hpp>

#include <cstring>
#include <string>

#include "pcluster/protocol/messages.hpp"
#include "result_store.hpp"

using pcluster::controller::result_store;
using pcluster::controller::store_limits;
using pcluster::protocol::byte_buffer;
using pcluster::protocol::message_type;
using pcluster::protocol::no_engine;
using pcluster::protocol::request_id;
using pcluster::protocol::result_state;

namespace {
constexpr auto apply_t = static_cast<std::uint16_t>(message_type::apply_request);
constexpr auto task_t = static_cast<std::uint16_t>(message_type::task_request);

std::shared_ptr<byte_buffer> bytes(const std::string& s) {
    auto b = std::make_shared<byte_buffer>(s.size());
    std::memcpy(b->data(), s.data(), s.size());
    return b;
}
std::string text(const std::shared_ptr<const byte_buffer>& b) { return {b->data(), b->size()}; }

store_limits limits(std::size_t records, std::uint64_t bytes, std::uint64_t item) { return {records, bytes, item}; }
}  // namespace

TEST_CASE("result store: a request is pending until every target replied, then done with its frames", "[results]") {
    result_store s(limits(10, 1 << 20, 1 << 20));
    const auto id = request_id(1, 1);
    s.submitted(id, apply_t, {0, 2}, false, 100.0);
    CHECK(s.record(id).state == result_state::pending);
    const std::string a = "reply-of-0", b = "reply-of-2";
    s.replied(id, 2, false, {b.data(), b.size()}, 101.0);
    CHECK(s.record(id).state == result_state::pending);
    CHECK(s.frames(id).empty());
    auto owner = bytes(a);
    s.replied(id, 0, false, {owner->data(), owner->size()}, 102.0, owner);
    const auto r = s.record(id);
    CHECK(r.state == result_state::done);
    CHECK(r.type == apply_t);
    CHECK(r.targets == std::vector<std::int32_t>{0, 2});
    CHECK(r.submitted == 100.0);
    CHECK(r.completed == 102.0);
    REQUIRE(r.replies.size() == 2);
    CHECK(r.replies[0].engine == 2);
    CHECK(r.replies[1].kept);
    const auto f = s.frames(id);
    REQUIRE(f.size() == 2);
    CHECK(text(f[0]) == b);
    CHECK(f[1].get() == owner.get());  // kept by reference, not copied
    CHECK(s.finished_count() == 1);
    CHECK(s.bytes() == a.size() + b.size());
    CHECK(s.record(request_id(1, 2)).state == result_state::unknown);
}

TEST_CASE("result store: the oldest finished go first, by count and by bytes, and say they were dropped", "[results]") {
    result_store s(limits(3, 100, 100));
    const std::string r40(40, 'x');
    for (std::uint32_t k = 1; k <= 4; ++k) {
        s.submitted(request_id(1, k), apply_t, {0}, false, k);
    }
    // Finished out of order: 3 first, then 1, 2, 4. Bytes: 3 x 40 > 100, so the oldest finished goes.
    for (std::uint32_t k : {3u, 1u, 2u}) s.replied(request_id(1, k), 0, false, {r40.data(), 10}, k);
    CHECK(s.finished_count() == 3);
    s.replied(request_id(1, 4), 0, false, {r40.data(), 40}, 5);  // 10+10+10+40 bytes, 4 records > 3
    CHECK(s.record(request_id(1, 3)).state == result_state::dropped);
    CHECK(s.record(request_id(1, 1)).state == result_state::done);
    const std::string r60(60, 'y');
    s.submitted(request_id(1, 5), apply_t, {0}, false, 6);
    s.replied(request_id(1, 5), 0, false, {r60.data(), r60.size()}, 6);  // 4 records, then 40+60+10 > 100
    CHECK(s.record(request_id(1, 1)).state == result_state::dropped);
    CHECK(s.record(request_id(1, 2)).state == result_state::dropped);
    CHECK(s.record(request_id(1, 4)).state == result_state::done);
    CHECK(s.record(request_id(1, 5)).state == result_state::done);
    CHECK(s.bytes() <= 100);
    CHECK(s.finished_count() <= 3);
    // Pending ones are never dropped for the bounds.
    s.submitted(request_id(2, 1), apply_t, {0}, false, 7);
    for (std::uint32_t k = 6; k < 20; ++k) {
        s.submitted(request_id(1, k), apply_t, {0}, false, k);
        s.replied(request_id(1, k), 0, false, {r40.data(), 1}, k);
    }
    CHECK(s.record(request_id(2, 1)).state == result_state::pending);
}

TEST_CASE("result store: a reply over the item bound is recorded, not kept", "[results]") {
    result_store s(limits(10, 1000, 16));
    const std::string big(17, 'b'), small(16, 's');
    s.submitted(request_id(1, 1), apply_t, {0, 1}, false, 1);
    s.replied(request_id(1, 1), 0, false, {big.data(), big.size()}, 2);
    s.replied(request_id(1, 1), 1, false, {small.data(), small.size()}, 2);
    const auto r = s.record(request_id(1, 1));
    CHECK(r.state == result_state::done);
    CHECK_FALSE(r.replies[0].kept);
    CHECK(r.replies[0].size == 17);
    CHECK(r.replies[1].kept);
    CHECK(s.frames(request_id(1, 1)).size() == 1);
    CHECK(s.bytes() == 16);
}

TEST_CASE("result store: a refusal of a request it never saw is its record", "[results]") {
    result_store s(limits(10, 1000, 1000));
    const std::string refusal = "refused";
    s.replied(request_id(3, 9), no_engine, true, {refusal.data(), refusal.size()}, 1);
    CHECK(s.record(request_id(3, 9)).state == result_state::done);
    CHECK(text(s.frames(request_id(3, 9)).at(0)) == refusal);
    // Another reply to an id it never saw is not recorded (an internal request's).
    s.replied(request_id(3, 10), 0, false, {refusal.data(), refusal.size()}, 1);
    CHECK(s.record(request_id(3, 10)).state == result_state::unknown);
    // A refusal answers the whole request, however many targets it had.
    s.submitted(request_id(3, 11), apply_t, {0, 1, 2}, false, 1);
    s.replied(request_id(3, 11), no_engine, true, {refusal.data(), refusal.size()}, 2);
    CHECK(s.record(request_id(3, 11)).state == result_state::done);
}

TEST_CASE("result store: tasks record where they ran and keep their request for resubmit", "[results]") {
    result_store s(limits(10, 1000, 100));
    const auto id = request_id(1, 1);
    auto req = bytes("task-request");
    s.submitted(id, task_t, {}, true, 1, req);
    CHECK(s.task_request(id) == nullptr);  // not while it runs
    const std::string rep = "task-reply";
    s.replied(id, 3, false, {rep.data(), rep.size()}, 2);
    const auto r = s.record(id);
    CHECK(r.targets == std::vector<std::int32_t>{3});
    CHECK(r.resubmittable);
    CHECK(s.task_request(id).get() == req.get());
    CHECK(s.bytes() == req->size() + rep.size());
    s.resubmitted(id, request_id(2, 5));
    CHECK(s.record(id).resubmitted_as == request_id(2, 5));
    // A request too large to keep: not resubmittable.
    s.submitted(request_id(1, 2), task_t, {}, true, 3, bytes(std::string(101, 'r')));
    s.replied(request_id(1, 2), 0, false, {rep.data(), rep.size()}, 4);
    CHECK_FALSE(s.record(request_id(1, 2)).resubmittable);
}

TEST_CASE("result store: purge forgets finished ones, refuses pending ones, and says purged", "[results]") {
    result_store s(limits(10, 1000, 1000));
    const std::string rep = "r";
    for (std::uint32_t k = 1; k <= 3; ++k) s.submitted(request_id(1, k), apply_t, {static_cast<int>(k % 2)}, false, k);
    s.replied(request_id(1, 1), 1, false, {rep.data(), 1}, 4);
    s.replied(request_id(1, 2), 0, false, {rep.data(), 1}, 4);
    CHECK(s.finished({1}) == std::vector<std::uint64_t>{request_id(1, 1)});
    CHECK(s.finished() == std::vector<std::uint64_t>{request_id(1, 1), request_id(1, 2)});
    CHECK_FALSE(s.purge(request_id(1, 3)));  // pending
    CHECK(s.purge(request_id(1, 1)));
    CHECK(s.record(request_id(1, 1)).state == result_state::purged);
    CHECK(s.finished_count() == 1);
    CHECK(s.bytes() == 1);
    CHECK(s.all().size() == 2);
    CHECK(s.all()[0].id == request_id(1, 2));  // in acceptance order
}

TEST_CASE("result store: keeping nothing when its bound is 0", "[results]") {
    result_store s(limits(0, 1000, 1000));
    s.submitted(request_id(1, 1), apply_t, {0}, false, 1);
    CHECK(s.record(request_id(1, 1)).state == result_state::unknown);
    CHECK(s.all().empty());
}
