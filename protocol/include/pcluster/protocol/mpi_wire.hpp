// The MPI side of the protocol, shared by the controller (rank 0) and the engines (ranks 1..N).
// Header-only; included only by the MPI programs.
//
// Two channels carry requests, each FIFO on its own:
//   B (collective, communicator `bcast_comm`, root 0): requests for several engines. Per request
//     every engine takes part in, in this order: Ibcast(envelope, with the request inline when it
//     is small), [Ibcast(blob: the request frame up to its parts) when it is not],
//     [Iscatterv(parts) | point-to-point parts when they exceed int counts],
//     Igather(reply slot: length + the reply inline when small). A reply too large for its slot
//     follows point to point (tag_reply_b), as a linear Gatherv would move it. Non-targets take
//     part with empty contributions.
//   P (point-to-point, communicator `p2p_comm`): requests for one engine. tag_p_head carries
//     {bcast_before, frame_len}, tag_p_data the frame (in chunks of at most 1 GiB), tag_reply_head
//     the reply's length and tag_reply the reply (same chunking).
// Order across the two channels: the envelope says, per engine, how many P requests were issued
// to it before; a P head says how many B requests were issued before. An engine runs whichever
// pending request has all its predecessors done, which replays the controller's issue order.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <ctime>
#include <stdexcept>
#include <string>
#include <vector>

#include <malloc.h>
#include <sched.h>
#include <cstdlib>
#include <sys/prctl.h>

namespace pcluster::mpi_wire {

inline constexpr int tag_p_head = 1;
inline constexpr int tag_p_data = 2;
inline constexpr int tag_reply_head = 3;
inline constexpr int tag_reply = 4;
inline constexpr int tag_part = 5;     // B-channel parts too large for Iscatterv's int counts
inline constexpr int tag_reply_b = 6;  // B-channel replies too large for their slot
inline constexpr std::uint64_t chunk = std::uint64_t{1} << 30;
// Small requests ride inside the envelope and small replies inside their gather slot, so a
// small all-engine request costs two collectives: one broadcast, one gather.
inline constexpr std::size_t inline_request = 4096;
inline constexpr std::size_t reply_slot = 1024;
inline constexpr std::size_t inline_reply = reply_slot - 8;

struct mpi_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Every raw MPI call goes through here: the routine, the code and MPI's own words.
inline void check(int rc, const char* routine) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw mpi_error(std::string(routine) + " failed (code " + std::to_string(rc) + "): " +
                    std::string(msg, len));
}

struct envelope_head {
    std::uint64_t blob_len;
    std::uint64_t has_parts;
};
struct envelope_slot {
    std::uint64_t part_len;
    std::uint64_t p2p_before;
    std::uint64_t targeted;
};
// Layout: envelope_head | envelope_slot[n_engines] | inline request bytes (inline_request).
inline std::size_t envelope_size(int n_engines) {
    return sizeof(envelope_head) + sizeof(envelope_slot) * static_cast<std::size_t>(n_engines) + inline_request;
}
inline std::size_t envelope_inline_offset(int n_engines) {
    return sizeof(envelope_head) + sizeof(envelope_slot) * static_cast<std::size_t>(n_engines);
}

struct p_head {
    std::uint64_t bcast_before;
    std::uint64_t frame_len;
};

// Whether the parts of a B request fit Iscatterv's int counts and displacements.
inline bool parts_fit_scatterv(const std::vector<std::uint64_t>& part_lens) {
    std::uint64_t total = 0;
    for (auto l : part_lens) total += l;
    return total <= static_cast<std::uint64_t>(INT_MAX);
}

// Ibcast of any length: pieces of at most `chunk` bytes, the same on every rank.
inline void ibcast_bytes(void* p, std::uint64_t len, MPI_Comm comm, std::vector<MPI_Request>& reqs) {
    char* c = static_cast<char*>(p);
    do {
        const std::uint64_t n = std::min(len, chunk);
        MPI_Request r;
        check(MPI_Ibcast(c, static_cast<int>(n), MPI_BYTE, 0, comm, &r), "MPI_Ibcast");
        reqs.push_back(r);
        c += n;
        len -= n;
    } while (len > 0);
}

inline void isend_bytes(const void* p, std::uint64_t len, int dest, int tag, MPI_Comm comm,
                        std::vector<MPI_Request>& reqs) {
    const char* c = static_cast<const char*>(p);
    do {
        const std::uint64_t n = std::min(len, chunk);
        MPI_Request r;
        check(MPI_Isend(c, static_cast<int>(n), MPI_BYTE, dest, tag, comm, &r), "MPI_Isend");
        reqs.push_back(r);
        c += n;
        len -= n;
    } while (len > 0);
}

