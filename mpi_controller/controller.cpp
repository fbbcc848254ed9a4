#include "controller.hpp"

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <map>
#include <set>
#include <stdexcept>
#include <system_error>
#include <unordered_map>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/mpi_wire.hpp"
#include "pcluster/protocol/shm.hpp"
#include "pcluster/protocol/stream.hpp"
#include "scheduler.hpp"

extern char** environ;

namespace pcluster::controller {

namespace proto = pcluster::protocol;
namespace wire = pcluster::mpi_wire;

namespace detail {

volatile std::sig_atomic_t stop_requested = 0;
extern "C" void on_signal(int) { stop_requested = 1; }

std::string hostname() {
    char buf[256] = {0};
    gethostname(buf, sizeof buf - 1);
    return buf;
}

// A request the bridge handed over, with what routing needs.
struct op {
    proto::received_frame frame;
    proto::route r;
    std::vector<int> targets;  // resolved: never empty
    bool shutdown = false;
    bool internal = false;     // made by the controller itself; replies are dropped
    bool task = false;         // a farm task: its reply goes through the scheduler
};

// An MPI operation in flight: completes when all `reqs` are done, then `then` runs.
struct inflight {
    std::vector<MPI_Request> reqs;
    std::function<void()> then;
};

class controller {
public:
    // Collective over `world` (the engines duplicate it in the same order).
    explicit controller(MPI_Comm world) {
        wire::check(MPI_Comm_dup(world, &bcomm_), "MPI_Comm_dup");
        wire::check(MPI_Comm_dup(world, &p2p_), "MPI_Comm_dup");
        wire::check(MPI_Comm_dup(world, &reply_), "MPI_Comm_dup");
        int size;
        MPI_Comm_size(world, &size);
        n_ = size - 1;
        p2p_sent_.assign(n_, 0);
        pending_.resize(n_);
        fixed_prefetch_ = prefetch_from_env();
        sched_.emplace(n_, scheduler_options{fixed_prefetch_ ? fixed_prefetch_ : 2, max_prefetch});
        shm_owner_ = "s" + std::to_string(getpid());
    }
    ~controller() {
        MPI_Comm_free(&bcomm_);
        MPI_Comm_free(&p2p_);
        MPI_Comm_free(&reply_);
    }

    // The bridge's socket, or -1 when the bridge failed to start (the job then stops at once).
    void set_bridge(int fd) { bridge_fd_ = fd; }

    // Event loop. Returns once the shutdown request's replies reached the bridge (or the bridge
    // is gone and engines were told to stop).
    void run() {
        wire::backoff idle("CONTROLLER");
        if (bridge_fd_ < 0) enqueue_internal_shutdown();
        while (!finished_) {
            bool progress = false;
            if (detail::stop_requested && !stopping_) {
                spdlog::warn("signal received: shutting the engines down");
                end_reason_ = "the job was stopped by a signal (Ctrl-C or SIGTERM to mpirun)";
                enqueue_internal_shutdown();
                progress = true;
            }
            progress |= read_bridge();
            progress |= expire_tasks();
            progress |= issue();  // before tasks: what arrived first is issued first
            progress |= dispatch_tasks();
            progress |= poll_mpi();
            progress |= probe_replies();
            flush_bridge();
            if (shutdown_issued_ && shutdown_replies_left_ == 0 && inflight_.empty() && queue_.empty()) finished_ = true;
            if (progress) {
                idle.reset();
                continue;
            }
            // While transfers are under way keep polling (yielding): they only advance when we do.
            const std::int64_t s = idle.next_sleep(!inflight_.empty());
            if (s == 0) continue;
            // Sleep in ppoll so a request from the bridge wakes us at once.
            pollfd p{bridge_fd_, static_cast<short>(POLLIN | (writer_.empty() ? 0 : POLLOUT)), 0};
            timespec ts{static_cast<time_t>(s / 1'000'000'000), static_cast<long>(s % 1'000'000'000)};
            ::ppoll(bridge_fd_ >= 0 ? &p : nullptr, bridge_fd_ >= 0 ? 1 : 0, &ts, nullptr);
        }
        if (bridge_fd_ >= 0) {
            writer_.push(proto::encode(proto::job_ended{end_reason_}));
            int fl = fcntl(bridge_fd_, F_GETFL);
            fcntl(bridge_fd_, F_SETFL, fl & ~O_NONBLOCK);
            try {
                while (!writer_.flush(bridge_fd_)) {}
            } catch (const std::exception& e) {
                spdlog::warn("could not pass the last replies to the bridge: {}", e.what());
            }
            for (auto& s : pool_) ::unlink(s.path.c_str());
            pool_.clear();
            lent_.clear();  // clients map theirs; the bridge removes what is left at the end
            // Closing our end is what tells the bridge the job is over.
            ::close(bridge_fd_);
            bridge_fd_ = -1;
        }
    }

private:
    bool read_bridge() {
        if (bridge_fd_ < 0) return false;
        bool any = false;
        for (int i = 0; i < 64 || reader_.buffered(); ++i) {
            proto::received_frame f;
            proto::frame_reader::status st;
            try {
                st = reader_.read(bridge_fd_, &f);
            } catch (const std::exception& e) {
                spdlog::error("bridge connection failed: {}", e.what());
                bridge_gone();
                return true;
            }
            if (st == proto::frame_reader::status::again) break;
            if (st == proto::frame_reader::status::closed) {
                spdlog::warn("the bridge closed its connection; ending the job");
                bridge_gone();
                return true;
            }
            any = true;
            accept(std::move(f));
        }
        return any;
    }

