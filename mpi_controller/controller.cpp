#include "controller.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <csignal>
#include <ctime>
#include <cstdio>
#include <cstring>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>
#include <optional>
#include <system_error>

#include <malloc.h>
#include <poll.h>
#include <unistd.h>

#include "admission.hpp"
#include "bridge_link.hpp"
#include "bridge_process.hpp"
#include "engine_channels.hpp"
#include "engine_watch.hpp"
#include "pcluster/mpi/idle.hpp"
#include "pcluster/mpi/runtime.hpp"
#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/config.hpp"
#include "pcluster/protocol/connection_file.hpp"
#include "pcluster/protocol/shm.hpp"
#include "requests.hpp"
#include "result_store.hpp"
#include "task_farm.hpp"

namespace pcluster::controller {

namespace proto = pcluster::protocol;
namespace wire = pcluster::mpi_wire;

namespace {
volatile std::sig_atomic_t stop_signal = 0;
extern "C" void on_signal(int sig) { stop_signal = sig; }

// After a signal, how long the engines get to answer the shutdown: under SLURM or a dying
// mpirun they got the signal too and may never answer, and waiting longer only earns a SIGKILL.
constexpr auto signal_grace = std::chrono::seconds(2);

std::string hostname() {
    char buf[256] = {0};
    gethostname(buf, sizeof buf - 1);
    return buf;
}

// Removes the connection file if it is still the one the dead bridge (pid) wrote.
void remove_connection_file(const std::string& path, pid_t bridge_pid) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    try {
        if (proto::connection_info_from_json(text.str()).bridge_pid == bridge_pid) std::filesystem::remove(path);
    } catch (const std::exception&) {
    }
}
}  // namespace

// Rank 0's event loop: requests from the bridge go to the engines (or the task farm), replies
// and output from the engines go back to the bridge. Single-threaded; every MPI operation is
// non-blocking; it idles in ppoll on the bridge's socket between polls (wire::backoff).
class controller {
public:
    controller(const wire::job_comms& comms, std::vector<proto::engine_info> engines, const std::optional<started_bridge>& bridge)
        : n_(comms.n_engines()), engines_(std::move(engines)), link_(bridge ? bridge->fd : -1), channels_(comms),
          watch_(comms, engines_), farm_(n_, static_cast<int>(config::integer(config::knob::task_prefetch))),
          gate_(n_, static_cast<int>(config::integer(config::knob::client_window))),
          reply_pool_("s" + std::to_string(getpid()), {8, std::uint64_t{4} << 30}) {
        link_.gone = [this, bridge](const std::string& why) {
            // Nobody can reach the job any more: end it (bounded, see escalate_shutdown), and
            // take its connection file along so no client finds a dead job there.
            if (bridge) remove_connection_file(bridge->ready.connection_file, bridge->pid);
            end_reason_ = "the bridge died (" + why + ")";
            stop(end_reason_);
        };
        if (!watch_.recovery())
            spdlog::info("an engine's death ends this job (mpirun aborts it): start it with `mpirun --enable-recovery` "
                         "to keep the job running when an engine dies");
    }

