#include "scheduler.hpp"

#include <algorithm>
#include <deque>
#include <map>
#include <set>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace pcluster::controller {

namespace detail {

struct waiter {
    task_id id;
    std::uint64_t seq;  // tells the dependent from a later task reusing its (forgotten) id
    bool follow;
};

enum class task_state { waiting, ready, sent };

using deadline_map = std::multimap<sched_clock::time_point, task_id>;

struct task_record {
    task spec;
    std::uint64_t seq = 0;  // submission order; a retried task keeps it, so it goes back to the front
    task_state state = task_state::waiting;
    int retries_left = 0;
    std::vector<task_id> pending;  // dependencies not yet settled
    std::optional<int> pin;       // the engine its finished `follow` dependencies ran on
    std::vector<int> failed_on;   // engines that replied with an error, or died holding it
    std::vector<int> queued_on;   // ready, restricted: the engine queues holding it
    bool in_open = false;         // ready, unrestricted: in the open queue
    bool held = false;            // ready, but its client is held: in no queue until released
    int engine = -1;              // sent: where
    std::vector<waiter> waiters;  // dependents, told when this one settles
    std::optional<deadline_map::iterator> deadline;

    bool restricted() const { return pin || !spec.engines.empty(); }
};

struct finished_record {
    bool ok = false;
    int engine = -1;
    error_kind kind = error_kind::none;  // why the scheduler dropped it (none: the engine failed it)
};

struct engine_record {
    bool alive = true;
    int load = 0;  // sent, not answered
    int direct = 0;  // requests other than tasks sent to it and not answered (engine_busy)
    std::uint64_t done = 0;
    std::map<std::uint64_t, task_id> queue;  // seq -> ready task whose restricted engine set has this one
    // Filing in the load buckets; kept in step by scheduler::impl::file().
    bool aside = false, in_free = false, in_restricted = false;
    int filed_load = 0;
    // When it was last given a task (dispatch count): among engines of equal load the one given
    // a task least recently goes first, so tasks rotate over idle engines (ipyparallel's habit).
    std::uint64_t last_sent = 0, filed_last_sent = 0;
};

// Engines by load; among equals the least recently given a task first (then the lowest
// number). Every filed load is below the prefetch limit, so least() is O(prefetch) and
// insert/erase O(log engines).
class load_buckets {
public:
    explicit load_buckets(int slots) : buckets_(static_cast<std::size_t>(slots)) {}
    void insert(int engine, int load, std::uint64_t last_sent) {
        buckets_[static_cast<std::size_t>(load)].emplace(last_sent, engine);
    }
    void erase(int engine, int load, std::uint64_t last_sent) {
        buckets_[static_cast<std::size_t>(load)].erase({last_sent, engine});
    }
    int least() const {
        for (const auto& b : buckets_)
            if (!b.empty()) return b.begin()->second;
        return -1;
    }

private:
    std::vector<std::set<std::pair<std::uint64_t, int>>> buckets_;
};

// A task just settled whose dependents have not been told yet. Telling them is deferred to
// drain() so that abort() of a task and its dependent reports both as aborted, and so a long
// chain of dependents fails iteratively, not by recursion.
struct settled {
    task_id id;
    bool ok;
    int engine;
    error_kind kind;
    std::vector<waiter> waiters;
};

namespace {

bool contains(const std::vector<int>& v, int x) {
    return std::find(v.begin(), v.end(), x) != v.end();
}

std::string id_list(const std::vector<task_id>& ids) {
    std::string s;
    for (auto id : ids)
        s += (s.empty() ? "" : ", ") + std::to_string(id);
    return s;
}

}  // namespace
}  // namespace detail

using detail::task_state;

struct scheduler::impl {
    using record = detail::task_record;

    int prefetch;
    std::size_t remember_finished;
    std::uint64_t next_seq = 0;
    std::uint64_t sends = 0;  // tasks dispatched so far: engine_record::last_sent's clock
    int alive = 0;
    std::vector<detail::engine_record> engines;
    detail::load_buckets free;                 // alive engines with a free slot
    detail::load_buckets restricted;           // the subset of those with a non-empty queue
    std::unordered_map<task_id, record> tasks;  // live: waiting, ready or sent
    std::map<std::uint64_t, task_id> open;     // seq -> ready unrestricted task
    detail::deadline_map deadlines;            // waiting tasks with a timeout
    std::unordered_set<std::uint32_t> held;    // clients whose ready tasks are not dispatched
    std::unordered_map<task_id, detail::finished_record> finished;
    std::deque<task_id> finished_order;  // oldest first, for forgetting
    std::vector<detail::settled> to_notify;

