#include "task_farm.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "pcluster/protocol/codec.hpp"

namespace pcluster::controller {

namespace proto = pcluster::protocol;

task_farm::task_farm(int n_engines, int fixed_prefetch)
    : sched_(n_engines, scheduler_options{fixed_prefetch ? std::min(fixed_prefetch, max_prefetch) : 2, max_prefetch}),
      fixed_prefetch_(fixed_prefetch) {}

void task_farm::submit(request q) {
    const auto t = proto::decode<proto::task_request>(q.frame.view());
    task spec;
    spec.id = t.r.id;
    spec.client = proto::client_of(t.r.id);
    spec.engines = q.targets;
    spec.after = t.after;
    spec.follow = t.follow;
    spec.retries = t.retries;
    spec.after_failure_ok = t.after_failure_ok;
    if (t.timeout > 0)
        spec.timeout = std::chrono::duration_cast<sched_clock::duration>(std::chrono::duration<double>(t.timeout));
    if (auto refused = sched_.submit(spec, sched_clock::now())) {
        answer(*refused);
        return;
    }
    clients_.insert(spec.client);
    tasks_.emplace(t.r.id, std::move(q));
}

std::vector<request> task_farm::dispatch() {
    std::vector<request> out;
    for (const auto& a : sched_.dispatch()) {
        auto it = tasks_.find(a.id);
        if (it == tasks_.end()) {
            // Cannot happen (the scheduler only sends tasks we hold); if it did, free the slot.
            spdlog::error("task {:#x} scheduled but unknown here; failing it", a.id);
            for (const auto& o : sched_.on_finished(a.id, a.engine, false)) answer(o);
            continue;
        }
        request q;
        q.frame = it->second.frame;
        q.r = it->second.r;
        q.type = it->second.type;
        q.task = true;
        q.targets = {a.engine};
        out.push_back(std::move(q));
    }
    return out;
}

bool task_farm::expire() {
    auto next = sched_.next_deadline();
    if (!next || *next > sched_clock::now()) return false;
    for (const auto& o : sched_.expire(sched_clock::now())) answer(o);
    return true;
}

// The prefetch window must cover the time from an engine finishing a task to the next one
// reaching it (its reply to us, our loop, the send): about reaction_s. Tasks much shorter than
// that need a deep window or engines idle between them; long tasks need only 2 (one running, one
// waiting), which keeps the balance between engines fine-grained. The window follows a moving
// average of task run times, checked every 32 replies.
void task_farm::adapt_prefetch(double run_s) {
    if (fixed_prefetch_) return;
    mean_run_s_ = mean_run_s_ < 0 ? run_s : 0.9 * mean_run_s_ + 0.1 * run_s;
    if (++replies_since_adapt_ < 32) return;
    replies_since_adapt_ = 0;
    constexpr double reaction_s = 300e-6;
    const double want = std::ceil(reaction_s / std::max(mean_run_s_, 1e-6)) + 1;
    sched_.set_prefetch(static_cast<int>(std::clamp(want, 2.0, double(max_prefetch))));
}

bool task_farm::on_reply(std::uint64_t id, int engine, const proto::frame_view& v) {
    bool ok = false, unmet = false;
    try {
        const auto rep = proto::decode<proto::engine_reply>(v);
        ok = rep.status == proto::reply_status::ok;
        unmet = rep.kind == error_kind::unmet_dependency;
        adapt_prefetch(std::max(0.0, rep.completed - rep.started));
    } catch (const std::exception& e) {
        spdlog::error("engine {} sent a bad reply for task {:#x}: {}", engine, id, e.what());
    }
    bool forward = false;
    bool first = true;
    for (const auto& o : sched_.on_finished(id, engine, ok, unmet)) {
        if (first && o.id == id) {
            forward = o.what == verdict::done || o.what == verdict::failed;
            if (o.what == verdict::dropped) answer(o);  // in place of the engine's reply
            else if (o.what != verdict::retried) tasks_.erase(id);
        } else {
            answer(o);
        }
        first = false;
    }
    return forward;
}

// A task the scheduler settled without an engine reply to forward (refused, dropped) is
// answered with an error reply in its name, from the controller.
void task_farm::answer(const outcome& o, const std::string& why) {
    // A refused submission is not remembered - and may carry the id of a live task (a client
    // reusing an id): that task's entry stays.
    if (o.what != verdict::refused) tasks_.erase(o.id);
    if (o.what != verdict::dropped && o.what != verdict::refused) return;
    answers_.push_back(proto::error_reply(o.id, proto::reply_origin::controller, o.engine, o.kind,
                                          why.empty() ? o.evalue : why));
}

void task_farm::engine_died(int e, const std::string& how) {
    for (auto o : sched_.on_engine_dead(e)) {
        if (o.what == verdict::retried) continue;  // queued again: its request stays here
        if (o.kind == error_kind::engine_died) o.evalue += " (" + how + ")";
        answer(o);
    }
}

void task_farm::abort_all(const std::string& why) {
    for (auto c : clients_)
        for (const auto& o : sched_.abort_client(c).dropped) answer(o, why);
    clients_.clear();
}

std::optional<proto::control_reply> task_farm::control(const proto::control_request& req) {
    proto::control_reply rep;
    rep.id = req.r.id;
    const auto client = proto::client_of(req.r.id);
    switch (req.action) {
    case proto::control_action::abort: {
        std::vector<task_id> mine;
        for (auto id : req.ids) {
            if (proto::client_of(id) != client) rep.refused.push_back("task " + std::to_string(id) + ": not this client's task");
            else mine.push_back(id);
        }
        auto report = sched_.abort(mine);
        for (const auto& o : report.dropped) {
            if (o.kind == error_kind::task_aborted) rep.aborted.push_back(o.id);
            answer(o);
        }
        for (const auto& r : report.refused) rep.refused.push_back("task " + std::to_string(r.id) + ": " + r.reason);
        return rep;
    }
    case proto::control_action::queue_status: {
        const auto st = sched_.status();
        for (int e = 0; e < static_cast<int>(st.engines.size()); ++e)
            rep.engines.push_back({e, st.engines[e].assigned, st.engines[e].done, st.engines[e].alive});
        rep.unassigned = st.unassigned;
        rep.waiting = st.waiting;
        return rep;
    }
    case proto::control_action::forget_client:
        for (const auto& o : sched_.abort_client(client).dropped) answer(o);
        sched_.release_client(client);  // nothing of it is left to queue
        clients_.erase(client);
        return std::nullopt;  // the client is gone: nobody to answer
    case proto::control_action::hold_client:
        sched_.hold_client(client);
        return std::nullopt;
    case proto::control_action::release_client:
        for (const auto& o : sched_.release_client(client)) answer(o);
        return std::nullopt;
    case proto::control_action::interrupt:
    case proto::control_action::signal:
    case proto::control_action::results:
    case proto::control_action::fetch_results:
    case proto::control_action::purge_results:
    case proto::control_action::resubmit:
    case proto::control_action::stop_engines:
        break;  // the controller's own (controller::interrupt, send_signal, answer_store, stop_engines)
    }
    rep.ok = false;
    rep.message = "unknown control action";
    return rep;
}

}  // namespace pcluster::controller