inline void irecv_bytes(void* p, std::uint64_t len, int src, int tag, MPI_Comm comm,
                        std::vector<MPI_Request>& reqs) {
    char* c = static_cast<char*>(p);
    do {
        const std::uint64_t n = std::min(len, chunk);
        MPI_Request r;
        check(MPI_Irecv(c, static_cast<int>(n), MPI_BYTE, src, tag, comm, &r), "MPI_Irecv");
        reqs.push_back(r);
        c += n;
        len -= n;
    } while (len > 0);
}

inline bool test_all(std::vector<MPI_Request>& reqs) {
    if (reqs.empty()) return true;
    int done = 0;
    check(MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done, MPI_STATUSES_IGNORE),
          "MPI_Testall");
    if (done) reqs.clear();
    return done != 0;
}

// Idling without burning a core. A rank blocked in MPI_Wait busy-polls a whole core (Open MPI
// has no interrupt-driven shared-memory wait); on an oversubscribed node those spinning ranks
// starve the ones doing work. Three phases after the last progress:
//   spin    (spin_ns): poll flat out - round trips stay in the microseconds;
//   yield   (until yield_ns, or busy_yield_ns while a transfer is under way): poll, but
//           sched_yield() between polls so runnable ranks get the core; nonblocking transfers
//           only advance while both sides poll, so this keeps large messages at full speed;
//   sleep:  nanosleep, doubling from 1 us up to max_sleep_ns (~1% of a core when idle).
class backoff {
public:
    explicit backoff(std::int64_t spin_ns = env_ns("PCLUSTER_SPIN_NS", 50'000),
                     std::int64_t yield_ns = env_ns("PCLUSTER_YIELD_NS", 2'000'000),
                     std::int64_t busy_yield_ns = 1'000'000'000,
                     std::int64_t max_sleep_ns = env_ns("PCLUSTER_MAX_SLEEP_NS", 1'000'000))
        : spin_ns_(spin_ns), yield_ns_(yield_ns), busy_yield_ns_(busy_yield_ns), max_sleep_ns_(max_sleep_ns) {
        // The default 50 us timer slack would turn every short sleep into 50+ us.
        prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
        reset();
    }
    void reset() {
        idle_since_ = now_ns();
        sleep_ns_ = 1000;
    }
    // How long the caller should sleep now; 0: poll again at once.
    std::int64_t next_sleep(bool busy = false) {
        const std::int64_t idle = now_ns() - idle_since_;
        if (idle < spin_ns_) return 0;
        if (idle < (busy ? busy_yield_ns_ : yield_ns_)) {
            sched_yield();
            return 0;
        }
        const std::int64_t s = sleep_ns_;
        sleep_ns_ = std::min(sleep_ns_ * 2, max_sleep_ns_);
        return s;
    }
    void idle(bool busy = false) {
        const std::int64_t s = next_sleep(busy);
        if (s == 0) return;
        timespec ts{static_cast<time_t>(s / 1'000'000'000), static_cast<long>(s % 1'000'000'000)};
        nanosleep(&ts, nullptr);
    }
    // Tuning knobs for experiments (documented in docs/architecture.md).
    static std::int64_t env_ns(const char* name, std::int64_t fallback) {
        const char* v = std::getenv(name);
        return v && *v ? std::atoll(v) : fallback;
    }
    static std::int64_t now_ns() {
        timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
    }

private:
    std::int64_t spin_ns_, yield_ns_, busy_yield_ns_, max_sleep_ns_, idle_since_ = 0, sleep_ns_ = 1000;
};

// Large transfers land in fresh memory, and on a VM a fresh page costs more than copying into
// it (here: ~60 ms to fault in 100 MiB, 8 ms to copy it). Keep freed memory in the process's
// heap instead of unmapping it, so the next large message reuses warm pages. Set
// PCLUSTER_MALLOC_DEFAULT=1 to keep glibc's defaults (memory goes back to the OS sooner).
inline void keep_freed_memory() {
    const char* env = std::getenv("PCLUSTER_MALLOC_DEFAULT");
    if (env && *env == '1') return;
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

// Waits for all of `reqs` without burning a core.
inline void wait_all(std::vector<MPI_Request>& reqs) {
    backoff b;
    while (!test_all(reqs)) b.idle(true);
}

}  // namespace pcluster::mpi_wire
