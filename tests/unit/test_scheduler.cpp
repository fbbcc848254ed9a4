// The task farm's scheduler, driven as the controller will drive it, with a fake clock.
#include "scheduler.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <deque>
#include <map>

using namespace pcluster::controller;
using namespace std::chrono_literals;

namespace {

const scheduler::time_point t0{};

std::string show(const outcome& o) {
    return "task " + std::to_string(o.id) + " verdict " + std::to_string(static_cast<int>(o.what)) + " engine " +
           std::to_string(o.engine) + " " + std::string(pcluster::protocol::name_of(o.kind)) + ": " + o.evalue;
}

void accept(scheduler& s, task t, scheduler::time_point now = t0) {
    const auto r = s.submit(std::move(t), now);
    if (r) FAIL("refused or dropped at submit: " << show(*r));
}

void accept_all(scheduler& s, task_id first, task_id last) {
    for (auto id = first; id <= last; ++id)
        accept(s, task{.id = id});
}

// Submits, expecting an answer now with this verdict and error kind; returns the evalue.
std::string answered(scheduler& s, task t, verdict v, error_kind kind, scheduler::time_point now = t0) {
    const auto r = s.submit(std::move(t), now);
    REQUIRE(r);
    INFO(show(*r));
    CHECK(r->what == v);
    CHECK(r->kind == kind);
    return r->evalue;
}

std::vector<assignment> sent(std::initializer_list<std::pair<task_id, int>> l) {
    std::vector<assignment> v;
    for (auto [id, e] : l)
        v.push_back({id, e});
    return v;
}

// The outcome for `id` in `v` (exactly one).
outcome find(const std::vector<outcome>& v, task_id id) {
    REQUIRE(std::count_if(v.begin(), v.end(), [&](const outcome& o) { return o.id == id; }) == 1);
    return *std::find_if(v.begin(), v.end(), [&](const outcome& o) { return o.id == id; });
}

}  // namespace

TEST_CASE("tasks go to the least-loaded engine, at most prefetch per engine", "[scheduler]") {
    scheduler s(3, {.prefetch = 2});
    accept_all(s, 100, 109);
    CHECK(s.dispatch() == sent({{100, 0}, {101, 1}, {102, 2}, {103, 0}, {104, 1}, {105, 2}}));
    CHECK(s.dispatch().empty());  // every engine holds two
    auto st = s.status();
    for (const auto& e : st.engines)
        CHECK(e.assigned == 2);
    CHECK(st.unassigned == 4);

    REQUIRE(s.on_finished(101, 1, true).size() == 1);
    CHECK(s.dispatch() == sent({{106, 1}}));
    s.on_finished(100, 0, true);
    s.on_finished(103, 0, true);
    s.on_finished(104, 1, true);
    // Engine 0 holds none, engine 1 one: 0 first; then among equals the one given a task least
    // recently (1 got 106 before 0 got 107).
    CHECK(s.dispatch() == sent({{107, 0}, {108, 1}, {109, 0}}));
    st = s.status();
    CHECK(st.engines[0].done == 2);
    CHECK(st.engines[1].done == 2);
    CHECK(st.engines[2].done == 0);
    CHECK(st.unassigned == 0);

    SECTION("prefetch 1 is one task per engine") {
        scheduler one(2, {.prefetch = 1});
        accept_all(one, 1, 3);
        CHECK(one.dispatch() == sent({{1, 0}, {2, 1}}));
        CHECK(one.dispatch().empty());
    }
}

