#include "watch.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>

#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "pcluster/mpi/runtime.hpp"
#include "pcluster/mpi/wire.hpp"
#include "pcluster/protocol/config.hpp"

namespace pcluster::engine {

namespace wire = pcluster::mpi_wire;
using clock = std::chrono::steady_clock;

watch* current_watch = nullptr;

namespace {

// Fatal signals reach the watch thread through a pipe (write() is async-signal-safe; MPI is not),
// and the thread acknowledges once the last words left.
int lw_pipe[2] = {-1, -1};
int ack_pipe[2] = {-1, -1};
struct sigaction previous[NSIG];
constexpr int fatal_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

extern "C" void on_fatal_signal(int sig, siginfo_t* info, void*) {
    const int saved = errno;
    if (lw_pipe[1] >= 0) {
        const int s = sig;
        if (::write(lw_pipe[1], &s, sizeof s) == sizeof s) {
            pollfd p{ack_pipe[0], POLLIN, 0};
            ::poll(&p, 1, 600);  // bounded: MPI may be what is broken
        }
    }
    sigaction(sig, &previous[sig], nullptr);
    errno = saved;
    // Sent by someone (kill, abort()): send it again to the previous handler. A real fault
    // faults again on return, into the previous handler.
    if (info->si_code <= 0 || sig == SIGABRT) raise(sig);
}

bool same_host(const std::string& host) {
    char buf[256] = {0};
    gethostname(buf, sizeof buf - 1);
    return host == buf;
}

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

}  // namespace

void install_fatal_signal_handlers() {
    if (lw_pipe[0] >= 0) return;
    if (::pipe2(lw_pipe, O_CLOEXEC | O_NONBLOCK) != 0 || ::pipe2(ack_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return;
    for (int sig : fatal_signals) {
        struct sigaction sa {};
        sa.sa_sigaction = on_fatal_signal;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(sig, &sa, &previous[sig]);
    }
}

int watch::interrupt_signal() {
    return SIGRTMIN + static_cast<int>(config::integer(config::knob::interrupt_signal));
}

watch::watch(const wire::job_comms& comms, pthread_t main)
    : id_(comms.world.rank() - 1),
      n_(comms.n_engines()),
      main_(main),
      control_(comms.control),
      rebuild_comm_(comms.rebuild),
      engines_private_(*comms.engines_private),
      controller_(comms.controller),
      bell_(comms.bell),
      beat_every_(config::number(config::knob::heartbeat_s)),
      dead_after_(config::number(config::knob::dead_after_s)) {
    for (int e = 0; e < n_; ++e) alive_.push_back(e);
    if (same_host(controller_.host)) controller_pidfd_ = pidfd_open(static_cast<pid_t>(controller_.pid));
    current_watch = this;
    thread_ = std::thread([this] { loop(); });
}

watch::~watch() {
    stop_.store(true);
    if (lw_pipe[1] >= 0) {
        const int wake = 0;
        (void)!::write(lw_pipe[1], &wake, sizeof wake);
    }
    thread_.join();
    if (builder_.joinable()) {
        if (building_.load()) builder_.detach();  // stuck in MPI for good: the process exits without it
        else builder_.join();
    }
    current_watch = nullptr;
    if (controller_pidfd_ >= 0) ::close(controller_pidfd_);
}

bool watch::take_aborted(std::uint64_t id) {
    std::lock_guard lk(aborted_mu_);
    auto it = std::find(aborted_.begin(), aborted_.end(), id);
    if (it == aborted_.end()) return false;
    aborted_.erase(it);
    any_aborted_.store(!aborted_.empty(), std::memory_order_release);
    return true;
}

bool watch::take_interrupt(std::uint64_t id) {
    std::uint64_t want = id;
    return id != 0 && interrupt_target_.compare_exchange_strong(want, 0);
}

void watch::send_to_controller(const wire::control_msg& m) {
    // Small messages leave eagerly; a controller that stopped reading must not block us.
    std::lock_guard lk(mu_);
    MPI_Request r;
    if (MPI_Isend(&m, sizeof m, MPI_BYTE, 0, wire::tag_control, control_, &r) != MPI_SUCCESS) return;
    const auto until = clock::now() + std::chrono::milliseconds(500);
    int done = 0;
    while (!done && clock::now() < until) {
        MPI_Test(&r, &done, MPI_STATUS_IGNORE);
        if (!done) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (!done) MPI_Request_free(&r);  // `m` is gone by then: only for a controller that is gone
}

void watch::last_words(std::uint64_t how, std::uint64_t code, std::chrono::milliseconds) {
    send_to_controller({wire::control_kind::last_words, id_, how, code});
}

std::optional<epoch_change> watch::change(std::uint64_t epoch) {
    std::lock_guard lk(mu_);
    for (const auto& c : changes_)
        if (c.epoch == epoch) return c;
    return std::nullopt;
}

std::optional<epoch_change> watch::newest_built(std::chrono::milliseconds limit) {
    const auto until = clock::now() + limit;
    for (;;) {
        const auto e = epoch();
        if (e != 0 && built() == e) return change(e);
        if (clock::now() > until) return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

void watch::controller_gone(const char* why) {
    std::fprintf(stderr, "pcluster engine %d: the controller (rank 0 on %s, pid %lld) %s; exiting\n", id_,
                 controller_.host.c_str(), static_cast<long long>(controller_.pid), why);
    std::fflush(stderr);
    // Across hosts mpirun would wait for this job forever (its daemons never report the dead
    // rank 0): ask it to end the whole job; then go, whatever it does.
    if (wire::ask_runtime_to_kill(-1)) std::this_thread::sleep_for(std::chrono::milliseconds(500));
    ::_exit(70);
}

// Another engine died: the main loop switches to the new epoch at once (its communicators come
// later), and the controller hears that this engine is ready to build them.
void watch::announce(std::uint64_t epoch, std::uint64_t issued, int dead) {
    {
        std::lock_guard lk(mu_);
        std::erase(alive_, dead);
        changes_.push_back({epoch, issued, MPI_COMM_NULL, MPI_COMM_NULL, alive_});
        epoch_.store(epoch, std::memory_order_release);
    }
    ready_due_ = epoch;
    if (bell_) bell_->ring(id_);  // the main loop switches epochs now, not after its next timeout
}

// Every survivor answered ready: build with them. Collective only over the survivors (the
// controller's rebuild thread and every survivor's builder): the dead engines are not needed,
// nor are the survivors' main threads, which may be busy.
void watch::build(std::uint64_t epoch, std::uint64_t members) {
    std::vector<int> world_ranks = {0}, engine_ranks;
    {
        std::lock_guard lk(mu_);
        for (int e : alive_) {
            world_ranks.push_back(e + 1);
            engine_ranks.push_back(e);
        }
    }
    if (epoch != this->epoch() || building_.load() || engine_ranks.size() != members) {
        // Cannot happen while the controller keeps the handshake; building anyway could block.
        spdlog::error("engine {}: told to build epoch {} over {} engines, but it knows epoch {} over {}{}; not building",
                      id_, epoch, members, this->epoch(), engine_ranks.size(), building_.load() ? " and is building" : "");
        return;
    }
    if (builder_.joinable()) builder_.join();  // the previous build ended (building_ is false)
    building_.store(true);
    builder_ = std::thread([this, epoch, world_ranks, engine_ranks] {
        MPI_Comm collective = MPI_COMM_NULL, engines = MPI_COMM_NULL;
        MPI_Group wg, g, eg, g2;
        MPI_Comm_group(rebuild_comm_, &wg);
        MPI_Group_incl(wg, static_cast<int>(world_ranks.size()), world_ranks.data(), &g);
        const int tag = 100 + static_cast<int>(epoch);
        const int rc1 = MPI_Comm_create_group(rebuild_comm_, g, tag, &collective);
        MPI_Comm_group(engines_private_, &eg);
        MPI_Group_incl(eg, static_cast<int>(engine_ranks.size()), engine_ranks.data(), &g2);
        const int rc2 = MPI_Comm_create_group(engines_private_, g2, tag, &engines);
        MPI_Group_free(&wg), MPI_Group_free(&g), MPI_Group_free(&eg), MPI_Group_free(&g2);
        if (rc1 != MPI_SUCCESS || rc2 != MPI_SUCCESS) {
            spdlog::critical("engine {}: cannot build the communicators of epoch {}", id_, epoch);
            ::_exit(72);
        }
        {
            std::lock_guard lk(mu_);
            for (auto& c : changes_)
                if (c.epoch == epoch) c.collective = collective, c.engines = engines;
            built_.store(epoch, std::memory_order_release);
        }
        building_.store(false);
        if (bell_) bell_->ring(id_);  // the main loop takes the communicators now
    });
}

void watch::handle(const wire::control_msg& m) {
    switch (m.kind) {
    case wire::control_kind::interrupt: {
        const std::uint64_t running = running_.load(std::memory_order_acquire);
        const std::uint64_t target = m.a ? m.a : running;
        if (target == 0 || target != running) return;  // not running (queued, or done): not disturbed
        interrupt_target_.store(target);
        pthread_kill(main_, interrupt_signal());
        return;
    }
    case wire::control_kind::signal:
        // A user's rc.send_signal: the process gets it as from kill(1) (a handler the user set
        // on the engine runs; SIGTERM, SIGKILL end the engine, which the controller then sees
        // die). SIGINT never comes here: it is an interrupt.
        ::kill(::getpid(), static_cast<int>(m.a));
        return;
    case wire::control_kind::engine_died:
        announce(m.b, m.a, m.engine);
        return;
    case wire::control_kind::rebuild_go:
        build(m.a, m.b);
        return;
    case wire::control_kind::abort: {
        // Marks are kept until the request comes (it may still be on its way) or, for one that
        // ran already, until max_aborted newer marks pushed it out.
        std::lock_guard lk(aborted_mu_);
        aborted_.push_back(m.a);
        if (aborted_.size() > max_aborted) aborted_.pop_front();
        any_aborted_.store(true, std::memory_order_release);
        return;
    }
    case wire::control_kind::stop:
        // rc.shutdown(targets=...) in a job that survives an engine's exit: what runs here ends
        // with the process (its requests fail with EngineDied, the job goes on without it).
        std::fprintf(stderr, "pcluster engine %d: a client shut this engine down (rc.shutdown(targets=...))\n", id_);
        std::fflush(stderr);
        last_words(wire::death_exit, 0, std::chrono::milliseconds(0));
        ::_exit(0);
    case wire::control_kind::exit_now:
        std::fprintf(stderr,
                     "pcluster engine %d: the controller told it to exit (it counted this engine as dead, or a "
                     "shutdown could not wait for its code any longer)\n",
                     id_);
        std::fflush(stderr);
        ::_exit(71);
    default:
        return;  // beats only refresh last_heard
    }
}

void watch::loop() {
    wire::control_msg in{};
    MPI_Request recv = MPI_REQUEST_NULL;
    MPI_Irecv(&in, sizeof in, MPI_BYTE, 0, wire::tag_control, control_, &recv);
    wire::control_msg beat{wire::control_kind::beat, id_, 0, 0};
    MPI_Request beat_req = MPI_REQUEST_NULL;
    auto last_heard = clock::now();
    auto next_beat = clock::now();
    while (!stop_.load()) {
        // MPI messages do not wake poll(): while the controller's rebuild_go is due, look often.
        const int tick_ms = clock::now() < fast_until_ && built() < epoch() ? 2 : 100;
        pollfd fds[2] = {{lw_pipe[0], POLLIN, 0}, {controller_pidfd_, POLLIN, 0}};
        ::poll(fds, controller_pidfd_ >= 0 ? 2 : 1, tick_ms);
        if (stop_.load()) break;
        if (fds[0].revents & POLLIN) {
            int sig = 0;
            while (::read(lw_pipe[0], &sig, sizeof sig) == sizeof sig) {
                if (sig > 0) {
                    send_to_controller({wire::control_kind::last_words, id_, wire::death_signal, static_cast<std::uint64_t>(sig)});
                    const char ack = 1;
                    (void)!::write(ack_pipe[1], &ack, 1);
                }
            }
        }
        if (controller_pidfd_ >= 0 && (fds[1].revents & POLLIN)) controller_gone("exited");
        for (;;) {
            int got = 0;
            if (MPI_Test(&recv, &got, MPI_STATUS_IGNORE) != MPI_SUCCESS || !got) break;
            last_heard = clock::now();
            const wire::control_msg m = in;
            MPI_Irecv(&in, sizeof in, MPI_BYTE, 0, wire::tag_control, control_, &recv);
            handle(m);
        }
        const auto now = clock::now();
        // Ready only with no build of ours under way: a stuck one (an engine died during it)
        // would make the next wait behind it, so the controller never hears ready and keeps
        // every request direct.
        if (ready_due_ != 0 && !building_.load()) {
            send_to_controller({wire::control_kind::rebuild_ready, id_, ready_due_, 0});
            ready_due_ = 0;
            fast_until_ = now + std::chrono::seconds(2);
        }
        if (controller_pidfd_ < 0 && now - last_heard > dead_after_) controller_gone("stopped answering");
        if (now >= next_beat) {
            int done = 1;
            if (beat_req != MPI_REQUEST_NULL) MPI_Test(&beat_req, &done, MPI_STATUS_IGNORE);
            if (done) {
                std::lock_guard lk(mu_);
                MPI_Isend(&beat, sizeof beat, MPI_BYTE, 0, wire::tag_control, control_, &beat_req);
            }
            next_beat = now + std::chrono::duration_cast<clock::duration>(beat_every_);
        }
    }
    if (recv != MPI_REQUEST_NULL) {
        MPI_Cancel(&recv);
        MPI_Wait(&recv, MPI_STATUS_IGNORE);
    }
    if (beat_req != MPI_REQUEST_NULL) MPI_Wait(&beat_req, MPI_STATUS_IGNORE);
}

}  // namespace pcluster::engine
