// The load-balanced task farm's scheduler: which queued task goes to which engine, when.
// Pure bookkeeping, no MPI, no sockets, no Python, no clock: the controller tells it what happened
// (a task came, an engine replied, an engine died, time passed) and sends what dispatch() returns.
// Every call returns the tasks it settled, so the controller answers each exactly once.
//
// Single-threaded, like the controller's event loop; no method may be called concurrently.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pcluster/protocol/errors.hpp"

namespace pcluster::controller {

using task_id = std::uint64_t;
using sched_clock = std::chrono::steady_clock;

// Errors the scheduler makes up itself are protocol::error_kind values (the controller puts them
// straight into an error reply); evalue says which task, engine or dependency.
using protocol::error_kind;

struct task {
    task_id id = 0;
    std::uint32_t client = 0;                       // for abort_client
    std::vector<int> engines{};                     // where it may run; empty: anywhere
    std::vector<task_id> after{};                   // must have finished (successfully, see after_failure_ok) first
    std::vector<task_id> follow{};                  // must have finished successfully, and it runs on their engine
    int retries = 0;                                // further tries after an error reply or a dead engine
    std::optional<sched_clock::duration> timeout{};  // how long it may wait for its dependencies
    bool after_failure_ok = false;                  // a failed `after` dependency counts as finished too
};

enum class verdict {
    done,    // the engine replied ok: forward its reply
    failed,  // the engine replied with an error and no try is left: forward its reply
    retried,  // queued again (on another engine): drop the engine's reply, if any
    dropped,  // the scheduler gave up on it: answer with kind/evalue
    refused,  // submit() turned it down: answer with kind/evalue. It is not remembered.
};

struct outcome {
    task_id id = 0;
    std::uint32_t client = 0;
    verdict what = verdict::done;
    int engine = -1;               // where it last ran (done, failed, retried: where it failed); -1 if it never ran
    error_kind kind = error_kind::none;  // set for dropped and refused only
    std::string evalue{};
};

struct assignment {
    bool operator==(const assignment&) const = default;
    task_id id = 0;
    int engine = 0;
};

struct abort_report {
    std::vector<outcome> dropped;  // TaskAborted, and their dependents (DependencyFailed)
    struct refusal {
        task_id id = 0;
        std::string reason;  // "cannot abort: running on engine 3", "already finished", "unknown task"
    };
    std::vector<refusal> refused;
};

struct engine_status {
    bool alive = true;
    int assigned = 0;       // sent and not yet answered, running or prefetched (they look the same here)
    std::uint64_t done = 0;  // replies received, ok or not
};

struct queue_status {
    std::vector<engine_status> engines;
    std::size_t unassigned = 0;  // accepted, not yet sent; includes `waiting`
    std::size_t waiting = 0;    // of those, still waiting for dependencies
};

struct scheduler_options {
    // Tasks an engine may hold at once (one running, the rest queued there so it never idles
    // between tasks). 1 = strict load balancing, no prefetch.
    int prefetch = 2;
    // The most set_prefetch() may set later.
    int max_prefetch = 64;
    // How many finished tasks are remembered (id -> ok/failed, engine) for later dependencies and
    // duplicate-id checks; the oldest are forgotten first. A dependency on a forgotten task is
    // refused as InvalidDependency, and its id may be used again. About 100 bytes each.
    std::size_t remember_finished = 1u << 16;
};

// Rules, in the order a task meets them:
//   submit    refused (not remembered) for a known id, an engine number out of range, retries < 0,
//             a dependency never submitted or forgotten, follow dependencies pinned to different
//             engines or to one outside `engines` or dead, or no live engine in `engines`.
//             Dependencies already finished count at once; one that failed drops the task.
//   waiting   until every dependency finished; DependencyFailed as soon as a required one fails,
//             ImpossibleDependency when follow engines disagree or die, TaskTimeout at
//             submit time + timeout (see expire()).
//   ready     FIFO by submission; see dispatch().
//   sent      counts against the engine's prefetch slots until on_finished() or on_engine_dead().
// A task that ends in any way other than done counts as failed for its dependents.
//
// Complexity (n engines, p = prefetch, q = ready tasks):
//   dispatch: O(p + log n + log q) per assignment. Retried tasks add two costs: an engine skips
//             over queued tasks that already failed on it, and a free engine that may run none of
//             the queued tasks is passed over once per dispatch() call.
//   submit / on_finished: O(d log) for d dependencies and dependents, plus O(k log q) for a task
//             restricted to k engines (it is queued on each); never O(n).
//   on_engine_dead, abort_client, status: O(live tasks) - rare calls, kept simple.
//   expire: O(log) per expired task.
class scheduler {
public:
    using time_point = sched_clock::time_point;

