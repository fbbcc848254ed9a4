// The bridge under attack: log lines rate-limited with a count of what was held back, and failed
// logins from one address slowed down. Header-only, no sockets.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>

#include <spdlog/spdlog.h>

namespace pcluster::bridge {

using steady = std::chrono::steady_clock;

// At most `burst` lines of one kind per `window`; the rest are counted, and once the window is
// over one line says how many were held back. A flood of wrong keys costs a few lines on
// mpirun's terminal, not one per attempt.
class log_limiter {
public:
    explicit log_limiter(int burst = 5, std::chrono::seconds window = std::chrono::seconds(10))
        : burst_(burst), window_(window) {}

    // Whether a line of kind `kind` may be logged now.
    bool allow(const std::string& kind, steady::time_point now = steady::now()) {
        auto& k = kinds_[kind];
        if (now - k.start >= window_) {
            report(kind, k);
            k.start = now;
            k.shown = 0;
            k.held = 0;
        }
        if (k.shown < burst_) {
            ++k.shown;
            return true;
        }
        ++k.held;
        return false;
    }
    // Reports the counts of windows that are over (call now and then).
    void tick(steady::time_point now = steady::now()) {
        for (auto& [kind, k] : kinds_)
            if (k.held && now - k.start >= window_) {
                report(kind, k);
                k.start = now;
                k.shown = 0;
                k.held = 0;
            }
    }
    std::uint64_t held_back() const {
        std::uint64_t n = 0;
        for (const auto& [kind, k] : kinds_) n += k.held;
        return n;
    }

private:
    struct kind_state {
        steady::time_point start{};
        int shown = 0;
        std::uint64_t held = 0;
    };
    void report(const std::string& kind, const kind_state& k) {
        if (k.held)
            spdlog::warn("... and {} more like this ({}) in {} s", k.held, kind,
                         std::chrono::duration_cast<std::chrono::seconds>(window_).count());
    }
    int burst_;
    std::chrono::seconds window_;
    std::map<std::string, kind_state> kinds_;
};

// Failed logins per address: each failure doubles how long the next refusal from that address
// waits (from `first` up to `most`); an address without failures for `forget` starts afresh.
// A waiting refusal holds its connection among the pending logins (the first ones dropped when
// there are too many), so one address cannot try keys faster than the cap allows.
class login_throttle {
public:
    login_throttle(std::chrono::milliseconds first = std::chrono::milliseconds(100),
                   std::chrono::milliseconds most = std::chrono::seconds(5),
                   std::chrono::seconds forget = std::chrono::seconds(60))
        : first_(first), most_(most), forget_(forget) {}

    // Records a failure from `addr`; returns how long its refusal waits.
    std::chrono::milliseconds failed(const std::string& addr, steady::time_point now = steady::now()) {
        if (seen_.size() > 4096) prune(now);
        auto& s = seen_[addr];
        if (now - s.last > forget_) s.failures = 0;
        s.last = now;
        ++s.failures;
        auto d = first_;
        for (int i = 1; i < s.failures && d < most_; ++i) d *= 2;
        return std::min(d, most_);
    }
    int failures(const std::string& addr) const {
        auto it = seen_.find(addr);
        return it == seen_.end() ? 0 : it->second.failures;
    }

private:
    struct state {
        int failures = 0;
        steady::time_point last{};
    };
    void prune(steady::time_point now) {
        for (auto it = seen_.begin(); it != seen_.end();)
            it = now - it->second.last > forget_ ? seen_.erase(it) : std::next(it);
    }
    std::chrono::milliseconds first_, most_;
    std::chrono::seconds forget_;
    std::unordered_map<std::string, state> seen_;
};

}  // namespace pcluster::bridge
