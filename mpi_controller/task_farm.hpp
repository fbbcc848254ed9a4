// The load-balanced task farm's glue: the scheduler (pure bookkeeping, scheduler.hpp) decides;
// this keeps each accepted task's request until it is answered, adapts the prefetch window to
// task length, answers control requests, and turns the scheduler's verdicts into replies.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <unordered_map>
#include <vector>

#include "pcluster/protocol/messages.hpp"
#include "requests.hpp"
#include "scheduler.hpp"

namespace pcluster::controller {

class task_farm {
public:
    // fixed_prefetch > 0 fixes the window (PCLUSTER_TASK_PREFETCH); 0 adapts it.
    task_farm(int n_engines, int fixed_prefetch);

    // A checked task_request (q.task): queued, or answered at once (refused, a dependency failed).
    void submit(request q);
    // Tasks to send now, each with the one engine it goes to (q.targets).
    std::vector<request> dispatch();
    // Drops tasks whose dependency timeout passed; whether any were.
    bool expire();
    // When expire() next has work (a task's dependency timeout), if ever.
    std::optional<sched_clock::time_point> next_deadline() const { return sched_.next_deadline(); }
    // A task's reply came from `engine`: whether to forward it to the client (done, or failed
    // for good) or drop it (it will be tried again elsewhere).
    bool on_reply(std::uint64_t id, int engine, const protocol::frame_view& reply);
    // abort / queue_status / forget_client / hold_client / release_client; nullopt when nobody
    // is to be answered.
    std::optional<protocol::control_reply> control(const protocol::control_request& req);
    // Drops every queued task (the job is ending): each fails with TaskAborted, saying `why`.
    void abort_all(const std::string& why);
    // Engine `e` died: its tasks are retried elsewhere (retries) or fail with EngineDied; its
    // retried tasks' requests go out again through dispatch().
    void engine_died(int e, const std::string& how);
    // Engine `e` got (+1) or answered (-1) a request that is not a task: it counts as load.
    void engine_busy(int e, int delta) { sched_.engine_busy(e, delta); }
    // Where task `id` runs, if it was sent to an engine.
    std::optional<int> engine_of(std::uint64_t id) const { return sched_.engine_of(id); }

    // Error replies the farm made (refusals, dropped tasks, their dependents), to send on.
    std::vector<protocol::engine_reply> take_answers() { return std::exchange(answers_, {}); }

private:
    void answer(const outcome& out, const std::string& why = {});
    void adapt_prefetch(double run_s);

    static constexpr int max_prefetch = 32;
    scheduler sched_;
    int fixed_prefetch_;
    double mean_run_s_ = -1;
    int replies_since_adapt_ = 0;
    std::unordered_map<std::uint64_t, request> tasks_;  // accepted and not yet answered
    std::set<std::uint32_t> clients_;                   // clients that submitted tasks
    std::vector<protocol::engine_reply> answers_;
};

}  // namespace pcluster::controller