    void bridge_gone() {
        ::close(bridge_fd_);
        bridge_fd_ = -1;
        if (!stopping_) enqueue_internal_shutdown();
    }

    void enqueue_internal_shutdown() {
        proto::shutdown_request req;
        auto out = proto::encode(req);
        auto flat = out.flatten();
        auto bytes = std::make_shared<proto::byte_buffer>(flat.size());
        std::memcpy(bytes->data(), flat.data(), flat.size());
        op o;
        o.frame.bytes = std::move(bytes);
        o.targets = all_engines();
        o.shutdown = true;
        o.internal = true;
        stopping_ = true;
        abort_all_tasks("the job is shutting down");
        queue_.push_back(std::move(o));
    }

    std::vector<int> all_engines() const {
        std::vector<int> v(n_);
        for (int i = 0; i < n_; ++i) v[i] = i;
        return v;
    }

    // Validates a request from the bridge and queues it, or answers it with an error at once.
    void accept(proto::received_frame f) {
        if (proto::is(f.view(), proto::message_type::shm_return)) {
            try {
                take_back(proto::decode<proto::shm_return>(f.view()));
            } catch (const std::exception& e) {
                spdlog::warn("bad shm_return: {}", e.what());
            }
            return;
        }
        op o;
        try {
            if (proto::is(f.view(), proto::message_type::shm_frame)) {
                auto ref = proto::decode<proto::shm_frame>(f.view());
                o.r.id = ref.id;
                f.bytes = proto::take_shm(ref);
                if (proto::decode_route(f.view()).id != ref.id)
                    throw std::invalid_argument("shared-memory frame holds another request than it names");
            }
            auto view = f.view();
            o.r = proto::decode_route(view);
            if (stopping_) throw std::invalid_argument("the job is shutting down");
            if (proto::is(view, proto::message_type::control_request)) {
                control(proto::decode<proto::control_request>(view));
                return;
            }
            std::set<int> seen;
            for (auto t : o.r.targets) {
                if (t < 0 || t >= n_)
                    throw std::out_of_range("engine id " + std::to_string(t) + " out of range: the job has engines 0.." +
                                            std::to_string(n_ - 1));
                if (!seen.insert(t).second)
                    throw std::invalid_argument("engine id " + std::to_string(t) + " given twice");
                o.targets.push_back(t);
            }
            if (o.targets.empty()) o.targets = all_engines();
            std::uint64_t bufs = o.r.shared_bufs;
            if (!o.r.part_bufs.empty()) {
                if (o.r.part_bufs.size() != o.targets.size())
                    throw std::invalid_argument("request has " + std::to_string(o.r.part_bufs.size()) +
                                                " parts for " + std::to_string(o.targets.size()) + " targets");
                for (auto c : o.r.part_bufs) bufs += c;
            }
            if (bufs != view.nbufs())
                throw std::invalid_argument("request layout names " + std::to_string(bufs) +
                                            " buffers, the frame has " + std::to_string(view.nbufs()));
            if (proto::is(view, proto::message_type::task_request)) {
                if (!o.r.part_bufs.empty()) throw std::invalid_argument("a task has no parts");
                // No targets: any engine (an explicit list of all engines would queue it on each).
                submit_task(proto::decode<proto::task_request>(view),
                            o.r.targets.empty() ? std::vector<int>{} : std::move(o.targets), std::move(f));
                return;
            }
            o.shutdown = proto::is(view, proto::message_type::shutdown_request);
            if (o.shutdown) {
                end_reason_ = "a client shut the job down (rc.shutdown())";
                if (o.targets.size() != static_cast<std::size_t>(n_))
                    throw std::invalid_argument("shutdown must target every engine");
                stopping_ = true;
                abort_all_tasks("the job is shutting down");
            }
        } catch (const std::exception& e) {
            spdlog::warn("refused request {:#x}: {}", o.r.id, e.what());
            reply_error(o.r.id, e);
            return;
        }
        o.frame = std::move(f);
        queue_.push_back(std::move(o));
    }

