// The MPI side of the protocol, shared by the controller (rank 0) and the engines (ranks 1..N).
// Header-only; included only by the MPI programs.
//
// Two channels carry requests, each FIFO on its own:
//   B (collective, communicator `bcast_comm`, root 0): requests for every engine. Per request
//     every engine takes part in, in this order: Ibcast(envelope, with the request inline when it
//     is small), [Ibcast(blob: the request frame up to its parts) when it is not],
//     [Iscatterv(parts) | point-to-point parts when they exceed int counts].
//   P (point-to-point, communicator `p2p_comm`): requests for some engines, sent to each target:
//     tag_p_head carries {bcast_before, blob_len, part_len, has_parts}, followed in the same
//     message by the blob and the part when all fit in p_message_size (most single-engine
//     requests and farm tasks: one message each); otherwise tag_p_data carries the blob and
//     then the engine's own part (in chunks of at most 1 GiB). An engine that is not targeted is
//     not involved at all - it may be busy running Python for another request.
// Replies, from either channel, go point to point to rank 0 on `reply_comm` as soon as each
// engine has one: a small frame whole (tag_reply_one); a large one as the lengths of its pieces
// (tag_reply_parts: head, pickle stream, out-of-band buffers) followed by each piece on
// `p2p_comm` (tag_reply, in chunks of at most 1 GiB) - sent from where the pickle left them,
// never copied into one block on the engine. Rank 0 probes with ANY_TAG, so
// each engine's replies arrive in the order it sent them (MPI's non-overtaking rule); no gather
// tree holds a fast engine's reply back until the slowest one is done.
// Order across the two request channels: the envelope says, per engine, how many P requests
// were issued to it before; a P head says how many B requests were issued before. An engine
// runs whichever pending request has all its predecessors done, which replays the controller's
// issue order.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <ctime>
#include <stdexcept>
#include <string>
#include <string_view>
#include <span>
#include <vector>

#include <malloc.h>
#include <sched.h>
#include <cstdlib>
#include <sys/prctl.h>

