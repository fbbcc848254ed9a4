// A doorbell for engines on the controller's host: an idle engine sleeps in the kernel (a futex
// in a shared page) instead of polling MPI, and the controller rings it after posting work for
// it. Open MPI has no interrupt-driven wait on shared memory, so without this every idle engine
// wakes about a thousand times a second (measured: a 64-rank idle job used 55% of a core; with
// the doorbell, under 1%). Engines on other hosts keep polling with back-off.
//
// The page holds one slot per engine {seq, sleeping} and a count of sleepers. An engine about to
// sleep reads its seq, marks itself sleeping, counts itself (a full barrier), looks at MPI once
// more and only then waits for seq to change: a ring (seq + 1, then a wake) between its last
// look and its wait cannot be lost. A ring costs a fence and one load when nobody sleeps.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace pcluster::mpi_wire {

class doorbell {
public:
    // The controller's side: a new page for n engines in /dev/shm (0600, a random name).
    static std::unique_ptr<doorbell> create(int n_engines);
    // An engine's side: the page the controller made (nullptr if it cannot be opened).
    static std::unique_ptr<doorbell> attach(const std::string& name, int n_engines);
    ~doorbell();
    doorbell(const doorbell&) = delete;
    doorbell& operator=(const doorbell&) = delete;

    const std::string& name() const { return name_; }
    // Removes the name (every engine has mapped the page by then): nothing is left behind.
    void unlink();

    // Controller: engine e has work (or everyone: ring_all).
    void ring(int engine);
    void ring_all();

    // Engine: sleeps until rung or `timeout`, unless still_idle() - a last look at MPI, made
    // after it announced itself as a sleeper - says there is work. True if it slept.
    template <class StillIdle>
    bool sleep(int engine, std::chrono::milliseconds timeout, StillIdle&& still_idle) {
        slot& s = slots_[engine];
        const std::uint32_t seq = s.seq.load(std::memory_order_acquire);
        s.sleeping.store(1, std::memory_order_relaxed);
        head_->sleepers.fetch_add(1, std::memory_order_seq_cst);
        std::atomic_thread_fence(std::memory_order_seq_cst);
        const bool slept = still_idle();
        if (slept) wait(s.seq, seq, timeout);
        head_->sleepers.fetch_sub(1, std::memory_order_seq_cst);
        s.sleeping.store(0, std::memory_order_relaxed);
        return slept;
    }

private:
    struct alignas(64) slot {
        std::atomic<std::uint32_t> seq;
        std::atomic<std::uint32_t> sleeping;
    };
    struct alignas(64) header {
        std::atomic<std::uint32_t> sleepers;
    };
    doorbell(std::string name, void* map, std::size_t size, int n);
    static void wait(std::atomic<std::uint32_t>& word, std::uint32_t seen, std::chrono::milliseconds timeout);
    static void wake(std::atomic<std::uint32_t>& word);
    void ring_slot(slot& s);

    std::string name_;
    void* map_;
    std::size_t size_;
    int n_;
    header* head_;
    slot* slots_;
};

}  // namespace pcluster::mpi_wire