    void reply_error(std::uint64_t id, const std::exception& e) {
        proto::engine_reply rep;
        rep.id = id;
        rep.engine = -1;
        rep.status = proto::reply_status::error;
        rep.ename = dynamic_cast<const std::out_of_range*>(&e) ? "IndexError" : "ValueError";
        rep.evalue = e.what();
        writer_.push(proto::encode(rep));
    }

    // Issues queued requests in arrival order; every engine replays that order (see mpi_wire.hpp).
    // Issues queued requests in arrival order. Requests for every engine go on the B channel
    // (collectives); requests for some engines go to each target point to point, so an engine
    // that is not targeted - perhaps busy running Python - neither delays them nor receives
    // their payload.
    bool issue() {
        bool any = false;
        while (!queue_.empty()) {
            op& o = queue_.front();
            const layout l = layout_of(o);
            if (o.targets.size() == static_cast<std::size_t>(n_) || o.shutdown) {
                issue_b(o, l);
            } else {
                for (std::size_t k = 0; k < o.targets.size(); ++k) issue_p(o, l, k);
            }
            queue_.pop_front();
            any = true;
        }
        return any;
    }

    // Where a request's bytes are: the blob (the frame up to its first part buffer, all of it
    // when it has no parts) and each target's part (parts are contiguous, in target order).
    struct layout {
        std::uint64_t blob_len = 0;
        bool has_parts = false;
        std::vector<std::uint64_t> part_off, part_len;  // by target index k
    };
    static layout layout_of(const op& o) {
        auto view = o.frame.view();
        const std::uint64_t size = o.frame.bytes->size();
        auto offset_of = [&](std::uint32_t b) { return b < view.nbufs() ? view.buf_offset(b) : size; };
        layout l;
        l.has_parts = !o.r.part_bufs.empty();
        l.blob_len = l.has_parts ? offset_of(o.r.shared_bufs) : size;
        if (l.has_parts) {
            std::uint32_t b = o.r.shared_bufs;
            for (std::size_t k = 0; k < o.targets.size(); ++k) {
                const std::uint32_t cnt = o.r.part_bufs[k];
                std::uint64_t len = 0;
                for (std::uint32_t j = 0; j < cnt; ++j) len += view.buf_len(b + j);
                l.part_off.push_back(offset_of(b));
                l.part_len.push_back(len);
                b += cnt;
            }
        }
        return l;
    }

    void issue_p(const op& o, const layout& l, std::size_t k) {
        const int e = o.targets[k];
        const std::uint64_t part_len = l.has_parts ? l.part_len[k] : 0;
        const wire::p_head h{bcast_sent_, l.blob_len, part_len, l.has_parts};
        auto bytes = o.frame.bytes;
        inflight fl;
        if (wire::p_inline(l.blob_len, part_len)) {
            // Head, blob and part in one message.
            auto msg = std::make_shared<std::vector<char>>(sizeof h + l.blob_len + part_len);
            std::memcpy(msg->data(), &h, sizeof h);
            std::memcpy(msg->data() + sizeof h, bytes->data(), l.blob_len);
            if (l.has_parts) std::memcpy(msg->data() + sizeof h + l.blob_len, bytes->data() + l.part_off[k], part_len);
            wire::isend_bytes(msg->data(), msg->size(), e + 1, wire::tag_p_head, p2p_, fl.reqs);
            fl.then = [msg] {};
        } else {
            auto head = std::make_shared<wire::p_head>(h);
            wire::isend_bytes(head.get(), sizeof(wire::p_head), e + 1, wire::tag_p_head, p2p_, fl.reqs);
            wire::isend_bytes(bytes->data(), l.blob_len, e + 1, wire::tag_p_data, p2p_, fl.reqs);
            if (l.has_parts)
                wire::isend_bytes(bytes->data() + l.part_off[k], part_len, e + 1, wire::tag_p_data, p2p_, fl.reqs);
            fl.then = [head, bytes] {};
        }
        ++p2p_sent_[e];
        pending_[e].push_back(pending_of(o, e));
        inflight_.push_back(std::move(fl));
    }

