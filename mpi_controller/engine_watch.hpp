// Whether each engine is alive, as the controller sees it: a pidfd per engine on the controller's
// host (a death is noticed within milliseconds, with the exact exit status on kernels that give it
// to non-parents, 6.15 and later), heartbeats on the control channel for engines on other hosts
// (dead after PCLUSTER_DEAD_AFTER_S of silence), and last words an engine sends when it can
// (os._exit's code, a fatal signal). The controller's own heartbeats go to every engine, so they
// notice when the controller is gone. Single-threaded: the controller's loop drives it.
#pragma once

#include <mpi.h>
#include <poll.h>

#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pcluster/mpi/control.hpp"
#include "pcluster/mpi/job_comms.hpp"

namespace pcluster::controller {

class engine_watch {
public:
    using clock = std::chrono::steady_clock;
    struct death {
        int engine;
        std::string how;  // "exited with code 3", "killed by SIGSEGV", "stopped answering ..."
    };

    engine_watch(const mpi_wire::job_comms& comms, const std::vector<protocol::engine_info>& engines);
    ~engine_watch();
    engine_watch(const engine_watch&) = delete;
    engine_watch& operator=(const engine_watch&) = delete;

    // Descriptors the controller's idle wait should wake on: the pidfds of live engines.
    std::vector<pollfd> pollfds() const;
    // Reads heartbeats and messages, looks at pidfds and silences; returns the engines that died
    // since the last call (each once), marked dead here. Sends the controller's heartbeats.
    std::vector<death> poll();
    // An engine's last words came on the reply channel (they may come either way).
    void last_words(int engine, std::uint64_t how, std::uint64_t code);
    // Sends to an engine without ever waiting (a dead or busy engine must not block the loop).
    void send(int engine, const mpi_wire::control_msg& m);
    void send_all_alive(const mpi_wire::control_msg& m);

    bool alive(int engine) const { return alive_[static_cast<std::size_t>(engine)]; }
    // Every live engine answered rebuild_ready for `epoch` (see engine_channels.hpp).
    bool all_ready(std::uint64_t epoch) const;
    // When poll() is next due to send heartbeats.
    clock::time_point next_beat() const { return next_beat_; }
    // When an idle controller must look next, at the latest: the first silence deadline of a live
    // engine on another host, and with such engines every 250 ms anyway - heartbeats are read
    // (and so dated) only when it looks, and one read a second late makes its engine's death
    // known a second late (measured: 5.4 s instead of at most 4.75 s).
    clock::time_point next_look() const;
    const std::vector<bool>& alive_map() const { return alive_; }
    // Whether a job on this launch survives an engine's death (mpirun --enable-recovery, or srun
    // without --kill-on-bad-exit); without it mpirun ends the whole job moments later.
    bool recovery() const { return recovery_; }

private:
    struct engine_state {
        int pidfd = -1;  // -1: another host (or no pidfd): heartbeats decide
        clock::time_point last_heard;
        std::optional<std::pair<std::uint64_t, std::uint64_t>> last_words;  // (how, code)
        std::uint64_t ready_for = 0;  // the newest epoch it answered rebuild_ready for
    };
    std::string how_it_died(int engine, engine_state& s);
    void reap_sends();

    MPI_Comm control_;
    std::vector<engine_state> engines_;
    std::vector<bool> alive_;
    mpi_wire::control_msg in_{};
    MPI_Request recv_ = MPI_REQUEST_NULL;
    struct pending_send {
        MPI_Request req;
        std::unique_ptr<mpi_wire::control_msg> msg;
        int engine;
    };
    std::list<pending_send> sends_;
    std::vector<std::unique_ptr<mpi_wire::control_msg>> abandoned_;  // sends to dead engines: MPI may still read them
    std::chrono::duration<double> beat_every_, dead_after_;
    clock::time_point next_beat_;
    static constexpr std::chrono::milliseconds look_every{1};  // see poll()
    clock::time_point next_look_{};
    bool recovery_ = false;
};

}  // namespace pcluster::controller