    explicit scheduler(int engines, scheduler_options opt = {});
    ~scheduler();
    scheduler(scheduler&&) noexcept;
    scheduler& operator=(scheduler&&) noexcept;

    // nullopt: accepted. Otherwise answered now: refused, or dropped because a dependency had
    // already failed. `now` starts the dependency timeout.
    std::optional<outcome> submit(task t, time_point now);

    // What to send now. Repeatedly the least-loaded engine (among equals the one given a task
    // least recently, then the lowest number) that has
    // a free slot and a ready task it may run gets the oldest such task. Call after anything that
    // queues tasks or frees slots (submit, on_finished, on_engine_dead).
    std::vector<assignment> dispatch();

    // The engine answered task `id`. First outcome: the task's own (done, failed, retried);
    // then dependents that can no longer run. `unmet`: the engine said the task's function
    // dependency is false there (UnmetDependency): tried on another engine without using a
    // retry, dropped as ImpossibleDependency when every engine it may run on said so. Empty if `id` was not sent to `engine` (a stale
    // or duplicate reply): drop it.
    std::vector<outcome> on_finished(task_id id, int engine, bool ok, bool unmet = false);

    // The engine is gone for good: its tasks are retried elsewhere if they have retries left,
    // else dropped (EngineDied); tasks that may only run there are dropped (ImpossibleDependency).
    std::vector<outcome> on_engine_dead(int engine);

    // Drops tasks whose dependency timeout has passed (TaskTimeout; evalue lists the
    // dependencies still pending), and their dependents.
    std::vector<outcome> expire(time_point now);
    // The earliest time expire() has work; the controller's poll timeout.
    std::optional<time_point> next_deadline() const;

    // Tasks not yet sent are dropped (TaskAborted); sent ones are not killed, only refused.
    abort_report abort(const std::vector<task_id>& ids);
    abort_report abort_client(std::uint32_t client);

    // The client does not read its replies (the bridge holds them over its budget): its ready
    // tasks are sent nowhere until release_client(), which queues them again in their order and
    // returns those no live engine may run any more (ImpossibleDependency) and their dependents.
    // Tasks already sent run on. O(live tasks) each; the bridge calls them at budget crossings.
    void hold_client(std::uint32_t client);
    std::vector<outcome> release_client(std::uint32_t client);

    queue_status status() const;
    // The engine task `id` was sent to, if it is there now (running or prefetched).
    std::optional<int> engine_of(task_id id) const;
    int engines() const;

    // Changes the prefetch window (1..max_prefetch) from now on: an engine that holds more than
    // the new window keeps its tasks and gets no more until it is below it. O(engines).
    void set_prefetch(int prefetch);
    // Engine `e` was sent (delta +1) or answered (-1) a request that is not a task (a direct or
    // collective request): it counts as load, so tasks go to idle engines first, and an engine
    // busy with as many such requests as the prefetch window gets no task until it is not.
    void engine_busy(int e, int delta);
    int prefetch() const;
    // Accepted and not yet settled.
    std::size_t live() const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
    int max_prefetch_ = 64;
};

}  // namespace pcluster::controller