    void issue_b(const op& o, const layout& l) {
        auto bytes = o.frame.bytes;
        auto env = std::make_shared<std::vector<char>>(wire::envelope_size(n_), 0);
        auto* head = reinterpret_cast<wire::envelope_head*>(env->data());
        auto* slots = reinterpret_cast<wire::envelope_slot*>(env->data() + sizeof(wire::envelope_head));
        head->blob_len = l.blob_len;
        head->has_parts = l.has_parts;
        std::vector<std::uint64_t> part_len(n_, 0), part_off(n_, 0);
        for (std::size_t k = 0; k < o.targets.size(); ++k) {
            const int e = o.targets[k];
            slots[e].targeted = 1;
            if (l.has_parts) {
                part_off[e] = l.part_off[k];
                part_len[e] = l.part_len[k];
                slots[e].part_len = l.part_len[k];
            }
        }
        for (int e = 0; e < n_; ++e) slots[e].p2p_before = p2p_sent_[e];
        ++bcast_sent_;

        if (l.blob_len <= wire::inline_capacity(n_))
            std::memcpy(env->data() + wire::envelope_inline_offset(n_), bytes->data(), l.blob_len);
        inflight fl;
        wire::ibcast_bytes(env->data(), env->size(), bcomm_, fl.reqs);
        if (l.blob_len > wire::inline_capacity(n_)) wire::ibcast_bytes(bytes->data(), l.blob_len, bcomm_, fl.reqs);
        // MPI may read counts and displacements until the scatter completes: they live as long.
        auto counts = std::make_shared<std::vector<int>>(n_ + 1, 0);
        auto displs = std::make_shared<std::vector<int>>(n_ + 1, 0);
        if (l.has_parts) {
            if (wire::parts_fit_scatterv(part_len)) {
                const std::uint64_t base = l.part_off[0];
                for (int e = 0; e < n_; ++e) {
                    (*counts)[e + 1] = static_cast<int>(part_len[e]);
                    (*displs)[e + 1] = static_cast<int>(part_off[e] - base);
                }
                MPI_Request r;
                wire::check(MPI_Iscatterv(bytes->data() + base, counts->data(), displs->data(), MPI_BYTE, nullptr, 0,
                                          MPI_BYTE, 0, bcomm_, &r),
                            "MPI_Iscatterv");
                fl.reqs.push_back(r);
            } else {
                for (int e : o.targets)
                    wire::isend_bytes(bytes->data() + part_off[e], part_len[e], e + 1, wire::tag_part, bcomm_, fl.reqs);
            }
        }
        for (int e : o.targets) pending_[e].push_back(pending_of(o));
        if (o.shutdown) {
            shutdown_issued_ = true;
            shutdown_replies_left_ = static_cast<int>(o.targets.size());
        }
        fl.then = [env, bytes, counts, displs] {};
        inflight_.push_back(std::move(fl));
    }

    // What the controller must remember about a request until each target's reply is in.
    struct pending {
        std::uint64_t id;
        bool shm;
        bool internal;
        bool shutdown;
        bool task = false;
        int engine = -1;
    };
    static pending pending_of(const op& o, int engine = -1) {
        return {o.r.id, (o.r.flags & proto::reply_by_shm) != 0, o.internal, o.shutdown, o.task, engine};
    }

    // Where a reply of `len` bytes goes, and what to do once it is there: into shared memory when
    // the client shares our host and the reply is large (the client maps it: no socket copies),
    // else into memory and on to the bridge. Internal requests' replies are dropped.
    std::pair<char*, std::function<void()>> reply_destination(std::uint64_t len, const pending& p) {
        if (p.shm && !p.internal && len >= proto::shm_threshold) {
            try {
                auto seg = std::make_shared<proto::shm_out>(reply_segment(len));
                const std::uint64_t id = p.id;
                return {seg->map->data(), [this, seg, id, len, p] {
                            if (p.task && !task_reply_wanted(p, proto::frame_view(seg->map->data(), len))) {
                                pool_.push_back(std::move(*seg));  // a retried task's reply: reuse
                                return;
                            }
                            // Lent to the client until it hands it back (shm_return). We keep our
                            // mapping: the pages are shared, and taking it back costs nothing.
                            lent_.emplace(seg->path, *seg);
                            writer_.push(proto::encode(proto::shm_frame{id, seg->path, len, true}));
                        }};
            } catch (const std::system_error& e) {
                spdlog::warn("shared memory unavailable ({}); the reply goes through the bridge", e.what());
            }
        }
        auto big = std::make_shared<proto::byte_buffer>(std::max<std::uint64_t>(len, 1));
        return {big->data(), [this, big, p, len] {
                    if (p.internal) return;
                    if (p.task && !task_reply_wanted(p, proto::frame_view(big->data(), len))) return;
                    writer_.push_raw(big);
                }};
    }