    // Returns once the shutdown request's replies reached the bridge (or the bridge is gone and
    // the engines were told to stop): true. False when a signal stopped the job and the engines
    // did not answer within signal_grace: MPI cannot be finalized then.
    bool run() {
        wire::backoff idle;
        if (!link_.open()) stop("the bridge did not start");
        std::optional<std::chrono::steady_clock::time_point> give_up;
        while (!channels_.shutdown_done()) {
            bool progress = false;
            if (stop_signal && !give_up) {
                spdlog::warn("signal {} received: shutting the engines down", static_cast<int>(stop_signal));
                // Without recovery mpirun's SIGTERM follows an engine's death: that death is the reason.
                if (!ended_by_death_) end_reason_ = proto::ended_by_signal(stop_signal);
                // Tell the bridge now: mpirun (or SLURM) signalled the engines too and may kill
                // this process within a second, long before a shutdown could complete.
                link_.send(proto::encode(proto::job_ended{end_reason_}));
                link_.flush();
                stop(end_reason_);
                give_up = std::chrono::steady_clock::now() + signal_grace;
                progress = true;
            }
            if (give_up && std::chrono::steady_clock::now() > *give_up) {
                spdlog::warn("the engines did not answer the shutdown within {} s; ending without them",
                             std::chrono::duration_cast<std::chrono::seconds>(signal_grace).count());
                link_.finish(end_reason_);
                return false;
            }
            if (stopping_ && !escalate_shutdown()) return false;
            progress |= link_.read([this](proto::received_frame f) { accept(std::move(f)); });
            progress |= farm_.expire();
            progress |= !link_behind() && dispatch_tasks();  // after read: what arrived first was issued first
            progress |= channels_.progress();
            progress |= receive();
            if (auto deaths = watch_.poll(); !deaths.empty()) {
                receive();  // what a dying engine sent before it died is kept
                for (const auto& d : deaths) engine_died(d.engine, d.how);
                progress = true;
            }
            progress |= issue_admitted();  // replies and releases made room
            // Every survivor is alive and free to build: the survivors' communicator now.
            if (const auto epoch = channels_.rebuild_wanted(); epoch && watch_.all_ready(*epoch)) {
                const int members = channels_.start_rebuild();
                watch_.send_all_alive({wire::control_kind::rebuild_go, -1, *epoch, static_cast<std::uint64_t>(members)});
                progress = true;
            }
            for (auto& r : farm_.take_answers()) to_client(r);
            link_.flush();
            if (progress) {
                idle.reset();
                trim_due_ = true;
                continue;
            }
            // A ring that came before its message reached a sleeping engine must not cost it its
            // doorbell's timeout: ring engines that owe replies again, every millisecond.
            if (const auto now = std::chrono::steady_clock::now(); now - last_ring_ > std::chrono::milliseconds(1)) {
                channels_.ring_owed();
                last_ring_ = now;
            }
            // While transfers are under way keep polling (yielding): they only advance when we do.
            std::int64_t s = idle.next_sleep(channels_.transferring());
            if (s == 0) continue;
            if (channels_.quiet() && !stopping_ && idle.dozing()) {
                give_back_memory();
                // Nothing in flight, no reply awaited: sleep until the bridge, an engine's death,
                // the next heartbeat, a look at engines on other hosts (engine_watch::next_look)
                // or a task's timeout (an idle single-host job wakes about once a second).
                auto until = std::min(watch_.next_beat(), watch_.next_look());
                if (auto d = farm_.next_deadline()) until = std::min(until, *d);
                // The survivors' answers and their build come over MPI, which does not wake ppoll.
                if (channels_.rebuilding(std::chrono::seconds(10)))
                    until = std::min(until, std::chrono::steady_clock::now() + std::chrono::milliseconds(5));
                s = std::max<std::int64_t>(s, std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                  until - std::chrono::steady_clock::now()).count());
            }
            // Sleep in ppoll so a request from the bridge, or an engine's death, wakes us at once.
            auto fds = watch_.pollfds();
            if (link_.open()) fds.push_back({link_.fd(), static_cast<short>(POLLIN | (link_.has_output() ? POLLOUT : 0)), 0});
            timespec ts{static_cast<time_t>(s / 1'000'000'000), static_cast<long>(s % 1'000'000'000)};
            ::ppoll(fds.data(), fds.size(), &ts, nullptr);
        }
        link_.finish(end_reason_);
        reply_pool_.clear();
        lent_.clear();  // clients map theirs; the bridge removes what is left at the end
        lent_bytes_.clear();
        return true;
    }