    impl(int n, const scheduler_options& opt)
        : prefetch(opt.prefetch), remember_finished(opt.remember_finished), alive(n),
          engines(static_cast<std::size_t>(n)), free(opt.max_prefetch), restricted(opt.max_prefetch) {
        for (int e = 0; e < n; ++e)
            file(e);
    }

    detail::engine_record& eng(int e) { return engines[static_cast<std::size_t>(e)]; }
    const detail::engine_record& eng(int e) const { return engines[static_cast<std::size_t>(e)]; }
    bool valid_engine(int e) const { return e >= 0 && e < static_cast<int>(engines.size()); }

    // Puts an engine in the buckets its state calls for. Call after changing its load, queue,
    // liveness or `aside`.
    void file(int e) {
        auto& r = eng(e);
        const int load = r.load + r.direct;
        const bool want_free = r.alive && !r.aside && load < prefetch;
        const bool want_restricted = want_free && !r.queue.empty();
        const bool moved = r.filed_load != load || r.filed_last_sent != r.last_sent;
        if (r.in_free && (!want_free || moved)) free.erase(e, r.filed_load, r.filed_last_sent), r.in_free = false;
        if (r.in_restricted && (!want_restricted || moved))
            restricted.erase(e, r.filed_load, r.filed_last_sent), r.in_restricted = false;
        if (want_free && !r.in_free) free.insert(e, load, r.last_sent), r.in_free = true;
        if (want_restricted && !r.in_restricted) restricted.insert(e, load, r.last_sent), r.in_restricted = true;
        r.filed_load = load;
        r.filed_last_sent = r.last_sent;
    }

    // Where a live task will certainly run, if that is known already.
    std::optional<int> known_pin(const record& r) const {
        if (r.pin) return r.pin;
        if (r.spec.engines.size() == 1) return r.spec.engines.front();
        if (r.state == task_state::sent && r.retries_left == 0) return r.engine;
        return std::nullopt;
    }

    bool may_run_on(const record& r, int e) const { return eng(e).alive && !detail::contains(r.failed_on, e); }

    bool may_run_somewhere(const record& r) const {
        if (r.pin) return may_run_on(r, *r.pin);
        if (!r.spec.engines.empty())
            return std::any_of(r.spec.engines.begin(), r.spec.engines.end(), [&](int e) { return may_run_on(r, e); });
        int excluded = 0;
        for (int e : r.failed_on)
            excluded += eng(e).alive ? 1 : 0;
        return alive > excluded;
    }

    // Makes a task ready: into the open queue, or into the queue of each engine of its restricted
    // set it may still run on. False (and nothing queued) if there is no such engine.
    bool enqueue(record& r) {
        r.state = task_state::ready;
        if (held.contains(r.spec.client)) {
            // Out of every queue until release_client(); whether it can still run is judged now.
            r.held = true;
            if (!r.restricted()) return may_run_somewhere(r);
            return r.pin ? may_run_on(r, *r.pin)
                         : std::any_of(r.spec.engines.begin(), r.spec.engines.end(), [&](int e) { return may_run_on(r, e); });
        }
        if (!r.restricted()) {
            if (!may_run_somewhere(r)) return false;
            open.emplace(r.seq, r.spec.id);
            r.in_open = true;
            return true;
        }
        const std::vector<int> one{r.pin.value_or(-1)};
        for (int e : r.pin ? one : r.spec.engines) {
            if (!may_run_on(r, e)) continue;
            eng(e).queue.emplace(r.seq, r.spec.id);
            r.queued_on.push_back(e);
            file(e);
        }
        return !r.queued_on.empty();
    }

    // Takes a task out of the ready queues and the deadlines, whatever its state.
    void unqueue(record& r) {
        r.held = false;
        if (r.in_open) open.erase(r.seq), r.in_open = false;
        for (int e : r.queued_on) {
            eng(e).queue.erase(r.seq);
            file(e);
        }
        r.queued_on.clear();
        if (r.deadline) deadlines.erase(*r.deadline), r.deadline.reset();
    }