TEST_CASE("the prefetch window can grow and shrink while tasks are out", "[scheduler]") {
    scheduler s(2, {.prefetch = 1, .max_prefetch = 4});
    accept_all(s, 1, 12);
    CHECK(s.dispatch() == sent({{1, 0}, {2, 1}}));
    s.set_prefetch(3);
    CHECK(s.prefetch() == 3);
    CHECK(s.dispatch() == sent({{3, 0}, {4, 1}, {5, 0}, {6, 1}}));
    CHECK(s.dispatch().empty());
    // Shrinking: engines above the new window keep what they hold and get nothing more
    // until they are below it.
    s.set_prefetch(1);
    s.on_finished(1, 0, true);
    CHECK(s.dispatch().empty());  // engine 0 still holds 3 and 5
    s.on_finished(3, 0, true);
    s.on_finished(5, 0, true);
    CHECK(s.dispatch() == sent({{7, 0}}));
    CHECK_THROWS(s.set_prefetch(0));
    CHECK_THROWS(s.set_prefetch(5));
    CHECK_THROWS(scheduler(2, {.prefetch = 8, .max_prefetch = 4}));
}

TEST_CASE("ready tasks leave in submission order, restricted or not", "[scheduler]") {
    scheduler s(2, {.prefetch = 1});
    // Ids are the client's and say nothing about order.
    accept(s, task{.id = 50});
    accept(s, task{.id = 7, .engines = {1}});
    accept(s, task{.id = 30});
    accept(s, task{.id = 9, .engines = {1}});
    accept(s, task{.id = 1});
    CHECK(s.dispatch() == sent({{50, 0}, {7, 1}}));
    s.on_finished(50, 0, true);
    CHECK(s.dispatch() == sent({{30, 0}}));
    s.on_finished(30, 0, true);
    CHECK(s.dispatch() == sent({{1, 0}}));  // 9 is older but may not run on 0
    s.on_finished(7, 1, true);
    CHECK(s.dispatch() == sent({{9, 1}}));

    SECTION("a task restricted to several engines takes the least loaded of them") {
        scheduler r(3, {.prefetch = 2});
        accept(r, task{.id = 1, .engines = {1}});
        accept(r, task{.id = 2, .engines = {2, 1}});
        accept(r, task{.id = 3, .engines = {1, 2}});
        CHECK(r.dispatch() == sent({{1, 1}, {2, 2}, {3, 1}}));
    }
}

TEST_CASE("after: a task waits for its dependencies", "[scheduler]") {
    scheduler s(2);
    accept(s, task{.id = 1});
    accept(s, task{.id = 2, .after = {1}});
    accept(s, task{.id = 3, .after = {1, 2}});
    CHECK(s.status().waiting == 2);
    CHECK(s.dispatch() == sent({{1, 0}}));
    s.on_finished(1, 0, true);
    CHECK(s.dispatch() == sent({{2, 1}}));  // idle engines take turns
    s.on_finished(2, 1, true);
    CHECK(s.dispatch() == sent({{3, 0}}));
    s.on_finished(3, 0, true);

    SECTION("a dependency already finished counts at once") {
        accept(s, task{.id = 4, .after = {1, 3}});
        CHECK(s.dispatch() == sent({{4, 1}}));
    }
    SECTION("after_failure_ok lets a failed dependency count") {
        accept(s, task{.id = 10});
        accept(s, task{.id = 11, .after = {10}, .after_failure_ok = true});
        accept(s, task{.id = 12, .after = {10}});
        CHECK(s.dispatch() == sent({{10, 1}}));
        const auto out = s.on_finished(10, 1, false);
        CHECK(out.size() == 2);  // 10 failed, 12 dropped
        CHECK(find(out, 12).kind == error_kind::dependency_failed);
        CHECK(s.dispatch() == sent({{11, 0}}));
    }
}

