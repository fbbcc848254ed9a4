#include "engine_watch.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pcluster/mpi/wire.hpp"
#include "pcluster/protocol/config.hpp"
#include "pcluster/protocol/host.hpp"

namespace pcluster::controller {

namespace wire = pcluster::mpi_wire;

namespace {

// The exit status of a process that is not our child, from its pidfd once it was reaped
// (PIDFD_GET_INFO with PIDFD_INFO_EXIT, Linux 6.15+; the struct is the ioctl's first version).
struct pidfd_info_v0 {
    std::uint64_t mask, cgroupid;
    std::uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
    std::int32_t exit_code;
};
static_assert(sizeof(pidfd_info_v0) == 64);
constexpr unsigned long pidfd_get_info = _IOWR(0xFF, 11, pidfd_info_v0);
constexpr std::uint64_t pidfd_info_exit = 1u << 3;

std::optional<int> exit_status(int pidfd) {
    pidfd_info_v0 info{};
    info.mask = pidfd_info_exit;
    if (::ioctl(pidfd, pidfd_get_info, &info) != 0 || !(info.mask & pidfd_info_exit)) return std::nullopt;
    return info.exit_code;
}

bool recovery_enabled() {
    if (const char* v = std::getenv("OMPI_MCA_orte_enable_recovery"); v && (std::strcmp(v, "1") == 0 || std::strcmp(v, "true") == 0))
        return true;
    // Launched by srun (no mpirun above us): the step lives on unless --kill-on-bad-exit.
    const bool srun = std::getenv("SLURM_STEP_ID") && !std::getenv("OMPI_MCA_orte_hnp_uri");
    const char* kill = std::getenv("SLURM_KILL_BAD_EXIT");
    return srun && !(kill && std::strcmp(kill, "1") == 0);
}

}  // namespace

engine_watch::engine_watch(const wire::job_comms& comms, const std::vector<protocol::engine_info>& engines)
    : control_(comms.control),
      engines_(engines.size()),
      alive_(engines.size(), true),
      beat_every_(config::number(config::knob::heartbeat_s)),
      dead_after_(config::number(config::knob::dead_after_s)),
      next_beat_(clock::now()),
      recovery_(recovery_enabled()) {
    const std::string here = protocol::host_name();
    for (std::size_t e = 0; e < engines.size(); ++e) {
        engines_[e].last_heard = clock::now();
        if (engines[e].host == here)
            engines_[e].pidfd = static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(engines[e].pid), 0));
    }
    wire::check(MPI_Irecv(&in_, sizeof in_, MPI_BYTE, MPI_ANY_SOURCE, wire::tag_control, control_, &recv_), "MPI_Irecv");
}

engine_watch::~engine_watch() {
    for (auto& s : engines_)
        if (s.pidfd >= 0) ::close(s.pidfd);
    if (recv_ != MPI_REQUEST_NULL) {
        MPI_Cancel(&recv_);
        MPI_Wait(&recv_, MPI_STATUS_IGNORE);
    }
    // Never wait here: an engine on another host may have died unnoticed (a signal ending the
    // job), and a send to it never completes. Heartbeats are eager: MPI has copied them already;
    // their memory is kept to the end anyway.
    static std::vector<std::unique_ptr<wire::control_msg>> kept;
    for (auto& p : sends_) {
        MPI_Request_free(&p.req);
        kept.push_back(std::move(p.msg));
    }
    for (auto& m : abandoned_) kept.push_back(std::move(m));
}

std::vector<pollfd> engine_watch::pollfds() const {
    std::vector<pollfd> out;
    for (std::size_t e = 0; e < engines_.size(); ++e)
        if (alive_[e] && engines_[e].pidfd >= 0) out.push_back({engines_[e].pidfd, POLLIN, 0});
    return out;
}

engine_watch::clock::time_point engine_watch::next_look() const {
    auto t = clock::time_point::max();
    for (std::size_t e = 0; e < engines_.size(); ++e)
        if (alive_[e] && engines_[e].pidfd < 0)
            t = std::min({t, engines_[e].last_heard + std::chrono::duration_cast<clock::duration>(dead_after_),
                          clock::now() + std::chrono::milliseconds(250)});
    return t;
}

void engine_watch::send(int engine, const wire::control_msg& m) {
    if (!alive(engine)) return;
    auto msg = std::make_unique<wire::control_msg>(m);
    MPI_Request r;
    if (MPI_Isend(msg.get(), sizeof m, MPI_BYTE, engine + 1, wire::tag_control, control_, &r) != MPI_SUCCESS) return;
    sends_.push_back({r, std::move(msg), engine});
}

void engine_watch::send_all_alive(const wire::control_msg& m) {
    for (std::size_t e = 0; e < alive_.size(); ++e)
        if (alive_[e]) send(static_cast<int>(e), m);
}