private:
    // The process keeps freed memory for the next large message (keep_freed_memory); once nothing
    // has been in flight for a second it gives it back: a client that left, a burst of requests
    // that queued here (measured: 259 MiB kept after a paused client's 1 MiB requests drained, 25
    // MiB after a trim). The next large transfer after a pause faults its pages in again (~60 ms
    // per 100 MiB on a VM here).
    void give_back_memory() {
        const auto now = std::chrono::steady_clock::now();
        if (trim_due_) {
            trim_due_ = false;
            quiet_since_ = now;
            trim_pending_ = true;
        } else if (trim_pending_ && now - quiet_since_ > std::chrono::seconds(1)) {
            ::malloc_trim(0);
            trim_pending_ = false;
        }
    }

    bool receive() {
        return channels_.receive([this](std::uint64_t len, const awaited_reply& a) { return land(len, a); },
                                 [this](std::shared_ptr<proto::byte_buffer> b) { link_.send_raw(std::move(b)); },
                                 [this](int e, std::uint64_t done, std::uint64_t epoch) { epoch_reached(e, done, epoch); });
    }

    std::string who(int e) const {
        const auto& i = engines_[static_cast<std::size_t>(e)];
        return "engine " + std::to_string(e) + " (" + i.host + ", pid " + std::to_string(i.pid) + ")";
    }

    // Engine a.engine's reply to a client's request is in, or answered for: room in that
    // client's window (admission.hpp).
    void settled(const awaited_reply& a) {
        if (a.internal || a.task || a.shutdown) return;
        gate_.answered(a.id, a.engine);
        farm_.engine_busy(a.engine, -1);
    }

    // A client's request other than a task goes to the engines; each live target counts it as
    // load for the task farm until its reply is in (settled): tasks go to idle engines first.
    void issue_request(const request& q) {
        channels_.issue(q);
        for (int t : q.targets)
            if (watch_.alive(t)) farm_.engine_busy(t, +1);
    }

    // Requests that waited for room in their client's window, or for its release.
    bool issue_admitted() {
        if (stopping_ || !gate_.waiting()) return false;
        auto ready = gate_.take_ready(watch_.alive_map());
        for (const auto& q : ready) issue_request(q);
        return !ready.empty();
    }

    // An error reply in place of engine a.engine's, for a request that will never get one.
    void answer_for(const awaited_reply& a, proto::error_kind kind, const std::string& why) {
        settled(a);
        if (a.internal || a.task) return;  // the task farm answers for tasks
        to_client(proto::error_reply(a.id, proto::reply_origin::controller, a.engine, kind, why));
    }

    // Engine e died: its waiting requests fail with EngineDied (tasks: retried or failed by the
    // farm), the survivors rebuild their communicators, every client hears of it, and without
    // recovery the bridge learns why mpirun is about to end the job.
    void engine_died(int e, const std::string& how_seen) {
        const std::string how = stopped_.count(e) ? "was shut down by a client (rc.shutdown(targets=...))" : how_seen;
        auto& info = engines_[static_cast<std::size_t>(e)];
        info.alive = false;
        deaths_.push_back(e);
        info.death = how;
        spdlog::warn("{} {}", who(e), how);
        wire::mark_peer_died();  // MPI_Finalize would wait for it: the process exits without it
        // Under mpirun, a rank that died on another node is never reported ended by its daemon
        // unless asked: mpirun would then never exit. Ask it to end that rank.
        if (watch_.recovery()) wire::ask_runtime_to_kill(e + 1);
        // Clients hear of the death before the EngineDied replies it causes: one that catches
        // EngineDied already sees the engine gone from rc.ids.
        link_.send(proto::encode(proto::engine_event{info, static_cast<double>(std::time(nullptr))}));
        const auto fx = channels_.engine_died(e, watch_.alive_map(), !stopping_);
        const std::string why = who(e) + " " + how + " while this request waited on it";
        for (const auto& a : fx.lost) answer_for(a, proto::error_kind::engine_died, why);
        // Requests still waiting here for their client's window: answered for e now, sent to
        // their other targets later.
        for (auto id : gate_.engine_died(e))
            to_client(proto::error_reply(id, proto::reply_origin::controller, e, proto::error_kind::engine_died,
                                         who(e) + " " + how + " before this request was sent"));
        watch_.send_all_alive({wire::control_kind::engine_died, e, fx.collectives_issued, fx.epoch});
        farm_.engine_died(e, how);
        if (!watch_.recovery() && !ended_by_death_) {
            // The first death is the reason: mpirun kills the others a moment later, and those
            // deaths (reported as plain exits) must not replace it.
            ended_by_death_ = true;
            end_reason_ = who(e) + " " + how + "; without recovery mpirun ends the whole job when a rank dies (start it "
                          "with `mpirun --enable-recovery` to keep the job running)";
            link_.send(proto::encode(proto::job_ended{end_reason_}));
        }
        link_.flush();
        if (std::none_of(watch_.alive_map().begin(), watch_.alive_map().end(), [](bool a) { return a; })) {
            if (!ended_by_death_) end_reason_ = "every engine died (the last: " + who(e) + " " + how + ")";
            stop(end_reason_);
        }
    }

    // A survivor switched to the new epoch: collective requests that never reached it are
    // answered for it; a lost shutdown goes to it again, direct.
    void epoch_reached(int e, std::uint64_t done, std::uint64_t epoch) {
        for (const auto& a : channels_.epoch_reached(e, done, epoch)) {
            if (a.shutdown) {
                channels_.issue(internal_request(proto::encode(proto::shutdown_request{}), {e}));
                continue;
            }
            answer_for(a, proto::error_kind::request_lost,
                       "this request never reached engine " + std::to_string(e) +
                           ": another engine its broadcast went through died; it did not run there");
        }
    }

    // A frame from the bridge: a request to check and issue, or segments coming back.
    void accept(proto::received_frame f) {
        if (proto::is(f.view(), proto::message_type::shm_return)) {
            try {
                take_back(proto::decode<proto::shm_return>(f.view()));
            } catch (const std::exception& e) {
                spdlog::warn("bad shm_return: {}", e.what());
            }
            return;
        }
        request q;
        try {
            q = check_request(std::move(f), watch_.alive_map(), deaths_);
            if (stopping_) {
                refusal r(proto::error_kind::job_shutting_down, "the job is shutting down");
                r.id = q.r.id;
                throw r;
            }
        } catch (const refusal& r) {
            spdlog::warn("refused request {:#x}: {}", r.id, r.what());
            if (r.id) to_client(proto::error_reply(r.id, proto::reply_origin::refused, proto::no_engine, r.kind, r.what()));
            else link_.send(proto::encode(proto::error_reply(r.id, proto::reply_origin::refused, proto::no_engine, r.kind, r.what())));
            return;
        }
        if (q.type == static_cast<std::uint16_t>(proto::message_type::control_request)) {
            const auto req = proto::decode<proto::control_request>(q.frame.view());
            if (req.action == proto::control_action::interrupt) return interrupt(req);
            if (req.action == proto::control_action::signal) return send_signal(req);
            if (req.action == proto::control_action::stop_engines) return stop_engines(req);
            if (req.action == proto::control_action::abort && !req.r.targets.empty()) return abort_direct(req);
            if (is_store_action(req.action)) return answer_store(req);
            const auto client = proto::client_of(req.r.id);
            if (req.action == proto::control_action::hold_client) gate_.hold(client);
            if (req.action == proto::control_action::release_client) gate_.release(client);
            if (req.action == proto::control_action::forget_client)
                for (auto id : gate_.forget(client))
                    to_client(proto::error_reply(id, proto::reply_origin::controller, proto::no_engine, proto::error_kind::client_left,
                                                 "its client disconnected before this request was sent to the engines"));
            if (auto rep = farm_.control(req)) link_.send(proto::encode(*rep));
            return;
        }
        if (!q.shutdown())
            store_.submitted(q.r.id, q.type, q.targets, q.task, wall_now(), q.task ? q.frame.bytes : nullptr);
        // Targets that died: answered at once; the request goes to the others.
        for (int t : q.targets)
            if (!watch_.alive(t))
                to_client(proto::error_reply(q.r.id, proto::reply_origin::controller, t, proto::error_kind::engine_died,
                                             who(t) + " " + engines_[static_cast<std::size_t>(t)].death +
                                                 " before this request was sent"));
        if (q.task) {
            farm_.submit(std::move(q));
            return;
        }
        if (q.shutdown()) {
            // Never waits behind the client's window: it must end engines that run on.
            end_reason_ = "a client shut the job down (rc.shutdown())";
            begin_stopping();
            channels_.issue(q);
            return;
        }
        if (auto now = gate_.offer(std::move(q), watch_.alive_map())) issue_request(*now);
    }

    void begin_stopping() {
        stopping_ = true;
        stopping_since_ = std::chrono::steady_clock::now();
        farm_.abort_all("the job is shutting down");
        for (auto id : gate_.take_all())
            to_client(proto::error_reply(id, proto::reply_origin::refused, proto::no_engine, proto::error_kind::job_shutting_down,
                                         "the job is shutting down; this request was not sent to the engines"));
    }

    // A shutdown must end within a bound even while engines run code that does not end: after
    // PCLUSTER_SHUTDOWN_GRACE_S the running code is interrupted (KeyboardInterrupt), and 5 s
    // later the engines still busy are told to exit. False: give up waiting, end now.
    bool escalate_shutdown() {
        const auto since = std::chrono::steady_clock::now() - stopping_since_;
        if (!interrupted_at_shutdown_ && since > shutdown_grace_) {
            spdlog::warn("engines still run code {:.0f} s after the shutdown began: interrupting it",
                         std::chrono::duration<double>(since).count());
            watch_.send_all_alive({wire::control_kind::interrupt, -1, 0, 0});
            interrupted_at_shutdown_ = true;
        }
        if (since > shutdown_grace_ + std::chrono::seconds(5)) {
            spdlog::warn("engines did not stop after the interrupt: telling them to exit");
            watch_.send_all_alive({wire::control_kind::exit_now, -1, 0, 0});
            link_.finish(end_reason_);
            return false;
        }
        return true;
    }

    // Ends the job from here: the engines get a shutdown request of the controller's own.
    void stop(const std::string& why) {
        if (stopping_) return;
        spdlog::debug("stopping: {}", why);
        begin_stopping();
        std::vector<int> live;
        for (int e = 0; e < n_; ++e)
            if (watch_.alive(e)) live.push_back(e);
        channels_.issue(internal_request(proto::encode(proto::shutdown_request{}), live));
    }

    // r.targets, or every live engine when it names none.
    std::vector<int> targets_or_live(const std::vector<std::int32_t>& targets) const {
        std::vector<int> out(targets.begin(), targets.end());
        if (out.empty())
            for (int e = 0; e < n_; ++e)
                if (watch_.alive(e)) out.push_back(e);
        return out;
    }

    // Sends control message m to engine m.engine and names it in rep.engines (with `done`), or
    // names it in rep.refused when it is not a live engine.
    void tell(proto::control_reply& rep, const wire::control_msg& m, std::uint64_t done) {
        const int e = m.engine;
        if (e < 0 || e >= n_ || !watch_.alive(e)) {
            rep.refused.push_back("engine " + std::to_string(e) + ": not a live engine");
            return;
        }
        watch_.send(e, m);
        rep.engines.push_back({e, 0, done, true});
    }

    // view.abort: the caller's direct requests `ids` to r.targets. One still waiting here (its
    // client's window) is dropped and answered; the engines are told to skip one that has not
    // started there (it may still be on its way): its reply is then TaskAborted. One running or
    // done is not touched.
    void abort_direct(const proto::control_request& req) {
        proto::control_reply rep;
        rep.id = req.r.id;
        const auto client = proto::client_of(req.r.id);
        for (auto id : req.ids) {
            if (proto::client_of(id) != client) {
                rep.refused.push_back("request " + std::to_string(id) + ": not this client's");
            } else if (gate_.abort(id)) {
                rep.aborted.push_back(id);
                to_client(proto::error_reply(id, proto::reply_origin::refused, proto::no_engine, proto::error_kind::task_aborted,
                                             "aborted (view.abort) before it was sent to the engines"));
            } else {
                for (int e : req.r.targets)
                    if (e >= 0 && e < n_ && watch_.alive(e)) watch_.send(e, {wire::control_kind::abort, e, id, 0});
            }
        }
        link_.send(proto::encode(rep));
    }

    // rc.shutdown(targets=...): those engine processes end; the job lives on without them, which
    // only a job with recovery does (without it mpirun ends every rank when one exits).
    void stop_engines(const proto::control_request& req) {
        proto::control_reply rep;
        rep.id = req.r.id;
        if (!watch_.recovery()) {
            rep.ok = false;
            rep.message = "this job ends when one of its engines exits (it was started without recovery: `mpirun "
                          "--enable-recovery`, or srun without --kill-on-bad-exit, keeps it running), so single "
                          "engines cannot be shut down; rc.shutdown() ends the whole job";
        } else if (req.r.targets.empty()) {
            rep.ok = false;
            rep.message = "name the engines to shut down (rc.shutdown() with no targets ends the whole job)";
        } else {
            for (int e : req.r.targets) {
                const auto told = rep.engines.size();
                tell(rep, {wire::control_kind::stop, e, 0, 0}, 0);
                if (rep.engines.size() > told) {
                    stopped_.insert(e);
                    spdlog::info("client {} shut engine {} down", proto::client_of(req.r.id), e);
                }
            }
        }
        link_.send(proto::encode(rep));
    }

    // rc.send_signal: SIGINT is an interrupt of whatever runs; any other signal goes to the
    // engine processes of r.targets (all live engines when none), from their watch threads.
    void send_signal(const proto::control_request& req) {
        proto::control_reply rep;
        rep.id = req.r.id;
        const long sig = req.ids.size() == 1 ? static_cast<long>(req.ids[0]) : -1;
        if (sig < 1 || sig >= NSIG) {
            rep.ok = false;
            rep.message = "send_signal takes one signal number from 1 to " + std::to_string(NSIG - 1);
            link_.send(proto::encode(rep));
            return;
        }
        if (sig == SIGINT) {
            proto::control_request as_interrupt = req;
            as_interrupt.action = proto::control_action::interrupt;
            as_interrupt.ids.clear();
            return interrupt(as_interrupt);
        }
        for (int e : targets_or_live(req.r.targets)) {
            tell(rep, {wire::control_kind::signal, e, static_cast<std::uint64_t>(sig), 0}, 0);
            spdlog::info("client {} sent signal {} to engine {}", proto::client_of(req.r.id), sig, e);
        }
        link_.send(proto::encode(rep));
    }

    // Raise KeyboardInterrupt in running code: requests `ids` (direct ones on r.targets, tasks
    // wherever they run), or whatever runs on r.targets. Answers which engines were told.
    void interrupt(const proto::control_request& req) {
        proto::control_reply rep;
        rep.id = req.r.id;
        auto interrupt_on = [&](int e, std::uint64_t id) { tell(rep, {wire::control_kind::interrupt, e, id, 0}, id); };
        if (req.ids.empty())
            for (int e : targets_or_live(req.r.targets)) interrupt_on(e, 0);
        for (auto id : req.ids) {
            if (proto::client_of(id) != proto::client_of(req.r.id)) {
                rep.refused.push_back("request " + std::to_string(id) + ": not this client's");
            } else if (auto e = farm_.engine_of(id)) {
                interrupt_on(*e, id);
            } else if (!req.r.targets.empty()) {
                for (int e : req.r.targets) interrupt_on(e, id);
            } else {
                rep.refused.push_back("request " + std::to_string(id) + ": not running on any engine");
            }
        }
        link_.send(proto::encode(rep));
    }

    static double wall_now() {
        return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    }

    // A reply the controller makes to a client's request (an error: a death, a refusal, an
    // abort): kept in the store as that request's result, and sent.
    void to_client(const proto::engine_reply& r) {
        auto f = proto::encode(r);
        if (store_.enabled()) {
            const auto flat = f.flatten();
            store_.replied(r.id, r.engine, r.origin == proto::reply_origin::refused, {flat.data(), flat.size()}, wall_now());
        }
        link_.send(std::move(f));
    }

    static bool is_store_action(proto::control_action a) {
        return a == proto::control_action::results || a == proto::control_action::fetch_results ||
               a == proto::control_action::purge_results || a == proto::control_action::resubmit;
    }

    // Results by id (result_store.hpp): records, kept replies, purge, resubmit. Any client may
    // read any request's results: they all hold the job's key.
    void answer_store(const proto::control_request& req) {
        proto::control_reply rep;
        rep.id = req.r.id;
        std::vector<std::span<const char>> bufs;
        std::vector<std::shared_ptr<const proto::byte_buffer>> frames;
        if (!store_.enabled()) {
            rep.ok = false;
            rep.message = "this job keeps no results (it was started with PCLUSTER_RESULTS_KEEP=0)";
        } else if (req.action == proto::control_action::results) {
            if (req.ids.empty()) rep.records = store_.all();
            for (auto id : req.ids) rep.records.push_back(store_.record(id));
        } else if (req.action == proto::control_action::fetch_results) {
            for (auto id : req.ids) {
                rep.records.push_back(store_.record(id));
                for (auto& f : store_.frames(id)) {
                    bufs.emplace_back(f->data(), f->size());
                    frames.push_back(std::move(f));
                }
            }
        } else if (req.action == proto::control_action::purge_results) {
            const std::vector<int> on(req.r.targets.begin(), req.r.targets.end());
            for (auto id : req.ids.empty() ? store_.finished(on) : req.ids) {
                if (store_.purge(id)) rep.records.push_back(store_.record(id));
                else rep.refused.push_back("request " + std::to_string(id) + ": " +
                                           (store_.record(id).state == proto::result_state::pending ? "still pending" : "not kept"));
            }
        } else {
            resubmit(req, rep);
        }
        auto f = proto::encode(rep, bufs);
        f.keepalive = std::make_shared<decltype(frames)>(std::move(frames));
        link_.send(std::move(f));
    }

    // Kept tasks run again under the caller's new ids, as tasks it sent now (checked, scheduled),
    // without their dependencies (those ran already, or never will).
    void resubmit(const proto::control_request& req, proto::control_reply& rep) {
        if (req.ids.size() % 2) {
            rep.ok = false;
            rep.message = "resubmit takes pairs of ids: (kept task, new id)";
            return;
        }
        const auto client = proto::client_of(req.r.id);
        for (std::size_t k = 0; k < req.ids.size(); k += 2) {
            const auto old_id = req.ids[k], new_id = req.ids[k + 1];
            if (proto::client_of(new_id) != client) {
                rep.refused.push_back("request " + std::to_string(new_id) + ": not this client's id");
                continue;
            }
            const auto old = store_.task_request(old_id);
            if (!old) {
                const auto r = store_.record(old_id);
                std::string why = r.state == proto::result_state::pending   ? "it has not finished"
                                  : r.state == proto::result_state::done    ? (r.type == static_cast<std::uint16_t>(proto::message_type::task_request)
                                                                                   ? "its request was too large to keep (PCLUSTER_RESULTS_ITEM_KIB)"
                                                                                   : "only load-balanced tasks can be resubmitted; call a DirectView again")
                                  : r.state == proto::result_state::unknown ? "the controller never had it"
                                                                            : "it was dropped from the kept results";
                to_client(proto::error_reply(new_id, proto::reply_origin::refused, proto::no_engine, proto::error_kind::invalid_task,
                                             "cannot resubmit request " + std::to_string(old_id) + ": " + why));
                continue;
            }
            const proto::frame_view v(old->data(), old->size());
            auto t = proto::decode<proto::task_request>(v);
            t.r.id = new_id;
            t.r.flags = (t.r.flags & ~proto::reply_by_shm) | (req.r.flags & proto::reply_by_shm);  // the new client's way
            t.after.clear();
            t.follow.clear();
            std::vector<std::span<const char>> payload;
            for (std::uint32_t i = 0; i < v.nbufs(); ++i) payload.emplace_back(v.data() + v.buf_offset(i), v.buf_len(i));
            const auto flat = proto::encode(t, payload).flatten();
            auto bytes = std::make_shared<proto::byte_buffer>(flat.size());
            std::memcpy(bytes->data(), flat.data(), flat.size());
            store_.resubmitted(old_id, new_id);
            accept(proto::received_frame{std::move(bytes)});
        }
    }

    // The bridge takes replies more slowly than the engines make them (it is short of CPU, or
    // replies are large): they queue here on their way. Meanwhile no request or task goes out,
    // of any client: the bridge can only hold a client that does not read (admission.hpp) over
    // replies it has taken, so what waits here must stay small (measured: 600 tasks of 1 MB
    // replies sent at once grew the bridge to 34-78 MiB against a 16 MiB budget without this).
    bool link_behind() {
        const auto queued = link_.queued_bytes();
        if (link_behind_ ? queued < link_high_ / 2 : queued >= link_high_) {
            link_behind_ = !link_behind_;
            gate_.hold_all(link_behind_);
        }
        return link_behind_;
    }

    bool dispatch_tasks() {
        if (stopping_) return false;
        auto ready = farm_.dispatch();
        for (const auto& q : ready) channels_.issue(q);
        return !ready.empty();
    }

    // Where a reply of `len` bytes goes: into shared memory when the client shares our host and
    // the reply is large (the client maps it: no socket copies), else into memory and on to the
    // bridge. Internal requests' replies are dropped; a task's reply passes the farm first.
    //
    // A client holds a lent segment until it returns it: while it reads and keeps results, or
    // while it reads nothing at all (its references then sit in socket buffers, where a few MB
    // name gigabytes of /dev/shm: 300 unread replies of 1 MiB left 600 MiB of segments). So a client may
    // hold at most PCLUSTER_CLIENT_SHM_MIB lent (one reply more when it holds none); beyond,
    // replies go through the bridge, where its reply budget holds it (admission.hpp).
    reply_landing land(std::uint64_t len, const awaited_reply& a) {
        settled(a);
        const auto client = proto::client_of(a.id);
        const auto lent = lent_bytes_.find(client);
        const bool room = lent == lent_bytes_.end() || lent->second + len <= shm_lend_cap_;
        if (a.by_shm && !a.internal && len >= proto::shm_threshold && room) {
            try {
                auto seg = std::make_shared<proto::shm_out>(reply_pool_.get(len));
                return {seg->map->data(), [this, seg, a, len, client] {
                            if (a.task && !farm_.on_reply(a.id, a.engine, proto::frame_view(seg->map->data(), len))) {
                                reply_pool_.put(std::move(*seg));  // a retried task's reply: reuse
                                return;
                            }
                            // Lent to the client until it hands it back (shm_return). We keep our
                            // mapping: the pages are shared, and taking it back costs nothing.
                            if (store_.enabled()) store_.replied(a.id, a.engine, false, {seg->map->data(), len}, wall_now());
                            lent_bytes_[client] += seg->map->size();
                            lent_.emplace(seg->path, lent_segment{*seg, client});
                            link_.send(proto::encode(proto::shm_frame{a.id, seg->path, len, true}));
                        }};
            } catch (const std::system_error& e) {
                spdlog::warn("shared memory unavailable ({}); the reply goes through the bridge", e.what());
            }
        }
        auto bytes = std::make_shared<proto::byte_buffer>(std::max<std::uint64_t>(len, 1));
        return {bytes->data(), [this, bytes, a, len] {
                    if (a.internal) return;
                    if (a.task && !farm_.on_reply(a.id, a.engine, proto::frame_view(bytes->data(), len))) return;
                    if (store_.enabled()) store_.replied(a.id, a.engine, false, {bytes->data(), len}, wall_now(), bytes);
                    link_.send_raw(bytes);
                }};
    }

    // Segments a client no longer uses come back into the pool (reuse), or are forgotten when
    // the bridge returns those of a client that left (it may still map them).
    void take_back(const proto::shm_return& ret) {
        for (const auto& path : ret.paths) {
            auto it = lent_.find(path);
            if (it == lent_.end()) continue;
            auto held = lent_bytes_.find(it->second.client);
            held->second -= it->second.seg.map->size();
            if (!held->second) lent_bytes_.erase(held);
            if (ret.reuse) reply_pool_.put(std::move(it->second.seg));
            else ::unlink(path.c_str());  // our mapping goes with the entry; the client keeps its own
            lent_.erase(it);
        }
    }

    int n_;
    std::vector<proto::engine_info> engines_;  // as the clients know them (alive, how they died)
    std::vector<int> deaths_;                  // engines in the order they died
    std::set<int> stopped_;                    // engines a client shut down (stop_engines)
    bridge_link link_;
    engine_channels channels_;
    engine_watch watch_;
    task_farm farm_;
    admission gate_;  // direct and collective requests: each client's window and hold
    result_store store_{store_limits::from_settings()};  // results by id (rc.get_result, reconnect)
    static constexpr std::uint64_t link_high_ = std::uint64_t{8} << 20;  // see link_behind
    bool link_behind_ = false;
    proto::shm_pool reply_pool_;                  // reply segments ready for reuse
    struct lent_segment {
        proto::shm_out seg;
        std::uint32_t client;
    };
    std::map<std::string, lent_segment> lent_;                  // reply segments a client holds
    std::unordered_map<std::uint32_t, std::uint64_t> lent_bytes_;  // per client: their sizes
    std::uint64_t shm_lend_cap_ = static_cast<std::uint64_t>(config::integer(config::knob::client_shm_mib)) << 20;
    std::string end_reason_ = "the job ended";
    bool ended_by_death_ = false;  // without recovery: an engine's death is why the job ends
    bool stopping_ = false;
    std::chrono::steady_clock::time_point stopping_since_;
    std::chrono::duration<double> shutdown_grace_{config::number(config::knob::shutdown_grace_s)};
    bool interrupted_at_shutdown_ = false;
    std::chrono::steady_clock::time_point last_ring_{};
    bool trim_due_ = false, trim_pending_ = false;  // see give_back_memory
    std::chrono::steady_clock::time_point quiet_since_{};
};

