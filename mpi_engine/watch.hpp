// The engine's watch thread: it runs beside the main thread (which may sit in user code for
// hours) and needs no GIL. It
//   - sends a heartbeat to the controller every PCLUSTER_HEARTBEAT_S;
//   - receives control messages (pcluster/mpi/control.hpp): an interrupt for the running
//     request (a real-time signal to the main thread, whose Python handler raises
//     KeyboardInterrupt only in that request), news of another engine's death;
//   - after a death: answers the controller's rebuild handshake (engine_channels.hpp says why)
//     and builds the communicators of the new epoch with the other survivors, on a thread of
//     its own (a build can block forever if another engine dies during it: this thread must keep
//     beating), for the main loop to switch to between requests;
//   - watches the controller: a pidfd when it shares this host, its heartbeats otherwise; when it
//     is gone the engine exits (nothing would ever ask it to), so no orphan holds the allocation;
//   - sends the engine's last words (os._exit's code, a fatal signal) so the controller can say
//     how it died.
#pragma once

#include <mpi.h>
#include <pthread.h>

#include <atomic>
#include <deque>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "pcluster/mpi/control.hpp"
#include "pcluster/mpi/job_comms.hpp"

namespace pcluster::engine {

// What the main loop switches to after a death: at once to the epoch (direct requests of the
// new epoch run from then on), and to its communicators once they are built.
struct epoch_change {
    std::uint64_t epoch = 0;
    std::uint64_t collectives_issued = 0;  // on older collective communicators: the rest never come
    MPI_Comm collective = MPI_COMM_NULL;   // controller and survivors (null until built)
    MPI_Comm engines = MPI_COMM_NULL;      // survivors, for user code (null until built)
    std::vector<int> alive;                // engine ids
};

class watch {
public:
    // Starts the thread. `main` is the thread that runs Python (the interrupt signal goes there).
    watch(const mpi_wire::job_comms& comms, pthread_t main);
    ~watch();
    watch(const watch&) = delete;
    watch& operator=(const watch&) = delete;

    // The newest epoch announced (0: no death so far). Cheap: an atomic load.
    std::uint64_t epoch() const { return epoch_.load(std::memory_order_acquire); }
    // The newest epoch whose communicators are built. Cheap too.
    std::uint64_t built() const { return built_.load(std::memory_order_acquire); }
    // What is known of `epoch` (announced), with its communicators if built.
    std::optional<epoch_change> change(std::uint64_t epoch);
    // The newest epoch's change once its communicators are built, waiting at most `limit`.
    std::optional<epoch_change> newest_built(std::chrono::milliseconds limit);

    // The request the main thread runs (0: none), for "interrupt whatever runs".
    void running(std::uint64_t id) { running_.store(id, std::memory_order_release); }
    // The main thread's Python handler asks whether the pending interrupt is for request `id`,
    // consuming it if so.
    bool take_interrupt(std::uint64_t id);

    // Whether request `id` was aborted (view.abort) before it started here, consuming the mark.
    // Cheap while nothing is aborted: an atomic load.
    bool take_aborted(std::uint64_t id);
    bool any_aborted() const { return any_aborted_.load(std::memory_order_acquire); }

    // The engine is dying (os._exit with `code`, or a fatal signal): tell the controller, waiting
    // at most `limit` for the message to leave. Any thread; async-signal handlers go through
    // notify_fatal_signal instead.
    void last_words(std::uint64_t how, std::uint64_t code, std::chrono::milliseconds limit);

    // The signal that interrupts the main thread (SIGRTMIN + PCLUSTER_INTERRUPT_SIGNAL).
    static int interrupt_signal();

private:
    void loop();
    void handle(const mpi_wire::control_msg& m);
    void announce(std::uint64_t epoch, std::uint64_t issued, int dead);
    void build(std::uint64_t epoch, std::uint64_t members);
    void send_to_controller(const mpi_wire::control_msg& m);
    [[noreturn]] void controller_gone(const char* why);

    const int id_;
    const int n_;
    const pthread_t main_;
    const MPI_Comm control_;
    const MPI_Comm rebuild_comm_;
    const MPI_Comm engines_private_;
    const protocol::engine_info controller_;
    const std::shared_ptr<mpi_wire::doorbell> bell_;  // rung after a rebuild: the main loop may sleep
    const std::chrono::duration<double> beat_every_, dead_after_;
    int controller_pidfd_ = -1;
    std::atomic<std::uint64_t> epoch_{0};
    std::atomic<std::uint64_t> built_{0};
    std::uint64_t ready_due_ = 0;  // the epoch to answer rebuild_ready for, once no build runs
    std::chrono::steady_clock::time_point fast_until_{};  // tick fast while a rebuild_go is due
    std::atomic<bool> building_{false};
    std::thread builder_;  // may block forever (see above): detached then
    std::atomic<std::uint64_t> running_{0};
    std::atomic<std::uint64_t> interrupt_target_{0};
    std::atomic<bool> any_aborted_{false};
    std::mutex aborted_mu_;
    std::deque<std::uint64_t> aborted_;  // ids marked, oldest first (at most max_aborted)
    static constexpr std::size_t max_aborted = 4096;
    std::atomic<bool> stop_{false};
    std::mutex mu_;  // guards changes_ and alive_, and serializes sends on control_
    std::vector<epoch_change> changes_;
    std::vector<int> alive_;  // engine ids, as of the newest epoch
    std::thread thread_;
};

// The watch of this process's engine, for the embedded module and the fatal-signal handlers.
extern watch* current_watch;

// Installs handlers for SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGABRT that pass the signal to the
// watch thread as last words, wait briefly for it to leave, then let the previous handler (Open
// MPI's, or the default) end the process as it would have.
void install_fatal_signal_handlers();

}  // namespace pcluster::engine