    void remember(task_id id, detail::finished_record f) {
        if (remember_finished == 0) return;
        finished.emplace(id, std::move(f));
        finished_order.push_back(id);
        if (finished_order.size() > remember_finished) {
            finished.erase(finished_order.front());
            finished_order.pop_front();
        }
    }

    // The one exit of a live task: remembered, reported, its dependents told at the next drain().
    // `r` is gone afterwards.
    void settle(record& r, bool ok, int engine, outcome o, std::vector<outcome>& out) {
        unqueue(r);
        const task_id id = r.spec.id;
        remember(id, {ok, engine, o.kind});
        to_notify.push_back({id, ok, engine, o.kind, std::move(r.waiters)});
        o.id = id;
        o.client = r.spec.client;
        o.engine = engine;
        out.push_back(std::move(o));
        tasks.erase(id);
    }

    void drop(record& r, error_kind kind, std::string evalue, std::vector<outcome>& out) {
        const int engine = r.state == task_state::sent ? r.engine : -1;
        settle(r, false, engine, {.what = verdict::dropped, .kind = kind, .evalue = std::move(evalue)},
               out);
    }

    void make_ready(record& r, std::vector<outcome>& out) {
        if (r.deadline) deadlines.erase(*r.deadline), r.deadline.reset();
        if (!enqueue(r))
            drop(r, error_kind::impossible_dependency,
                 "task " + std::to_string(r.spec.id) + ": none of the engines it may run on is alive", out);
    }

    void dependency_settled(const detail::settled& s, const detail::waiter& w, std::vector<outcome>& out) {
        auto it = tasks.find(w.id);
        if (it == tasks.end() || it->second.seq != w.seq || it->second.state != task_state::waiting) return;
        record& d = it->second;
        std::erase(d.pending, s.id);
        const std::string who = "task " + std::to_string(d.spec.id) + ": ";
        if (!s.ok && (w.follow || !d.spec.after_failure_ok)) {
            drop(d, error_kind::dependency_failed,
                 who + "dependency " + std::to_string(s.id) + " failed" + (s.kind == error_kind::none ? "" : " (" + std::string(protocol::name_of(s.kind)) + ")"),
                 out);
            return;
        }
        if (w.follow) {
            if (d.pin && *d.pin != s.engine) {
                drop(d, error_kind::impossible_dependency,
                     who + "follow dependencies ran on different engines (" + std::to_string(*d.pin) + " and " +
                         std::to_string(s.engine) + ")",
                     out);
                return;
            }
            if (!d.spec.engines.empty() && !detail::contains(d.spec.engines, s.engine)) {
                drop(d, error_kind::impossible_dependency,
                     who + "follow dependency " + std::to_string(s.id) + " ran on engine " + std::to_string(s.engine) +
                         ", which it may not run on",
                     out);
                return;
            }
            d.pin = s.engine;
        }
        if (d.pending.empty()) make_ready(d, out);
    }

    void drain(std::vector<outcome>& out) {
        while (!to_notify.empty()) {
            auto s = std::move(to_notify.back());
            to_notify.pop_back();
            for (const auto& w : s.waiters)
                dependency_settled(s, w, out);
        }
    }

    // Live task ids matching `pred`, in submission order (reports come out deterministic).
    template <class Pred> std::vector<task_id> live_ids(Pred pred) const {
        std::vector<std::pair<std::uint64_t, task_id>> v;
        for (const auto& [id, r] : tasks)
            if (pred(r)) v.emplace_back(r.seq, id);
        std::sort(v.begin(), v.end());
        std::vector<task_id> ids;
        for (auto& p : v)
            ids.push_back(p.second);
        return ids;
    }
};

scheduler::scheduler(int engines, scheduler_options opt) {
    if (engines < 0) throw std::invalid_argument("scheduler: negative number of engines");
    if (opt.prefetch < 1) throw std::invalid_argument("scheduler: prefetch must be at least 1");
    if (opt.max_prefetch < opt.prefetch) throw std::invalid_argument("scheduler: max_prefetch below prefetch");
    max_prefetch_ = opt.max_prefetch;
    impl_ = std::make_unique<impl>(engines, opt);
}
scheduler::~scheduler() = default;
scheduler::scheduler(scheduler&&) noexcept = default;
scheduler& scheduler::operator=(scheduler&&) noexcept = default;