TEST_CASE("follow: a task runs where its dependencies ran, after them", "[scheduler]") {
    scheduler s(3);
    accept(s, task{.id = 1, .engines = {2}});
    accept(s, task{.id = 2, .follow = {1}});
    CHECK(s.dispatch() == sent({{1, 2}}));
    s.on_finished(1, 2, true);
    // Engines 0 and 1 are idle, but 2 is where task 1 ran.
    CHECK(s.dispatch() == sent({{2, 2}}));
    s.on_finished(2, 2, true);

    SECTION("follow dependencies on different engines are refused") {
        accept(s, task{.id = 3, .engines = {0}});
        REQUIRE(s.dispatch() == sent({{3, 0}}));
        s.on_finished(3, 0, true);
        const auto why =
            answered(s, task{.id = 4, .follow = {1, 3}}, verdict::refused, error_kind::impossible_dependency);
        CHECK_THAT(why, Catch::Contains("different engines"));
    }
    SECTION("a follow engine outside the allowed set is refused") {
        answered(s, task{.id = 4, .engines = {0, 1}, .follow = {2}}, verdict::refused,
                 error_kind::impossible_dependency);
        // Also while the dependency is still live but certain to run on engine 0.
        accept(s, task{.id = 5, .engines = {0}});
        answered(s, task{.id = 6, .engines = {1}, .follow = {5}}, verdict::refused, error_kind::impossible_dependency);
    }
    SECTION("follow dependencies that turn out to run apart drop the dependent") {
        accept(s, task{.id = 10});
        accept(s, task{.id = 11});
        accept(s, task{.id = 12, .follow = {10, 11}});
        CHECK(s.dispatch() == sent({{10, 0}, {11, 1}}));
        CHECK(s.on_finished(10, 0, true).size() == 1);
        const auto out = s.on_finished(11, 1, true);
        REQUIRE(out.size() == 2);
        CHECK(find(out, 12).what == verdict::dropped);
        CHECK(find(out, 12).kind == error_kind::impossible_dependency);
    }
    SECTION("a follow dependency that ran outside the allowed set drops the dependent") {
        accept(s, task{.id = 10});
        accept(s, task{.id = 11, .engines = {1, 2}, .follow = {10}});
        CHECK(s.dispatch() == sent({{10, 0}}));
        CHECK(find(s.on_finished(10, 0, true), 11).kind == error_kind::impossible_dependency);
    }
    SECTION("a failed follow dependency drops the dependent even with after_failure_ok") {
        accept(s, task{.id = 10});
        accept(s, task{.id = 11, .follow = {10}, .after_failure_ok = true});
        CHECK(s.dispatch() == sent({{10, 0}}));
        CHECK(find(s.on_finished(10, 0, false), 11).kind == error_kind::dependency_failed);
    }
}

TEST_CASE("submissions that cannot work are refused and not remembered", "[scheduler]") {
    scheduler s(2);
    accept(s, task{.id = 1});
    CHECK_THAT(answered(s, task{.id = 1}, verdict::refused, error_kind::invalid_task), Catch::Contains("in use"));
    CHECK_THAT(answered(s, task{.id = 2, .after = {99}}, verdict::refused, error_kind::invalid_dependency),
               Catch::Contains("99") && Catch::Contains("unknown"));
    answered(s, task{.id = 2, .follow = {2}}, verdict::refused, error_kind::invalid_dependency);  // itself
    answered(s, task{.id = 2, .engines = {2}}, verdict::refused, error_kind::invalid_task);
    answered(s, task{.id = 2, .retries = -1}, verdict::refused, error_kind::invalid_task);
    accept(s, task{.id = 2, .after = {1}});  // the refused id is free
    s.dispatch();
    s.on_finished(1, 0, true);
    answered(s, task{.id = 1}, verdict::refused, error_kind::invalid_task);  // finished, remembered
    CHECK(s.live() == 1);
}

