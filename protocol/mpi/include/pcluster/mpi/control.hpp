// The control channel between the controller and each engine's watch thread (a duplicate of
// MPI_COMM_WORLD of its own, tag_control): heartbeats both ways, interrupts, news of a death,
// an engine's last words, and the handshake before the survivors build new communicators after a
// death (see engine_channels.hpp for why). Small fixed-size messages, always sent without waiting (a dead or
// busy peer must never block the sender). Pure layout, no MPI.
//
// An engine's epoch report (epoch_done) goes on the reply communicator instead, so that it
// reaches the controller after every reply the engine sent before it (MPI's non-overtaking rule).
#pragma once

#include <cstdint>
#include <string>

namespace pcluster::mpi_wire {

inline constexpr int tag_control = 11;

enum class control_kind : std::uint32_t {
    beat = 1,         // either way: still here
    interrupt = 2,    // controller -> engine: raise KeyboardInterrupt in request `a` (0: whatever runs)
    engine_died = 3,  // controller -> engines: engine `engine` died; `a` collective requests had been
                      // issued on the old collective communicator; `b` is the new epoch
    last_words = 4,   // engine -> controller: it is dying; `a` how (death_*), `b` the code or signal
    epoch_done = 5,   // engine -> controller (reply comm): it skipped to epoch `b` after finishing
                      // `a` collective requests; the others issued before the death never reach it
    exit_now = 6,     // controller -> engine: it was declared dead; it must exit
    rebuild_ready = 7,  // engine -> controller: alive, and no communicator build of its own under way:
                        // ready to build epoch `a`'s communicators
    rebuild_go = 8,     // controller -> engines: every survivor said ready: build epoch `a`'s
                        // communicators now, over the `b` survivors
    signal = 9,         // controller -> engine: send signal `a` to the engine process (rc.send_signal)
    stop = 10,          // controller -> engine: a client shut this engine down (rc.shutdown(targets=)): exit 0
    abort = 11,         // controller -> engine: do not run request `a` if it has not started (view.abort)
};

enum death_how : std::uint64_t { death_unknown = 0, death_exit = 1, death_signal = 2 };

struct control_msg {
    control_kind kind = control_kind::beat;
    std::int32_t engine = -1;
    std::uint64_t a = 0;
    std::uint64_t b = 0;
};
static_assert(sizeof(control_msg) == 24);

// "exit code 3", "killed by SIGSEGV", or `fallback` when how is death_unknown.
std::string describe_death(std::uint64_t how, std::uint64_t code, const std::string& fallback);

}  // namespace pcluster::mpi_wire
