// The client's request table without a socket (python/src/request_table.hpp): completion, the
// one consumer of each request, refusals, abandonment, and waiters woken across threads.
#include <catch2/catch.hpp>

#include <chrono>
#include <thread>

#include "request_table.hpp"

using namespace pcluster::client;
using namespace pcluster::protocol;
using namespace std::chrono_literals;

namespace {
reply_ptr a_reply(std::uint64_t id, int engine, reply_origin origin = reply_origin::engine) {
    auto r = std::make_shared<reply>();
    r->meta.id = id;
    r->meta.engine = engine;
    r->meta.origin = origin;
    return r;
}
auto soon() { return clock::now() + 2s; }
auto now() { return clock::now(); }
}  // namespace

TEST_CASE("request table: complete once every target replied; taken once", "[request_table]") {
    request_table t;
    t.add(1, 2);
    t.file_reply(a_reply(1, 0));
    CHECK_FALSE(t.take(1));
    CHECK(t.wait_count(1, 1, now()).size() == 1);
    t.file_output(output{1, 0, "out", ""});
    t.file_reply(a_reply(1, 1));
    const auto got = t.take(1);
    REQUIRE(got);
    CHECK(got->replies.size() == 2);
    CHECK(got->output.size() == 1);
    CHECK_FALSE(t.take(1));
    CHECK_FALSE(t.pending(1));
}

TEST_CASE("request table: nobody waiting, a complete request goes to the completion queue", "[request_table]") {
    request_table t;
    t.add(5, 1);
    t.file_reply(a_reply(5, 0));
    CHECK(t.next_completed(now()) == std::vector<std::uint64_t>{5});
    CHECK(t.next_completed(now()).empty());
}

TEST_CASE("request table: a blocked taker gets it, the completion queue does not", "[request_table]") {
    request_table t;
    t.add(7, 1);
    std::optional<completion> got;
    std::thread waiter([&] { got = t.wait_take(7, soon()); });
    std::this_thread::sleep_for(50ms);
    t.file_reply(a_reply(7, 3));
    waiter.join();
    REQUIRE(got);
    CHECK(got->replies[0]->meta.engine == 3);
    CHECK(t.next_completed(now()).empty());
}

TEST_CASE("request table: a refusal answers the whole request at once", "[request_table]") {
    request_table t;
    t.add(9, 4);
    t.file_reply(a_reply(9, no_engine, reply_origin::refused));
    const auto got = t.take(9);
    REQUIRE(got);
    CHECK(got->replies.size() == 1);
    // A client-made reply (a reply it could not receive) is one target's, not the whole request's.
    t.add(10, 2);
    t.file_reply(a_reply(10, no_engine, reply_origin::client));
    CHECK_FALSE(t.take(10));
}

TEST_CASE("request table: closing wakes waiters and abandons what is incomplete", "[request_table]") {
    request_table t;
    t.add(1, 1);
    t.add(2, 1);
    t.file_reply(a_reply(2, 0));
    CHECK(t.abandon().empty());  // only once closed
    std::optional<completion> got = completion{};
    std::thread waiter([&] { got = t.wait_take(1, soon()); });
    std::this_thread::sleep_for(50ms);
    t.close("the job ended: test");
    waiter.join();
    CHECK_FALSE(got);
    CHECK(t.closed());
    CHECK(t.close_reason() == "the job ended: test");
    CHECK(t.abandon() == std::vector<std::uint64_t>{1});
    CHECK(t.take(2));  // complete ones stay collectable
    CHECK_THROWS_AS(t.add(3, 1), std::system_error);
    t.close("another reason");
    CHECK(t.close_reason() == "the job ended: test");  // the first reason stays
}

TEST_CASE("request table: replies of unknown or removed requests are ignored", "[request_table]") {
    request_table t;
    t.file_reply(a_reply(42, 0));
    t.add(43, 1);
    t.remove(43);
    t.file_reply(a_reply(43, 0));
    CHECK_FALSE(t.pending(42));
    CHECK_FALSE(t.pending(43));
    CHECK(t.next_completed(now()).empty());
}