TEST_CASE("a failed task fails its dependents, transitively", "[scheduler]") {
    scheduler s(2);
    accept(s, task{.id = 1});
    accept(s, task{.id = 2, .after = {1}});
    accept(s, task{.id = 3, .after = {2}});
    accept(s, task{.id = 4, .follow = {3}});
    accept(s, task{.id = 5});  // unrelated
    CHECK(s.dispatch() == sent({{1, 0}, {5, 1}}));
    const auto out = s.on_finished(1, 0, false);
    REQUIRE(out.size() == 4);
    CHECK(out[0].id == 1);
    CHECK(out[0].what == verdict::failed);
    CHECK(out[0].engine == 0);
    CHECK(out[0].kind == error_kind::none);  // the engine's own error reply is the answer
    for (task_id id : {2, 3, 4}) {
        CHECK(find(out, id).what == verdict::dropped);
        CHECK(find(out, id).kind == error_kind::dependency_failed);
    }
    CHECK_THAT(find(out, 2).evalue, Catch::Contains("dependency 1 failed"));
    CHECK(s.live() == 1);

    // Later dependents of the remembered failure are answered at once.
    const auto why = answered(s, task{.id = 6, .after = {3}}, verdict::dropped, error_kind::dependency_failed);
    CHECK_THAT(why, Catch::Contains("dependency 3 failed (DependencyFailed)"));
}

TEST_CASE("retries avoid the engines that already failed the task", "[scheduler]") {
    scheduler s(3, {.prefetch = 1});
    accept(s, task{.id = 1, .retries = 5});
    CHECK(s.dispatch() == sent({{1, 0}}));
    auto out = s.on_finished(1, 0, false);
    REQUIRE(out.size() == 1);
    CHECK(out[0].what == verdict::retried);
    CHECK(out[0].engine == 0);
    CHECK(s.dispatch() == sent({{1, 1}}));  // not 0, though 0 is the lowest idle engine
    CHECK(s.on_finished(1, 1, false)[0].what == verdict::retried);

    SECTION("an idle engine the head task avoids takes the next task instead") {
        accept(s, task{.id = 2});
        CHECK(s.dispatch() == sent({{1, 2}, {2, 0}}));  // 2 never had a task: it goes first
    }
    SECTION("when every engine has failed it, it fails for good, retries or not") {
        CHECK(s.dispatch() == sent({{1, 2}}));
        out = s.on_finished(1, 2, false);
        REQUIRE(out.size() == 1);
        CHECK(out[0].what == verdict::failed);
        CHECK(s.live() == 0);
    }
    SECTION("a restricted task fails for good once its engines have failed it") {
        accept(s, task{.id = 3, .engines = {0, 2}, .retries = 9});
        CHECK(s.dispatch() == sent({{1, 2}, {3, 0}}));
        CHECK(s.on_finished(3, 0, false)[0].what == verdict::retried);
        CHECK(s.on_finished(1, 2, true)[0].what == verdict::done);
        CHECK(s.dispatch() == sent({{3, 2}}));
        CHECK(s.on_finished(3, 2, false)[0].what == verdict::failed);
    }
    SECTION("retries run out") {
        accept(s, task{.id = 4, .retries = 1});
        CHECK(s.dispatch() == sent({{1, 2}, {4, 0}}));
        CHECK(s.on_finished(4, 0, false)[0].what == verdict::retried);
        s.on_finished(1, 2, true);
        CHECK(s.dispatch() == sent({{4, 1}}));
        CHECK(s.on_finished(4, 1, false)[0].what == verdict::failed);
    }
}