    // ---- the task farm (scheduler.hpp decides; this sends and answers) ----
    // PCLUSTER_TASK_PREFETCH=k fixes the window; otherwise it adapts (see adapt_prefetch).
    static int prefetch_from_env() {
        const char* v = std::getenv("PCLUSTER_TASK_PREFETCH");
        return v && std::atoi(v) > 0 ? std::min(std::atoi(v), max_prefetch) : 0;
    }

    // The prefetch window must cover the time from an engine finishing a task to the next one
    // reaching it (its reply to us, our loop, the send): about reaction_s. Tasks much shorter
    // than that need a deep window or engines idle between them; long tasks need only 2 (one
    // running, one waiting), which keeps the balance between engines fine-grained. The window
    // follows a moving average of task run times, checked every 32 replies.
    void adapt_prefetch(double run_s) {
        if (fixed_prefetch_) return;
        mean_run_s_ = mean_run_s_ < 0 ? run_s : 0.9 * mean_run_s_ + 0.1 * run_s;
        if (++replies_since_adapt_ < 32) return;
        replies_since_adapt_ = 0;
        constexpr double reaction_s = 300e-6;
        const double want = std::ceil(reaction_s / std::max(mean_run_s_, 1e-6)) + 1;
        sched_->set_prefetch(static_cast<int>(std::clamp(want, 2.0, 32.0)));
    }

    void submit_task(const proto::task_request& t, std::vector<int> engines, proto::received_frame f) {
        task spec;
        spec.id = t.r.id;
        spec.client = static_cast<std::uint32_t>(t.r.id >> 32);
        spec.engines = std::move(engines);
        spec.after = t.after;
        spec.follow = t.follow;
        spec.retries = t.retries;
        spec.after_failure_ok = t.after_failure_ok;
        if (t.timeout > 0)
            spec.timeout = std::chrono::duration_cast<sched_clock::duration>(std::chrono::duration<double>(t.timeout));
        if (auto refused = sched_->submit(spec, sched_clock::now())) {
            answer_task(*refused);
            return;
        }
        tasks_.emplace(t.r.id, task_entry{std::move(f), t.r});
        task_clients_.insert(spec.client);
    }

    bool dispatch_tasks() {
        if (stopping_) return false;
        auto assigned = sched_->dispatch();
        for (const auto& a : assigned) {
            auto it = tasks_.find(a.id);
            if (it == tasks_.end()) {
                // Cannot happen (the scheduler only sends tasks we hold); if it did, free the slot.
                spdlog::error("task {:#x} scheduled but unknown here; failing it", a.id);
                for (const auto& out : sched_->on_finished(a.id, a.engine, false)) answer_task(out);
                continue;
            }
            op o;
            o.frame = it->second.frame;
            o.r = it->second.r;
            o.targets = {a.engine};
            o.task = true;
            issue_p(o, layout_of(o), 0);
        }
        return !assigned.empty();
    }

    bool expire_tasks() {
        auto next = sched_->next_deadline();
        if (!next || *next > sched_clock::now()) return false;
        for (const auto& out : sched_->expire(sched_clock::now())) answer_task(out);
        return true;
    }

    // A task's reply came in: whether to forward it (done, failed for good) or drop it (retried).
    // Dependents the outcome settles are answered here.
    bool task_reply_wanted(const pending& p, const proto::frame_view& v) {
        bool ok = false;
        try {
            const auto rep = proto::decode<proto::engine_reply>(v);
            ok = rep.status == proto::reply_status::ok;
            adapt_prefetch(std::max(0.0, rep.completed - rep.started));
        } catch (const std::exception& e) {
            spdlog::error("engine {} sent a bad reply for task {:#x}: {}", p.engine, p.id, e.what());
        }
        bool forward = false;
        bool first = true;
        for (const auto& out : sched_->on_finished(p.id, p.engine, ok)) {
            if (first && out.id == p.id) {
                forward = out.what == verdict::done || out.what == verdict::failed;
                if (out.what != verdict::retried) tasks_.erase(p.id);
            } else {
                answer_task(out);
            }
            first = false;
        }
        return forward;
    }