void scheduler::set_prefetch(int prefetch) {
    if (prefetch < 1 || prefetch > max_prefetch_)
        throw std::invalid_argument("scheduler: prefetch must be 1.." + std::to_string(max_prefetch_));
    if (prefetch == impl_->prefetch) return;
    impl_->prefetch = prefetch;
    for (int e = 0; e < static_cast<int>(impl_->engines.size()); ++e) impl_->file(e);
}

int scheduler::prefetch() const { return impl_->prefetch; }

int scheduler::engines() const {
    return static_cast<int>(impl_->engines.size());
}
std::size_t scheduler::live() const {
    return impl_->tasks.size();
}

std::optional<int> scheduler::engine_of(task_id id) const {
    auto it = impl_->tasks.find(id);
    if (it == impl_->tasks.end() || it->second.state != task_state::sent) return std::nullopt;
    return it->second.engine;
}

std::optional<outcome> scheduler::submit(task t, time_point now) {
    auto& m = *impl_;
    const std::string who = "task " + std::to_string(t.id) + ": ";
    auto refuse = [&](error_kind kind, std::string why) {
        return outcome{t.id, t.client, verdict::refused, -1, kind, who + why};
    };
    if (m.tasks.contains(t.id) || m.finished.contains(t.id))
        return refuse(error_kind::invalid_task, "the id is already in use");
    if (t.retries < 0) return refuse(error_kind::invalid_task, "retries must not be negative");
    std::sort(t.engines.begin(), t.engines.end());
    t.engines.erase(std::unique(t.engines.begin(), t.engines.end()), t.engines.end());
    for (int e : t.engines)
        if (!m.valid_engine(e))
            return refuse(error_kind::invalid_task, "there is no engine " + std::to_string(e) + " (engines are 0.." +
                                                         std::to_string(m.engines.size()) + "-1)");

    // One entry per dependency; listed in both `after` and `follow` means follow.
    std::map<task_id, bool> deps;
    for (auto id : t.after)
        deps.emplace(id, false);
    for (auto id : t.follow)
        deps[id] = true;

    std::optional<std::pair<task_id, int>> pin;  // the first follow dependency with a known engine
    for (const auto& [dep, follow] : deps) {
        auto live = m.tasks.find(dep);
        auto done = m.finished.find(dep);
        if (live == m.tasks.end() && done == m.finished.end())
            return refuse(error_kind::invalid_dependency,
                          "dependency " + std::to_string(dep) +
                              " is unknown (never submitted, or finished too long ago to be remembered)");
        if (!follow) continue;
        std::optional<int> e;
        if (live != m.tasks.end())
            e = m.known_pin(live->second);
        else if (done->second.ok)
            e = done->second.engine;
        if (!e) continue;
        if (pin && pin->second != *e)
            return refuse(error_kind::impossible_dependency,
                          "follow dependencies run on different engines (" + std::to_string(pin->first) + " on " +
                              std::to_string(pin->second) + ", " + std::to_string(dep) + " on " + std::to_string(*e) +
                              ")");
        pin = {dep, *e};
    }
    if (pin && !t.engines.empty() && !std::binary_search(t.engines.begin(), t.engines.end(), pin->second))
        return refuse(error_kind::impossible_dependency, "follow dependency " + std::to_string(pin->first) +
                                                              " runs on engine " + std::to_string(pin->second) +
                                                              ", which is not among the engines it may run on");
    if (pin && !m.eng(pin->second).alive)
        return refuse(error_kind::impossible_dependency, "follow dependency " + std::to_string(pin->first) +
                                                              " ran on engine " + std::to_string(pin->second) +
                                                              ", which died");
    if (t.engines.empty() ? m.alive == 0
                          : std::none_of(t.engines.begin(), t.engines.end(), [&](int e) { return m.eng(e).alive; }))
        return refuse(error_kind::impossible_dependency, "none of the engines it may run on is alive");

    // Accepted.
    const task_id id = t.id;
    auto& r = m.tasks.emplace(id, impl::record{}).first->second;
    r.seq = m.next_seq++;
    r.retries_left = t.retries;
    r.spec = std::move(t);
    std::optional<task_id> failed_dep;
    for (const auto& [dep, follow] : deps) {
        if (auto live = m.tasks.find(dep); live != m.tasks.end()) {
            live->second.waiters.push_back({id, r.seq, follow});
            r.pending.push_back(dep);
            continue;
        }
        const auto& f = m.finished.at(dep);
        if (!f.ok && (follow || !r.spec.after_failure_ok) && !failed_dep) failed_dep = dep;
        if (follow && f.ok) r.pin = f.engine;  // agrees with `pin`, checked above
    }
    std::vector<outcome> out;
    if (failed_dep) {
        const auto& f = m.finished.at(*failed_dep);
        m.drop(r, error_kind::dependency_failed,
               who + "dependency " + std::to_string(*failed_dep) + " failed" +
                   (f.kind == error_kind::none ? "" : " (" + std::string(protocol::name_of(f.kind)) + ")"),
               out);
    } else if (r.pending.empty()) {
        m.make_ready(r, out);
    } else if (r.spec.timeout) {
        r.deadline = m.deadlines.emplace(now + *r.spec.timeout, id);
    }
    m.drain(out);  // nothing depends on a task this new, but drop() left it in to_notify
    if (out.empty()) return std::nullopt;
    return out.front();
}