int run(MPI_Comm world, const options& opt) {
    proto::job_info info;
    const auto comms = wire::open_job(world, nullptr, &info.engines);
    info.controller_host = hostname();
    info.controller_pid = getpid();
    const char* slurm = std::getenv("SLURM_JOB_ID");
    info.job_id = slurm ? std::string("slurm-") + slurm : info.controller_host + "-" + std::to_string(getpid());

    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::signal(SIGPIPE, SIG_IGN);

    const auto bridge = start_bridge(opt, info);
    if (bridge) {
        const auto& r = bridge->ready;
        std::printf("pcluster: controller on rank 0 (%s, pid %d), %d engines ready\n", info.controller_host.c_str(),
                    static_cast<int>(getpid()), comms.n_engines());
        std::printf("pcluster: clients connect to %s:%u\n", r.address.c_str(), r.port);
        std::printf("pcluster: connection file %s\n", r.connection_file.c_str());
        // Inside a SLURM job a client on the login node finds the job by its id.
        const std::string how = slurm ? "job=" + std::string(slurm)
                                      : opt.connection_file.empty() ? std::string() : "\"" + r.connection_file + "\"";
        std::printf("pcluster: attach from Python with  import pcluster; rc = pcluster.Client(%s)\n", how.c_str());
        std::printf("pcluster: stop with rc.shutdown() or Ctrl-C\n");
        std::fflush(stdout);
    }
    bool clean;
    {
        controller c(comms, info.engines, bridge);
        clean = c.run();
    }
    if (bridge) reap_bridge(bridge->pid);
    if (!clean) std::_Exit(stop_signal ? 128 + static_cast<int>(stop_signal) : 3);  // engines gone or stuck: MPI_Finalize would hang
    return bridge ? 0 : 1;
}

}  // namespace pcluster::controller