    // Answers a task the scheduler settled without an engine reply (refused, dropped): an error
    // reply in the task's name, as if from the controller.
    void answer_task(const outcome& out) {
        // A refused submission is not remembered - and may carry the id of a live task (a client
        // reusing an id): that task's entry stays.
        if (out.what != verdict::refused) tasks_.erase(out.id);
        if (out.what != verdict::dropped && out.what != verdict::refused) return;
        proto::engine_reply rep;
        rep.id = out.id;
        rep.engine = -1;
        rep.status = proto::reply_status::error;
        rep.ename = out.ename;
        rep.evalue = out.evalue;
        if (bridge_fd_ >= 0) writer_.push(proto::encode(rep));
    }

    void abort_all_tasks(const std::string& why) {
        for (auto c : task_clients_)
            for (const auto& out : sched_->abort_client(c).dropped) {
                outcome o = out;
                o.evalue = why;
                answer_task(o);
            }
        task_clients_.clear();
    }

    void control(const proto::control_request& req) {
        proto::control_reply rep;
        rep.id = req.r.id;
        const auto client = static_cast<std::uint32_t>(req.r.id >> 32);
        switch (req.action) {
        case proto::control_action::abort: {
            std::vector<task_id> mine;
            for (auto id : req.ids) {
                if ((id >> 32) != client) rep.refused.push_back("task " + std::to_string(id) + ": not this client's task");
                else mine.push_back(id);
            }
            auto report = sched_->abort(mine);
            for (const auto& out : report.dropped) {
                if (out.ename == sched_error::task_aborted) rep.aborted.push_back(out.id);
                answer_task(out);
            }
            for (const auto& r : report.refused) rep.refused.push_back("task " + std::to_string(r.id) + ": " + r.reason);
            break;
        }
        case proto::control_action::queue_status: {
            auto st = sched_->status();
            for (int e = 0; e < static_cast<int>(st.engines.size()); ++e)
                rep.engines.push_back({e, st.engines[e].assigned, st.engines[e].done, st.engines[e].alive});
            rep.unassigned = st.unassigned;
            rep.waiting = st.waiting;
            break;
        }
        case proto::control_action::forget_client:
            for (const auto& out : sched_->abort_client(client).dropped) answer_task(out);
            task_clients_.erase(client);
            return;  // the client is gone: nobody to answer
        }
        if (bridge_fd_ >= 0) writer_.push(proto::encode(rep));
    }

    // A segment for a reply of `len` bytes: a returned one that fits (warm pages: no faults, no
    // zeroing), else a new one.
    proto::shm_out reply_segment(std::uint64_t len) {
        auto best = pool_.end();
        for (auto it = pool_.begin(); it != pool_.end(); ++it)
            if (it->map->size() >= len && it->map->size() <= 2 * len + (std::uint64_t{1} << 20) &&
                (best == pool_.end() || it->map->size() < best->map->size()))
                best = it;
        if (best != pool_.end()) {
            proto::shm_out s = std::move(*best);
            pool_.erase(best);
            return s;
        }
        constexpr std::uint64_t mib = std::uint64_t{1} << 20;
        return proto::create_shm(shm_owner_, (len + mib - 1) / mib * mib);
    }

    // Segments the client no longer uses come back into the pool, which keeps at most 8 of
    // them and 4 GiB; beyond that the oldest are removed.
    void take_back(const proto::shm_return& ret) {
        for (const auto& path : ret.paths) {
            auto it = lent_.find(path);
            if (it == lent_.end()) continue;
            if (ret.reuse) pool_.push_back(std::move(it->second));
            else ::unlink(path.c_str());  // our mapping goes with the entry; the client keeps its own
            lent_.erase(it);
        }
        std::uint64_t total = 0;
        for (auto& s : pool_) total += s.map->size();
        while (!pool_.empty() && (pool_.size() > 8 || total > (std::uint64_t{4} << 30))) {
            total -= pool_.front().map->size();
            ::unlink(pool_.front().path.c_str());
            pool_.erase(pool_.begin());
        }
    }

    // A large reply: its pieces follow on the p2p communicator, each received straight into place.
    void receive_reply(int src, const std::vector<std::uint64_t>& lens, const pending& p) {
        std::uint64_t len = 0;
        for (auto l : lens) len += l;
        auto [dest, then] = reply_destination(len, p);
        inflight fl;
        for (auto l : lens) {
            wire::irecv_bytes(dest, l, src, wire::tag_reply, p2p_, fl.reqs);
            dest += l;
        }
        fl.then = std::move(then);
        inflight_.push_back(std::move(fl));
    }

    bool poll_mpi() {
        bool any = false;
        for (auto it = inflight_.begin(); it != inflight_.end();) {
            if (wire::test_all(it->reqs)) {
                auto then = std::move(it->then);
                it = inflight_.erase(it);
                if (then) then();
                any = true;
            } else {
                ++it;
            }
        }
        return any;
    }