std::vector<assignment> scheduler::dispatch() {
    auto& m = *impl_;
    std::vector<assignment> sent;
    std::vector<int> aside;  // free engines with nothing they may run, out of the buckets until we return
    for (;;) {
        // With open tasks every free engine is a candidate; without, only those with a queue.
        const int e = m.open.empty() ? m.restricted.least() : m.free.least();
        if (e < 0) break;
        auto& er = m.eng(e);
        impl::record* pick = nullptr;
        if (!er.queue.empty()) pick = &m.tasks.at(er.queue.begin()->second);
        // The oldest open task this engine has not already failed; only retried tasks are skipped.
        for (const auto& [seq, id] : m.open) {
            if (pick && seq > pick->seq) break;
            auto& r = m.tasks.at(id);
            if (!detail::contains(r.failed_on, e)) {
                pick = &r;
                break;
            }
        }
        if (!pick) {
            er.aside = true;
            m.file(e);
            aside.push_back(e);
            continue;
        }
        m.unqueue(*pick);
        pick->state = task_state::sent;
        pick->engine = e;
        ++er.load;
        er.last_sent = ++m.sends;
        m.file(e);
        sent.push_back({pick->spec.id, e});
    }
    for (int e : aside) {
        m.eng(e).aside = false;
        m.file(e);
    }
    return sent;
}

std::vector<outcome> scheduler::on_finished(task_id id, int engine, bool ok, bool unmet) {
    auto& m = *impl_;
    std::vector<outcome> out;
    auto it = m.tasks.find(id);
    if (it == m.tasks.end() || it->second.state != task_state::sent || it->second.engine != engine) return out;
    auto& r = it->second;
    auto& er = m.eng(engine);
    --er.load;
    ++er.done;
    m.file(engine);
    if (ok) {
        m.settle(r, true, engine, {.what = verdict::done}, out);
    } else if (unmet) {
        // Not a failure of the task: it goes to another engine, retries untouched.
        r.failed_on.push_back(engine);
        r.engine = -1;
        if (m.enqueue(r)) {
            out.push_back({id, r.spec.client, verdict::retried, engine, {}, {}});
        } else {
            std::string tried;
            for (int e : r.failed_on) {
                if (!tried.empty()) tried += ", ";
                tried += std::to_string(e);
            }
            r.state = task_state::sent;  // for drop(): where it last was
            r.engine = engine;
            m.drop(r, error_kind::impossible_dependency,
                   "task " + std::to_string(id) + ": its function dependency (depend) was not met on any engine it may run on (tried " +
                       tried + ")",
                   out);
        }
    } else if (r.retries_left > 0) {
        --r.retries_left;
        r.failed_on.push_back(engine);
        r.engine = -1;
        if (m.enqueue(r))
            out.push_back({id, r.spec.client, verdict::retried, engine, {}, {}});
        else  // every engine it may run on has failed it already
            m.settle(r, false, engine, {.what = verdict::failed}, out);
    } else {
        m.settle(r, false, engine, {.what = verdict::failed}, out);
    }
    m.drain(out);
    return out;
}