TEST_CASE("a dead engine's tasks are retried or dropped, and it gets no more", "[scheduler]") {
    scheduler s(3, {.prefetch = 2});
    accept(s, task{.id = 1, .retries = 1});
    accept(s, task{.id = 2});
    accept(s, task{.id = 3});
    accept(s, task{.id = 4, .engines = {1}});
    accept(s, task{.id = 5, .engines = {0, 1}});
    // All hold one: the lowest number first takes its oldest, 5, before engine 1 takes 4.
    CHECK(s.dispatch() == sent({{1, 0}, {2, 1}, {3, 2}, {5, 0}, {4, 1}}));
    s.on_finished(4, 1, true);
    accept(s, task{.id = 6, .after = {3}, .follow = {4}});  // pinned to engine 1, waiting for 3
    accept(s, task{.id = 7, .engines = {1}});              // may only run on 1, not yet sent
    accept(s, task{.id = 8, .engines = {1, 2}});           // may run on 2 as well
    accept(s, task{.id = 9, .after = {2}, .retries = 3});  // waits on a task that will die with 1

    const auto out = s.on_engine_dead(1);
    CHECK(find(out, 2).what == verdict::dropped);
    CHECK(find(out, 2).kind == error_kind::engine_died);
    CHECK(find(out, 2).engine == 1);
    CHECK(find(out, 6).kind == error_kind::impossible_dependency);
    CHECK(find(out, 7).kind == error_kind::impossible_dependency);
    CHECK(find(out, 9).kind == error_kind::dependency_failed);
    CHECK(out.size() == 4);
    CHECK(!s.status().engines[1].alive);
    CHECK(s.status().engines[1].assigned == 0);

    CHECK(s.dispatch() == sent({{8, 2}}));
    CHECK(s.on_finished(2, 1, true).empty());  // a late reply from the dead engine is not ours
    answered(s, task{.id = 10, .engines = {1}}, verdict::refused, error_kind::impossible_dependency);

    SECTION("a task it held with retries left goes elsewhere") {
        const auto more = s.on_engine_dead(0);
        CHECK(find(more, 1).what == verdict::retried);
        CHECK(find(more, 5).kind == error_kind::engine_died);
        s.on_finished(3, 2, true);
        CHECK(s.dispatch() == sent({{1, 2}}));
    }
    SECTION("with no engine left, nothing waits forever") {
        accept(s, task{.id = 11});
        accept(s, task{.id = 12, .after = {1}});
        s.on_engine_dead(0);
        const auto last = s.on_engine_dead(2);
        CHECK(find(last, 11).kind == error_kind::impossible_dependency);
        CHECK(find(last, 1).kind == error_kind::impossible_dependency);  // its retry was waiting for 2
        CHECK(find(last, 3).kind == error_kind::engine_died);
        CHECK(find(last, 8).kind == error_kind::engine_died);
        CHECK(find(last, 12).kind == error_kind::impossible_dependency);  // no engine, before 1 fails
        CHECK(s.live() == 0);
        answered(s, task{.id = 13}, verdict::refused, error_kind::impossible_dependency);
    }
}

TEST_CASE("a task waiting too long for its dependencies times out", "[scheduler]") {
    scheduler s(1, {.prefetch = 1});
    accept(s, task{.id = 1});
    accept(s, task{.id = 2});
    accept(s, task{.id = 3, .after = {1, 2}, .timeout = 5s}, t0);
    accept(s, task{.id = 4, .after = {3}});
    accept(s, task{.id = 5, .after = {1}, .timeout = 10s}, t0 + 1s);
    REQUIRE(s.next_deadline() == t0 + 5s);
    CHECK(s.dispatch() == sent({{1, 0}}));
    s.on_finished(1, 0, true);  // 5 is ready now: its deadline goes
    CHECK(s.expire(t0 + 4999ms).empty());

    const auto out = s.expire(t0 + 5s);
    REQUIRE(out.size() == 2);
    CHECK(out[0].id == 3);
    CHECK(out[0].kind == error_kind::task_timeout);
    CHECK_THAT(out[0].evalue, Catch::Contains("5000 ms") && Catch::Contains("still pending: 2"));
    CHECK(find(out, 4).kind == error_kind::dependency_failed);
    CHECK(!s.next_deadline());
    CHECK(s.expire(t0 + 1h).empty());
    CHECK(s.dispatch() == sent({{2, 0}}));
}