    // Replies come point to point from each engine in the order it ran its requests, which is
    // the order they were issued to it: pending_[engine] says whose reply each one is.
    bool probe_replies() {
        bool any = false;
        for (;;) {
            int flag = 0;
            MPI_Message msg;
            MPI_Status st;
            wire::check(MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, reply_, &flag, &msg, &st), "MPI_Improbe");
            if (!flag) return any;
            any = true;
            if (st.MPI_TAG == wire::tag_output) {
                forward_output(msg, st);
                continue;
            }
            auto& q = pending_[st.MPI_SOURCE - 1];
            const pending p = q.empty() ? pending{0, false, true, false, false, -1} : q.front();
            if (!q.empty()) q.pop_front();
            if (p.shutdown) --shutdown_replies_left_;
            if (st.MPI_TAG == wire::tag_reply_parts) {
                int n = 0;
                MPI_Get_count(&st, MPI_UINT64_T, &n);
                std::vector<std::uint64_t> lens(static_cast<std::size_t>(n));
                wire::check(MPI_Mrecv(lens.data(), n, MPI_UINT64_T, &msg, MPI_STATUS_IGNORE), "MPI_Mrecv");
                receive_reply(st.MPI_SOURCE, lens, p);
                continue;
            }
            int count = 0;
            MPI_Get_count(&st, MPI_BYTE, &count);
            auto [dest, then] = reply_destination(static_cast<std::uint64_t>(count), p);
            inflight fl;
            MPI_Request r;
            wire::check(MPI_Imrecv(dest, count, MPI_BYTE, &msg, &r), "MPI_Imrecv");
            fl.reqs.push_back(r);
            fl.then = std::move(then);
            inflight_.push_back(std::move(fl));
        }
    }

    // What a long request printed so far: straight on to the bridge. It was sent before the
    // request's reply, so it also reaches the client before it.
    void forward_output(MPI_Message& msg, const MPI_Status& st) {
        int count = 0;
        MPI_Get_count(&st, MPI_BYTE, &count);
        auto bytes = std::make_shared<proto::byte_buffer>(static_cast<std::uint64_t>(std::max(count, 1)));
        wire::check(MPI_Mrecv(bytes->data(), count, MPI_BYTE, &msg, MPI_STATUS_IGNORE), "MPI_Mrecv");
        try {
            proto::received_frame f{bytes};
            if (!proto::is(f.view(), proto::message_type::output)) throw proto::frame_error("not an output frame");
        } catch (const std::exception& e) {
            spdlog::error("engine {} sent a bad output frame: {}", st.MPI_SOURCE - 1, e.what());
            return;
        }
        if (bridge_fd_ >= 0) writer_.push_raw(std::move(bytes));
    }

    void flush_bridge() {
        if (bridge_fd_ < 0) {
            writer_ = proto::frame_writer{};
            return;
        }
        try {
            writer_.flush(bridge_fd_);
        } catch (const std::exception& e) {
            spdlog::error("writing to the bridge failed: {}", e.what());
            bridge_gone();
        }
    }

