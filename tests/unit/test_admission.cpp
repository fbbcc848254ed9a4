// When a client's requests go to the engines (mpi_controller/admission.hpp): a window per
// engine, a hold while its replies are unread, each client's order kept, other clients never
// waiting for it, deaths and departures answered.
#include <catch2/catch.hpp>

#include <algorithm>

#include "admission.hpp"
#include "pcluster/protocol/messages.hpp"

using pcluster::controller::admission;
using pcluster::controller::request;
using pcluster::protocol::request_id;

namespace {
request req(std::uint32_t client, std::uint32_t seq, std::vector<int> targets) {
    request q;
    q.r.id = request_id(client, seq);
    q.targets = std::move(targets);
    return q;
}

std::vector<std::uint64_t> ids(const std::vector<request>& qs) {
    std::vector<std::uint64_t> v;
    for (const auto& q : qs) v.push_back(q.r.id);
    return v;
}

const std::vector<bool> alive3(3, true);
}  // namespace

TEST_CASE("admission: a client's requests beyond the window wait, in order, and go as replies come", "[admission]") {
    admission a(3, 2);
    CHECK(a.offer(req(1, 1, {0}), alive3));
    CHECK(a.offer(req(1, 2, {0}), alive3));
    CHECK_FALSE(a.offer(req(1, 3, {0}), alive3));
    // Engine 1 has room, but an earlier request waits: a later one never overtakes it.
    CHECK_FALSE(a.offer(req(1, 4, {1}), alive3));
    CHECK(a.waiting() == 2);
    CHECK(a.take_ready(alive3).empty());
    a.answered(request_id(1, 1), 0);
    CHECK(ids(a.take_ready(alive3)) == std::vector<std::uint64_t>{request_id(1, 3), request_id(1, 4)});
    CHECK(a.waiting() == 0);
}

TEST_CASE("admission: a request to several engines needs room on each; other clients do not wait", "[admission]") {
    admission a(3, 1);
    CHECK(a.offer(req(1, 1, {1}), alive3));
    CHECK_FALSE(a.offer(req(1, 2, {0, 1, 2}), alive3));
    CHECK(a.offer(req(2, 1, {0, 1, 2}), alive3));  // another client's window is its own
    a.answered(request_id(2, 1), 1);               // not client 1's: no room for it
    CHECK(a.take_ready(alive3).empty());
    a.answered(request_id(1, 1), 1);
    CHECK(ids(a.take_ready(alive3)) == std::vector<std::uint64_t>{request_id(1, 2)});
    // It holds a place on every engine now.
    CHECK_FALSE(a.offer(req(1, 3, {2}), alive3));
}

TEST_CASE("admission: a held client sends nothing until released", "[admission]") {
    admission a(3, 4);
    a.hold(1);
    CHECK_FALSE(a.offer(req(1, 1, {0}), alive3));
    CHECK(a.offer(req(2, 1, {0}), alive3));
    CHECK(a.take_ready(alive3).empty());
    a.release(1);
    CHECK(ids(a.take_ready(alive3)) == std::vector<std::uint64_t>{request_id(1, 1)});
    // Held with room in the window: still nothing goes.
    a.hold(1);
    a.answered(request_id(1, 1), 0);
    CHECK_FALSE(a.offer(req(1, 2, {0}), alive3));
    CHECK(a.take_ready(alive3).empty());
}

TEST_CASE("admission: a death is answered for waiting requests; dead targets take no room", "[admission]") {
    admission a(3, 1);
    CHECK(a.offer(req(1, 1, {0}), alive3));
    CHECK_FALSE(a.offer(req(1, 2, {0, 2}), alive3));
    CHECK_FALSE(a.offer(req(1, 3, {1}), alive3));
    CHECK(a.engine_died(0) == std::vector<std::uint64_t>{request_id(1, 2)});
    const std::vector<bool> alive = {false, true, true};
    // Its reply to request 1 is answered for (lost): the rest go, to the live targets.
    a.answered(request_id(1, 1), 0);
    CHECK(ids(a.take_ready(alive)) == std::vector<std::uint64_t>{request_id(1, 2), request_id(1, 3)});
    // Even without that answer, a dead target never blocks: only engine 2's room counts.
    admission b(3, 1);
    CHECK(b.offer(req(1, 1, {0}), alive3));
    CHECK(b.offer(req(1, 2, {0, 2}), alive));
}

TEST_CASE("admission: an aborted request that waits is dropped, and the one behind it may go", "[admission]") {
    admission a(3, 1);
    CHECK(a.offer(req(1, 1, {0}), alive3));
    CHECK_FALSE(a.offer(req(1, 2, {0}), alive3));
    CHECK_FALSE(a.offer(req(1, 3, {1}), alive3));  // waits behind 2, though engine 1 has room
    CHECK_FALSE(a.abort(request_id(1, 1)));         // sent already: not here
    CHECK(a.abort(request_id(1, 2)));
    CHECK(a.waiting() == 1);
    CHECK(ids(a.take_ready(alive3)) == std::vector<std::uint64_t>{request_id(1, 3)});
    CHECK_FALSE(a.abort(request_id(1, 2)));
    CHECK_FALSE(a.abort(request_id(7, 1)));
}

TEST_CASE("admission: a client that leaves takes its waiting requests; a stop takes all", "[admission]") {
    admission a(3, 1);
    CHECK(a.offer(req(1, 1, {0}), alive3));
    CHECK_FALSE(a.offer(req(1, 2, {0}), alive3));
    CHECK(a.offer(req(2, 1, {0}), alive3));
    CHECK_FALSE(a.offer(req(2, 2, {0}), alive3));
    CHECK(a.forget(1) == std::vector<std::uint64_t>{request_id(1, 2)});  // to be answered (ClientLeft)
    CHECK(a.waiting() == 1);
    a.answered(request_id(1, 1), 0);  // a reply for a client gone: ignored
    CHECK(a.take_ready(alive3).empty());
    CHECK(a.take_all() == std::vector<std::uint64_t>{request_id(2, 2)});
    CHECK(a.waiting() == 0);
    a.answered(request_id(2, 1), 0);
    CHECK(a.take_ready(alive3).empty());
}

TEST_CASE("admission: while every client is held nothing goes; then each in its order", "[admission]") {
    admission a(3, 4);
    CHECK(a.offer(req(1, 1, {0}), alive3));
    a.hold_all(true);
    CHECK_FALSE(a.offer(req(1, 2, {0}), alive3));
    CHECK_FALSE(a.offer(req(2, 1, {1}), alive3));
    a.answered(request_id(1, 1), 0);
    CHECK(a.take_ready(alive3).empty());
    a.hold_all(false);
    auto out = ids(a.take_ready(alive3));
    std::sort(out.begin(), out.end());
    CHECK(out == std::vector<std::uint64_t>{request_id(1, 2), request_id(2, 1)});
    // A client held by the bridge stays held when the rest go on.
    a.hold(2);
    a.hold_all(true);
    a.hold_all(false);
    CHECK_FALSE(a.offer(req(2, 2, {1}), alive3));
    CHECK(a.take_ready(alive3).empty());
}