namespace pcluster::mpi_wire {

inline constexpr int tag_p_head = 1;
inline constexpr int tag_p_data = 2;
inline constexpr int tag_reply_one = 3;   // reply_comm: a whole reply frame
inline constexpr int tag_reply_parts = 4;  // reply_comm: u64 lengths of a large reply's pieces
inline constexpr int tag_reply = 7;       // p2p_comm: that reply's chunks
inline constexpr int tag_output = 8;     // reply_comm: a protocol::output frame, whole (before its reply)
inline constexpr int tag_part = 5;     // B-channel parts too large for Iscatterv's int counts
inline constexpr std::uint64_t chunk = std::uint64_t{1} << 30;
// Small requests ride inside the envelope: a small all-engine request is one broadcast. The
// envelope is kept under Open MPI's shared-memory eager limit (4 KiB with its header), so each
// hop of the broadcast is one message, not a rendezvous handshake (measured: that alone cost
// ~100 us per all-engine request on 4 engines).
inline constexpr std::size_t envelope_budget = 3968;

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
// Layout: envelope_head | envelope_slot[n_engines] | inline request bytes (inline_capacity).
inline std::size_t inline_capacity(int n_engines) {
    const std::size_t fixed = sizeof(envelope_head) + sizeof(envelope_slot) * static_cast<std::size_t>(n_engines);
    return fixed < envelope_budget ? envelope_budget - fixed : 0;
}
inline std::size_t envelope_size(int n_engines) {
    return sizeof(envelope_head) + sizeof(envelope_slot) * static_cast<std::size_t>(n_engines) +
           inline_capacity(n_engines);
}
inline std::size_t envelope_inline_offset(int n_engines) {
    return sizeof(envelope_head) + sizeof(envelope_slot) * static_cast<std::size_t>(n_engines);
}

// P request: blob (the frame up to its parts, or all of it) then, if has_parts, this engine's
// part, both on tag_p_data.
struct p_head {
    std::uint64_t bcast_before;
    std::uint64_t blob_len;
    std::uint64_t part_len;
    std::uint64_t has_parts;
};

// The engines' receive buffer for P heads: a request whose head, blob and part fit travels in
// one message. Under Open MPI's 4 KiB shared-memory eager limit, so the send never waits for
// the engine.
inline constexpr std::size_t p_message_size = 4000;
inline bool p_inline(std::uint64_t blob_len, std::uint64_t part_len) {
    return sizeof(p_head) + blob_len + part_len <= p_message_size;
}

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
// starve the ones doing work. Phases after the last progress:
//   spin   (spin_ns): poll flat out - round trips stay in the microseconds;
//   yield  (until yield_ns, or busy_yield_ns while a transfer of ours is under way): poll with
//          sched_yield() between polls so runnable ranks get the core; non-blocking transfers
//          only advance while both sides poll, so this keeps large messages at full speed;
//   nap    (until doze_ns): short fixed sleeps (nap_ns) - a burst of requests is still served
//          within tens of microseconds, and a napping rank leaves the cores to working ones;
//   doze:  sleeps doubling up to max_sleep_ns (~1% of a core when idle).
// Every knob can be set from the environment (PCLUSTER_SPIN_NS, ...) for tuning experiments.
class backoff {
public:
    // `role` ("ENGINE", "CONTROLLER") selects PCLUSTER_<role>_* variables before PCLUSTER_*.
    explicit backoff(const char* role = "ENGINE") {
        // Read once per role: every wait makes a backoff, and getenv/prctl are not free.
        static const knobs engine = read_knobs("ENGINE"), controller = read_knobs("CONTROLLER");
        const knobs& k = std::string_view(role) == "CONTROLLER" ? controller : engine;
        spin_ns_ = k.spin, yield_ns_ = k.yield, busy_yield_ns_ = k.busy_yield;
        nap_ns_ = k.nap, doze_ns_ = k.doze, max_sleep_ns_ = k.max_sleep;
        // The default 50 us timer slack would turn every short sleep into 50+ us.
        thread_local const bool slack_set = prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0) == 0;
        (void)slack_set;
        reset();
    }
    void reset() {
        idle_since_ = now_ns();
        sleep_ns_ = nap_ns_;
    }
    // How long the caller should sleep now; 0: poll again at once.
    std::int64_t next_sleep(bool busy = false) {
        const std::int64_t idle = now_ns() - idle_since_;
        if (idle < spin_ns_) return 0;
        if (idle < (busy ? busy_yield_ns_ : yield_ns_)) {
            sched_yield();
            return 0;
        }
        if (idle < doze_ns_) return nap_ns_;
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
    static std::int64_t knob(const char* role, const char* name, std::int64_t fallback) {
        for (std::string var : {std::string("PCLUSTER_") + role + "_" + name, std::string("PCLUSTER_") + name})
            if (const char* v = std::getenv(var.c_str()); v && *v) return std::atoll(v);
        return fallback;
    }
    static std::int64_t now_ns() {
        timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
    }

private:
    struct knobs {
        std::int64_t spin, yield, busy_yield, nap, doze, max_sleep;
    };
    static knobs read_knobs(const char* role) {
        return {knob(role, "SPIN_NS", 50'000),       knob(role, "YIELD_NS", 2'000'000),
                knob(role, "BUSY_YIELD_NS", 1'000'000'000), knob(role, "NAP_NS", 20'000),
                knob(role, "DOZE_NS", 5'000'000),    knob(role, "MAX_SLEEP_NS", 1'000'000)};
    }
    std::int64_t spin_ns_, yield_ns_, busy_yield_ns_, nap_ns_, doze_ns_, max_sleep_ns_;
    std::int64_t idle_since_ = 0, sleep_ns_ = 0;
};

inline constexpr std::uint64_t reply_in_pieces = std::uint64_t{1} << 20;

// Sends a reply frame, given as its pieces, to rank 0 (see the channel notes above). Appends
// the requests to wait on; `pieces`, `lens` and `flat` must live until they complete.
inline void send_reply(const std::vector<std::span<const char>>& pieces, MPI_Comm reply_comm, MPI_Comm p2p_comm,
                       std::vector<MPI_Request>& reqs, std::vector<std::uint64_t>& lens, std::vector<char>& flat) {
    std::uint64_t total = 0;
    for (auto& p : pieces) total += p.size();
    MPI_Request r;
    if (total < reply_in_pieces || (pieces.size() == 1 && total <= static_cast<std::uint64_t>(INT_MAX))) {
        const char* data = pieces.size() == 1 ? pieces[0].data() : nullptr;
        if (pieces.size() != 1) {
            flat.reserve(total);
            for (auto& p : pieces) flat.insert(flat.end(), p.begin(), p.end());
            data = flat.data();
        }
        check(MPI_Isend(data, static_cast<int>(total), MPI_BYTE, 0, tag_reply_one, reply_comm, &r), "MPI_Isend");
        reqs.push_back(r);
        return;
    }
    lens.clear();
    for (auto& p : pieces) lens.push_back(p.size());
    check(MPI_Isend(lens.data(), static_cast<int>(lens.size()), MPI_UINT64_T, 0, tag_reply_parts, reply_comm, &r),
          "MPI_Isend");
    reqs.push_back(r);
    for (auto& p : pieces) isend_bytes(p.data(), p.size(), 0, tag_reply, p2p_comm, reqs);
}

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