TEST_CASE("abort drops queued tasks and refuses running ones", "[scheduler]") {
    scheduler s(1, {.prefetch = 1});
    accept(s, task{.id = 1});
    accept(s, task{.id = 2});
    accept(s, task{.id = 3, .after = {2}});
    accept(s, task{.id = 4, .after = {2}});
    accept(s, task{.id = 5});
    REQUIRE(s.dispatch() == sent({{1, 0}}));

    const auto rep = s.abort({1, 2, 3, 77});
    REQUIRE(rep.refused.size() == 2);
    CHECK(rep.refused[0].id == 1);
    CHECK(rep.refused[0].reason == "cannot abort: running on engine 0");
    CHECK(rep.refused[1].reason == "unknown task");
    REQUIRE(rep.dropped.size() == 3);
    CHECK(find(rep.dropped, 2).kind == error_kind::task_aborted);
    CHECK(find(rep.dropped, 3).kind == error_kind::task_aborted);  // asked for, so aborted, not failed
    CHECK(find(rep.dropped, 4).kind == error_kind::dependency_failed);

    s.on_finished(1, 0, true);
    CHECK(s.abort({1}).refused[0].reason == "already finished");
    CHECK(s.dispatch() == sent({{5, 0}}));  // 2, 3, 4 never go out
    answered(s, task{.id = 6, .after = {2}}, verdict::dropped, error_kind::dependency_failed);
}

TEST_CASE("abort_client touches only that client's tasks", "[scheduler]") {
    scheduler s(1, {.prefetch = 1});
    accept(s, task{.id = 1, .client = 1});
    accept(s, task{.id = 2, .client = 2});
    accept(s, task{.id = 3, .client = 1});
    accept(s, task{.id = 4, .client = 2, .after = {3}});
    REQUIRE(s.dispatch() == sent({{1, 0}}));
    const auto rep = s.abort_client(1);
    REQUIRE(rep.refused.size() == 1);
    CHECK(rep.refused[0].id == 1);
    REQUIRE(rep.dropped.size() == 2);
    CHECK(find(rep.dropped, 3).kind == error_kind::task_aborted);
    CHECK(find(rep.dropped, 3).client == 1);
    CHECK(find(rep.dropped, 4).kind == error_kind::dependency_failed);
    CHECK(find(rep.dropped, 4).client == 2);
    s.on_finished(1, 0, true);
    CHECK(s.dispatch() == sent({{2, 0}}));
}

TEST_CASE("a held client's ready tasks go nowhere until released, then in their order", "[scheduler]") {
    scheduler s(2, {.prefetch = 1});
    accept(s, task{.id = 1, .client = 1});
    accept(s, task{.id = 2, .client = 1});
    accept(s, task{.id = 3, .client = 2});
    accept(s, task{.id = 4, .client = 1, .after = {3}});
    REQUIRE(s.dispatch() == sent({{1, 0}, {2, 1}}));
    s.hold_client(1);
    s.on_finished(1, 0, true);
    CHECK(s.dispatch() == sent({{3, 0}}));  // client 2's task goes; nothing of client 1's
    accept(s, task{.id = 5, .client = 1, .engines = {1}});
    s.on_finished(3, 0, true);  // 4 is ready now, but held
    s.on_finished(2, 1, true);
    CHECK(s.dispatch().empty());
    CHECK(s.status().unassigned == 2);
    CHECK(s.release_client(1).empty());
    CHECK(s.dispatch() == sent({{4, 1}}));  // engine 1 was given a task least recently
    s.on_finished(4, 1, true);
    CHECK(s.dispatch() == sent({{5, 1}}));
}

TEST_CASE("idle engines take turns: the one given a task least recently goes first", "[scheduler]") {
    scheduler s(4, {.prefetch = 2});
    std::vector<int> order;
    for (task_id id = 1; id <= 12; ++id) {  // one task at a time on an idle cluster
        accept(s, task{.id = id});
        const auto a = s.dispatch();
        REQUIRE(a.size() == 1);
        order.push_back(a[0].engine);
        s.on_finished(id, a[0].engine, true);
    }
    CHECK(order == std::vector<int>{0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3});
    // Load comes first: a busy engine is passed over however long ago it was given a task.
    accept(s, task{.id = 20});
    accept(s, task{.id = 21});
    CHECK(s.dispatch() == sent({{20, 0}, {21, 1}}));
    s.on_finished(21, 1, true);
    accept(s, task{.id = 22});
    CHECK(s.dispatch() == sent({{22, 2}}));
}

