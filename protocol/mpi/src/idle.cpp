#include "pcluster/mpi/idle.hpp"

#include <algorithm>
#include <ctime>

#include <malloc.h>
#include <sched.h>
#include <sys/prctl.h>

#include "pcluster/protocol/config.hpp"

namespace pcluster::mpi_wire {

namespace {
struct phases {
    std::int64_t spin, yield, busy_yield, nap, doze, max_sleep;
};
// Read once: every wait makes a backoff, and getenv/prctl are not free. Values were checked at
// start-up (config::check_config), so reading cannot fail here.
const phases& settings() {
    using config::integer, config::knob;
    static const phases p{integer(knob::spin_ns), integer(knob::yield_ns), integer(knob::busy_yield_ns),
                          integer(knob::nap_ns),  integer(knob::doze_ns),  integer(knob::max_sleep_ns)};
    return p;
}
}  // namespace

backoff::backoff() {
    // The default 50 us timer slack would turn every short sleep into 50+ us.
    thread_local const bool slack_set = prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0) == 0;
    (void)slack_set;
    reset();
}

void backoff::reset() {
    idle_since_ = now_ns();
    sleep_ns_ = settings().nap;
}

std::int64_t backoff::next_sleep(bool busy) {
    const phases& p = settings();
    const std::int64_t idle = now_ns() - idle_since_;
    if (idle < p.spin) return 0;
    if (idle < (busy ? p.busy_yield : p.yield)) {
        sched_yield();
        return 0;
    }
    if (idle < p.doze) return p.nap;
    const std::int64_t s = sleep_ns_;
    sleep_ns_ = std::min(sleep_ns_ * 2, p.max_sleep);
    return s;
}

void backoff::idle(bool busy) {
    const std::int64_t s = next_sleep(busy);
    if (s == 0) return;
    timespec ts{static_cast<time_t>(s / 1'000'000'000), static_cast<long>(s % 1'000'000'000)};
    nanosleep(&ts, nullptr);
}

bool backoff::dozing() const { return now_ns() - idle_since_ >= settings().doze; }

std::int64_t backoff::now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

void keep_freed_memory() {
    if (config::flag(config::knob::malloc_default)) return;
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace pcluster::mpi_wire