std::vector<outcome> scheduler::on_engine_dead(int engine) {
    auto& m = *impl_;
    std::vector<outcome> out;
    if (!m.valid_engine(engine) || !m.eng(engine).alive) return out;
    auto& er = m.eng(engine);
    er.alive = false;
    --m.alive;
    m.file(engine);  // out of the buckets before anything is queued again
    const std::string where = "engine " + std::to_string(engine);
    for (auto id : m.live_ids([](const impl::record&) { return true; })) {
        auto it = m.tasks.find(id);
        if (it == m.tasks.end()) continue;
        auto& r = it->second;
        const std::string who = "task " + std::to_string(id) + ": ";
        if (r.state == task_state::sent && r.engine == engine) {
            if (r.retries_left > 0) {
                --r.retries_left;
                r.failed_on.push_back(engine);
                r.engine = -1;
                if (m.enqueue(r)) {
                    out.push_back({id, r.spec.client, verdict::retried, engine, {}, {}});
                    continue;
                }
                r.engine = engine;  // for drop(): where it last was
                r.state = task_state::sent;
                m.drop(r, error_kind::engine_died,
                       who + where + " died while holding it, and no other engine may run it", out);
            } else {
                m.drop(r, error_kind::engine_died, who + where + " died while holding it", out);
            }
            continue;
        }
        if (r.state == task_state::ready && detail::contains(r.queued_on, engine)) {
            std::erase(r.queued_on, engine);
            er.queue.erase(r.seq);
        }
        if (r.state != task_state::sent && !m.may_run_somewhere(r))
            m.drop(r, error_kind::impossible_dependency,
                   who + where + " died, and none of the engines it may run on is left", out);
    }
    er.queue.clear();
    er.load = 0;
    m.file(engine);
    m.drain(out);
    return out;
}

std::vector<outcome> scheduler::expire(time_point now) {
    auto& m = *impl_;
    std::vector<outcome> out;
    while (!m.deadlines.empty() && m.deadlines.begin()->first <= now) {
        auto& r = m.tasks.at(m.deadlines.begin()->second);
        const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(*r.spec.timeout).count();
        m.drop(r, error_kind::task_timeout,
               "task " + std::to_string(r.spec.id) + ": waited " + std::to_string(waited) +
                   " ms for its dependencies; still pending: " + detail::id_list(r.pending),
               out);
    }
    m.drain(out);
    return out;
}

std::optional<scheduler::time_point> scheduler::next_deadline() const {
    if (impl_->deadlines.empty()) return std::nullopt;
    return impl_->deadlines.begin()->first;
}

abort_report scheduler::abort(const std::vector<task_id>& ids) {
    auto& m = *impl_;
    abort_report rep;
    for (auto id : ids) {
        auto it = m.tasks.find(id);
        if (it == m.tasks.end()) {
            rep.refused.push_back({id, m.finished.contains(id) ? "already finished" : "unknown task"});
        } else if (it->second.state == task_state::sent) {
            rep.refused.push_back({id, "cannot abort: running on engine " + std::to_string(it->second.engine)});
        } else {
            m.drop(it->second, error_kind::task_aborted, "task " + std::to_string(id) + ": aborted", rep.dropped);
        }
    }
    m.drain(rep.dropped);
    return rep;
}

abort_report scheduler::abort_client(std::uint32_t client) {
    return abort(impl_->live_ids([&](const impl::record& r) { return r.spec.client == client; }));
}

void scheduler::hold_client(std::uint32_t client) {
    auto& m = *impl_;
    if (!m.held.insert(client).second) return;
    for (auto& [id, r] : m.tasks)
        if (r.spec.client == client && r.state == task_state::ready) {
            m.unqueue(r);
            r.held = true;
        }
}

std::vector<outcome> scheduler::release_client(std::uint32_t client) {
    auto& m = *impl_;
    std::vector<outcome> out;
    if (!m.held.erase(client)) return out;
    for (auto id : m.live_ids([&](const impl::record& r) { return r.held && r.spec.client == client; })) {
        auto& r = m.tasks.at(id);
        r.held = false;
        m.make_ready(r, out);
    }
    m.drain(out);
    return out;
}

void scheduler::engine_busy(int e, int delta) {
    auto& m = *impl_;
    if (!m.valid_engine(e)) return;
    auto& r = m.eng(e);
    r.direct = std::max(0, r.direct + delta);
    m.file(e);
}

queue_status scheduler::status() const {
    const auto& m = *impl_;
    queue_status s;
    for (const auto& e : m.engines)
        s.engines.push_back({e.alive, e.load, e.done});
    for (const auto& [id, r] : m.tasks) {
        if (r.state != task_state::sent) ++s.unassigned;
        if (r.state == task_state::waiting) ++s.waiting;
    }
    return s;
}

}  // namespace pcluster::controller