TEST_CASE("a held task whose engines died meanwhile is dropped at release, with its dependents", "[scheduler]") {
    scheduler s(2, {.prefetch = 1});
    s.hold_client(1);
    accept(s, task{.id = 1, .client = 1, .engines = {1}});
    accept(s, task{.id = 2, .client = 1});
    accept(s, task{.id = 3, .client = 2, .after = {1}});
    CHECK(s.dispatch().empty());
    const auto dead = s.on_engine_dead(1);  // judged at once: task 1 can run nowhere now
    REQUIRE(dead.size() == 2);
    CHECK(find(dead, 1).kind == error_kind::impossible_dependency);
    CHECK(find(dead, 3).kind == error_kind::dependency_failed);
    CHECK(s.release_client(1).empty());
    CHECK(s.dispatch() == sent({{2, 0}}));
    // abort_client drops held tasks like queued ones.
    s.hold_client(1);
    accept(s, task{.id = 4, .client = 1});
    CHECK(s.abort_client(1).dropped.size() == 1);
    CHECK(s.release_client(1).empty());
    s.on_finished(2, 0, true);
    CHECK(s.dispatch().empty());
}

TEST_CASE("finished outcomes are remembered up to a bound, oldest forgotten first", "[scheduler]") {
    scheduler s(1, {.prefetch = 8, .remember_finished = 3});
    accept_all(s, 1, 5);
    REQUIRE(s.dispatch().size() == 5);
    for (task_id id = 1; id <= 5; ++id)
        s.on_finished(id, 0, id != 4);
    for (task_id id : {1, 2})
        CHECK_THAT(answered(s, task{.id = 100 + id, .after = {id}}, verdict::refused, error_kind::invalid_dependency),
                   Catch::Contains("too long ago"));
    accept(s, task{.id = 103, .after = {3, 5}});
    answered(s, task{.id = 104, .after = {4}}, verdict::dropped, error_kind::dependency_failed);
    accept(s, task{.id = 1});  // a forgotten id may be used again
    answered(s, task{.id = 5}, verdict::refused, error_kind::invalid_task);
}

TEST_CASE("100k tasks over 1 and 1024 engines: each sent once, in order, within prefetch", "[scheduler]") {
    const int n = GENERATE(1, 1024);
    const int prefetch = 2;
    const task_id count = 100000;
    const bool restricted = GENERATE(false, true);  // every 7th task pinned to one engine
    scheduler s(n, {.prefetch = prefetch});
    for (task_id id = 0; id < count; ++id) {
        task t{.id = id};
        if (restricted && id % 7 == 0) t.engines = {static_cast<int>(id % static_cast<task_id>(n))};
        accept(s, std::move(t));
    }
    std::vector<std::deque<task_id>> held(static_cast<std::size_t>(n));
    std::vector<char> seen(count, 0);
    std::vector<std::uint64_t> per_engine(static_cast<std::size_t>(n), 0);
    task_id sent_count = 0, last = 0;
    bool in_order = true, within = true, allowed = true;
    for (int round = 0; sent_count < count; ++round) {
        REQUIRE(round < 2 * static_cast<int>(count));
        for (const auto& a : s.dispatch()) {
            REQUIRE(a.id < count);
            REQUIRE(!seen[a.id]);
            seen[a.id] = 1;
            if (sent_count > 0 && a.id < last) in_order = false;
            last = a.id;
            ++sent_count;
            auto& h = held[static_cast<std::size_t>(a.engine)];
            h.push_back(a.id);
            within = within && static_cast<int>(h.size()) <= prefetch;
            if (restricted && a.id % 7 == 0) allowed = allowed && a.engine == static_cast<int>(a.id % n);
            ++per_engine[static_cast<std::size_t>(a.engine)];
        }
        // Each engine finishes its oldest task.
        for (int e = 0; e < n; ++e) {
            auto& h = held[static_cast<std::size_t>(e)];
            if (h.empty()) continue;
            REQUIRE(s.on_finished(h.front(), e, true).size() == 1);
            h.pop_front();
        }
    }
    CHECK(within);
    CHECK(allowed);
    if (!restricted) {
        CHECK(in_order);
        const auto [lo, hi] = std::minmax_element(per_engine.begin(), per_engine.end());
        CHECK(*hi - *lo <= static_cast<std::uint64_t>(prefetch));  // spread evenly
    }
    for (int e = 0; e < n; ++e)
        for (auto id : held[static_cast<std::size_t>(e)])
            s.on_finished(id, e, true);
    CHECK(s.live() == 0);
    const auto st = s.status();
    std::uint64_t done = 0;
    for (const auto& e : st.engines) {
        done += e.done;
        CHECK(e.assigned == 0);
    }
    CHECK(done == count);
}