void engine_watch::reap_sends() {
    for (auto it = sends_.begin(); it != sends_.end();) {
        int done = 0;
        if (!alive_[static_cast<std::size_t>(it->engine)]) {
            abandoned_.push_back(std::move(it->msg));  // may never complete: keep the buffer
            it = sends_.erase(it);
            continue;
        }
        MPI_Test(&it->req, &done, MPI_STATUS_IGNORE);
        it = done ? sends_.erase(it) : std::next(it);
    }
}

bool engine_watch::all_ready(std::uint64_t epoch) const {
    for (std::size_t e = 0; e < engines_.size(); ++e)
        if (alive_[e] && engines_[e].ready_for < epoch) return false;
    return true;
}

void engine_watch::last_words(int engine, std::uint64_t how, std::uint64_t code) {
    if (engine >= 0 && static_cast<std::size_t>(engine) < engines_.size())
        engines_[static_cast<std::size_t>(engine)].last_words = std::make_pair(how, code);
}

std::string engine_watch::how_it_died(int engine, engine_state& s) {
    if (s.pidfd >= 0) {
        // mpirun (or the node's daemon) reaps it within a moment; the status comes after that.
        for (int i = 0; i < 100; ++i) {
            if (auto st = exit_status(s.pidfd)) {
                if (WIFSIGNALED(*st)) return wire::describe_death(wire::death_signal, WTERMSIG(*st), "");
                return wire::describe_death(wire::death_exit, WEXITSTATUS(*st), "");
            }
            if (errno == ENOTTY || errno == EINVAL) break;  // this kernel cannot say
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    }
    if (s.last_words) return wire::describe_death(s.last_words->first, s.last_words->second, "");
    return s.pidfd >= 0 ? "exited (this kernel does not say how)"
                        : "stopped answering for " + fmt::format("{:g}", dead_after_.count()) +
                              " s (its process or host is gone; how it ended is not known)";
    (void)engine;
}

std::vector<engine_watch::death> engine_watch::poll() {
    std::vector<death> out;
    const auto now = clock::now();
    // The controller's loop spins between polls while replies are awaited; looking at every
    // engine on each turn cost a syscall per engine per turn (64 engines: ~64 us a turn). Deaths
    // are news within a millisecond instead; a sleeping loop still wakes on a pidfd at once.
    if (now < next_look_) return out;
    next_look_ = now + look_every;
    // Messages: heartbeats and last words.
    for (;;) {
        int got = 0;
        MPI_Status st;
        if (MPI_Test(&recv_, &got, &st) != MPI_SUCCESS || !got) break;
        const wire::control_msg m = in_;
        const int e = st.MPI_SOURCE - 1;
        wire::check(MPI_Irecv(&in_, sizeof in_, MPI_BYTE, MPI_ANY_SOURCE, wire::tag_control, control_, &recv_), "MPI_Irecv");
        if (e < 0 || static_cast<std::size_t>(e) >= engines_.size()) continue;
        engines_[static_cast<std::size_t>(e)].last_heard = now;
        if (m.kind == wire::control_kind::last_words) last_words(e, m.a, m.b);
        if (m.kind == wire::control_kind::rebuild_ready)
            engines_[static_cast<std::size_t>(e)].ready_for = std::max(engines_[static_cast<std::size_t>(e)].ready_for, m.a);
    }
    // One syscall for every same-host engine: a pidfd is readable once its process ended.
    auto fds = pollfds();
    if (!fds.empty()) ::poll(fds.data(), fds.size(), 0);  // on EINTR revents stay 0: next look
    std::size_t k = 0;
    for (std::size_t e = 0; e < engines_.size(); ++e) {
        if (!alive_[e]) continue;
        auto& s = engines_[e];
        bool dead = false;
        if (s.pidfd >= 0) {
            dead = (fds[k++].revents & (POLLIN | POLLHUP | POLLERR)) != 0;
        } else {
            // Last words from another host count at once; silence after dead_after.
            dead = s.last_words.has_value() || now - s.last_heard > dead_after_;
        }
        if (!dead) continue;
        // Silent but perhaps alive (stopped, cut off): should it come back, it must not serve.
        if (s.pidfd < 0) send(static_cast<int>(e), {wire::control_kind::exit_now, static_cast<int>(e), 0, 0});
        alive_[e] = false;
        out.push_back({static_cast<int>(e), how_it_died(static_cast<int>(e), s)});
        if (s.pidfd >= 0) ::close(s.pidfd), s.pidfd = -1;
    }
    if (now >= next_beat_) {
        send_all_alive({wire::control_kind::beat, -1, 0, 0});
        next_beat_ = now + std::chrono::duration_cast<clock::duration>(beat_every_);
    }
    reap_sends();
    return out;
}

}  // namespace pcluster::controller
