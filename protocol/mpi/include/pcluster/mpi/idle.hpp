// Idling without burning a core, for every polling loop of a job (engines, controller).
#pragma once

#include <cstdint>

namespace pcluster::mpi_wire {

// A rank blocked in MPI_Wait busy-polls a whole core (Open MPI has no interrupt-driven
// shared-memory wait); on an oversubscribed node those spinning ranks starve the ones doing work.
// Phases after the last progress (each length a setting, see config.hpp):
//   spin   (spin_ns): poll flat out - round trips stay in the microseconds;
//   yield  (until yield_ns, or busy_yield_ns while a transfer of ours is under way): poll with
//          sched_yield() between polls so runnable ranks get the core; non-blocking transfers
//          only advance while both sides poll, so this keeps large messages at full speed;
//   nap    (until doze_ns): short fixed sleeps (nap_ns) - a burst of requests is still served
//          within tens of microseconds, and a napping rank leaves the cores to working ones;
//   doze:  sleeps doubling up to max_sleep_ns (~1% of a core when idle).
class backoff {
public:
    backoff();
    void reset();
    // How long the caller should sleep now; 0: poll again at once (after a sched_yield() in
    // the yield phase).
    std::int64_t next_sleep(bool busy = false);
    // Sleeps as next_sleep says.
    void idle(bool busy = false);
    // Whether the last progress is older than the doze phase's start: a loop that can sleep in
    // the kernel until woken (a doorbell, ppoll) may do so now.
    bool dozing() const;
    static std::int64_t now_ns();

private:
    std::int64_t idle_since_ = 0, sleep_ns_ = 0;
};

// Large transfers land in fresh memory, and on a VM a fresh page costs more than copying into it
// (here: ~60 ms to fault in 100 MiB, 8 ms to copy it). Keeps freed memory in the process's heap
// instead of unmapping it, so the next large message reuses warm pages, unless
// PCLUSTER_MALLOC_DEFAULT=1.
void keep_freed_memory();

}  // namespace pcluster::mpi_wire