TEST_CASE("an unmet function dependency moves a task to another engine, without using a retry", "[scheduler]") {
    scheduler s(3, {.prefetch = 1});
    accept(s, task{.id = 1});
    REQUIRE(s.dispatch() == sent({{1, 0}}));
    auto out = s.on_finished(1, 0, false, true);
    REQUIRE(out.size() == 1);
    CHECK(out[0].what == verdict::retried);
    CHECK(s.dispatch() == sent({{1, 1}}));  // not engine 0 again
    out = s.on_finished(1, 1, false, true);
    CHECK(s.dispatch() == sent({{1, 2}}));
    CHECK(s.on_finished(1, 2, true).at(0).what == verdict::done);
}

TEST_CASE("a function dependency unmet on every engine it may run on is impossible; its dependents fail", "[scheduler]") {
    scheduler s(3, {.prefetch = 1});
    accept(s, task{.id = 1, .engines = {0, 2}, .retries = 5});
    accept(s, task{.id = 2, .after = {1}});
    REQUIRE(s.dispatch() == sent({{1, 0}}));
    s.on_finished(1, 0, false, true);
    REQUIRE(s.dispatch() == sent({{1, 2}}));
    const auto out = s.on_finished(1, 2, false, true);
    REQUIRE(out.size() == 2);
    CHECK(out[0].id == 1);
    CHECK(out[0].what == verdict::dropped);
    CHECK(out[0].kind == error_kind::impossible_dependency);
    CHECK_THAT(out[0].evalue, Catch::Contains("not met on any engine") && Catch::Contains("tried 0, 2"));
    CHECK(find(out, 2).kind == error_kind::dependency_failed);
}

TEST_CASE("an engine busy with direct requests counts them as load", "[scheduler]") {
    scheduler s(3, {.prefetch = 2});
    s.engine_busy(0, +1);
    accept_all(s, 1, 2);
    CHECK(s.dispatch() == sent({{1, 1}, {2, 2}}));  // idle engines first
    accept(s, task{.id = 3});
    CHECK(s.dispatch() == sent({{3, 0}}));  // all hold one now: the least recently given one
    s.engine_busy(1, +1);                   // engine 1: a task and a direct request: full
    s.on_finished(3, 0, true);
    accept_all(s, 4, 5);
    CHECK(s.dispatch() == sent({{4, 2}, {5, 0}}));  // 2 was given a task before 0
    s.engine_busy(0, -1);
    s.engine_busy(0, -1);  // never below zero
    s.on_finished(5, 0, true);
    accept(s, task{.id = 6});
    CHECK(s.dispatch() == sent({{6, 0}}));
}