    MPI_Comm bcomm_, p2p_, reply_;
    int n_;
    int bridge_fd_ = -1;
    proto::frame_reader reader_;
    proto::frame_writer writer_;
    std::deque<op> queue_;
    std::list<inflight> inflight_;
    bool shutdown_issued_ = false;
    std::string end_reason_ = "the job ended";
    int shutdown_replies_left_ = 0;
    std::vector<std::uint64_t> p2p_sent_;
    // Per engine, the requests awaiting its reply, in issue order.
    std::vector<std::deque<pending>> pending_;
    std::string shm_owner_;
    std::vector<proto::shm_out> pool_;   // reply segments ready for reuse (mapped)
    std::map<std::string, proto::shm_out> lent_;  // reply segments a client holds
    std::uint64_t bcast_sent_ = 0;
    // The task farm: the scheduler, and each accepted task's request until it is answered.
    struct task_entry {
        proto::received_frame frame;
        proto::route r;
    };
    static constexpr int max_prefetch = 32;
    std::optional<scheduler> sched_;
    int fixed_prefetch_ = 0;
    double mean_run_s_ = -1;
    int replies_since_adapt_ = 0;
    std::unordered_map<std::uint64_t, task_entry> tasks_;
    std::set<std::uint32_t> task_clients_;
    bool stopping_ = false;
    bool finished_ = false;
};

pid_t spawn_bridge(const options& opt, int fd, const std::string& job_id) {
    std::vector<std::string> args = {opt.bridge_path, "--controller-fd", std::to_string(fd), "--ip", opt.ip,
                                     "--port", std::to_string(opt.port), "--log-level", opt.log_level,
                                     "--job-id", job_id};
    if (!opt.connection_file.empty()) {
        args.push_back("--connection-file");
        args.push_back(opt.connection_file);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    // Its own session: mpirun kills the process group of a rank it tears down (Ctrl-C), and the
    // bridge must outlive the controller long enough to tell clients and remove the file. It
    // notices the controller's end through its socket.
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
    pid_t pid;
    int rc = posix_spawn(&pid, opt.bridge_path.c_str(), nullptr, &attr, argv.data(), environ);
    posix_spawnattr_destroy(&attr);
    if (rc != 0)
        throw std::system_error(rc, std::generic_category(), "cannot start the bridge " + opt.bridge_path);
    return pid;
}

}  // namespace detail

int run(MPI_Comm world, const options& opt) {
    namespace mpi = boost::mpi;
    mpi::communicator comm(world, mpi::comm_attach);
    // Start-up collectives, in the order pcluster::engine::run makes them: the engines-only
    // communicator (rank 0 is not in it), the engines' whereabouts, the controller's channels.
    MPI_Comm none;
    wire::check(MPI_Comm_split(world, MPI_UNDEFINED, 0, &none), "MPI_Comm_split");
    std::vector<std::string> infos;
    mpi::gather(comm, std::string(), infos, 0);
    detail::controller c(world);
    proto::job_info info;
    info.controller_host = detail::hostname();
    info.controller_pid = getpid();
    {
        const char* slurm = std::getenv("SLURM_JOB_ID");
        info.job_id = slurm ? std::string("slurm-") + slurm : info.controller_host + "-" + std::to_string(getpid());
    }
    for (int r = 1; r < comm.size(); ++r) {
        auto& s = infos[r];
        auto sep = s.find(' ');
        info.engines.push_back({r - 1, s.substr(sep + 1), std::stoll(s.substr(0, sep))});
    }

    std::signal(SIGINT, detail::on_signal);
    std::signal(SIGTERM, detail::on_signal);
    std::signal(SIGPIPE, SIG_IGN);

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        throw std::system_error(errno, std::generic_category(), "socketpair");
    // The bridge's end must survive exec; ours must not leak into it.
    fcntl(sv[1], F_SETFD, 0);
    pid_t bridge_pid = -1;
    int status = 0;
    try {
        bridge_pid = detail::spawn_bridge(opt, sv[1], info.job_id);
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        status = 1;
    }
    ::close(sv[1]);
    const int fd = sv[0];

    std::optional<proto::bridge_ready> ready;
    if (status == 0) {
        try {
            proto::write_frame(fd, proto::encode(info));
            auto deadline = proto::clock::now() + std::chrono::milliseconds(static_cast<long>(opt.bridge_timeout_s * 1000));
            auto f = proto::read_frame(fd, deadline);
            ready = proto::decode<proto::bridge_ready>(f.view());
        } catch (const std::exception& e) {
            spdlog::error("the bridge did not start: {} (see its message above)", e.what());
            status = 1;
        }
    }
    if (ready) {
        std::printf("pcluster: controller on rank 0 (%s, pid %d), %d engines ready\n", info.controller_host.c_str(),
                    static_cast<int>(getpid()), comm.size() - 1);
        std::printf("pcluster: clients connect to %s:%u\n", ready->address.c_str(), ready->port);
        std::printf("pcluster: connection file %s\n", ready->connection_file.c_str());
        std::printf("pcluster: attach from Python with  import pcluster; rc = pcluster.Client(%s)\n",
                    opt.connection_file.empty() ? "" : ("\"" + ready->connection_file + "\"").c_str());
        std::printf("pcluster: stop with rc.shutdown() or Ctrl-C\n");
        std::fflush(stdout);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    if (ready) c.set_bridge(fd);
    else ::close(fd);
    c.run();
    if (bridge_pid > 0) {
        // The bridge exits once our end of the socket closes; bound the wait anyway.
        for (int i = 0; i < 100; ++i) {
            if (waitpid(bridge_pid, nullptr, WNOHANG) == bridge_pid) { bridge_pid = -1; break; }
            usleep(20'000);
        }
        if (bridge_pid > 0) {
            kill(bridge_pid, SIGTERM);
            waitpid(bridge_pid, nullptr, 0);
        }
    }
    return status;
}

}  // namespace pcluster::controller
