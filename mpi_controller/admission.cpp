#include "admission.hpp"

#include <algorithm>
#include <stdexcept>

namespace pcluster::controller {

admission::admission(int engines, int window) : engines_(engines), window_(window) {
    if (engines < 0 || window < 1) throw std::invalid_argument("admission: needs engines >= 0 and a window >= 1");
}

admission::client_state& admission::state_of(std::uint32_t client) {
    auto& c = clients_[client];
    if (c.sent.empty()) c.sent.assign(static_cast<std::size_t>(engines_), 0);
    return c;
}

// Dead targets take no room: the request is not sent to them (engine_channels::issue).
bool admission::fits(const client_state& c, const request& q, const std::vector<bool>& alive) const {
    return std::all_of(q.targets.begin(), q.targets.end(), [&](int t) {
        const auto k = static_cast<std::size_t>(t);
        return !alive[k] || c.sent[k] < window_;
    });
}

void admission::count(client_state& c, const request& q, const std::vector<bool>& alive) {
    for (int t : q.targets)
        if (alive[static_cast<std::size_t>(t)]) ++c.sent[static_cast<std::size_t>(t)];
}

std::optional<request> admission::offer(request q, const std::vector<bool>& alive) {
    auto& c = state_of(protocol::client_of(q.r.id));
    if (all_held_ || c.held || !c.waiting.empty() || !fits(c, q, alive)) {
        c.waiting.push_back(std::move(q));
        ++waiting_;
        return std::nullopt;
    }
    count(c, q, alive);
    return q;
}

void admission::answered(std::uint64_t id, int engine) {
    const auto client = protocol::client_of(id);
    auto it = clients_.find(client);
    if (it == clients_.end() || engine < 0 || engine >= engines_) return;
    auto& n = it->second.sent[static_cast<std::size_t>(engine)];
    if (n > 0) --n;
    if (!it->second.waiting.empty()) dirty_.insert(client);
}

void admission::hold(std::uint32_t client) {
    state_of(client).held = true;
}

void admission::release(std::uint32_t client) {
    auto it = clients_.find(client);
    if (it == clients_.end()) return;
    it->second.held = false;
    if (!it->second.waiting.empty()) dirty_.insert(client);
}

void admission::hold_all(bool on) {
    all_held_ = on;
    if (on) return;
    for (const auto& [client, c] : clients_)
        if (!c.waiting.empty()) dirty_.insert(client);
}

std::vector<request> admission::take_ready(const std::vector<bool>& alive) {
    std::vector<request> out;
    if (all_held_) return out;
    for (auto client : dirty_) {
        auto it = clients_.find(client);
        if (it == clients_.end()) continue;
        auto& c = it->second;
        while (!c.held && !c.waiting.empty() && fits(c, c.waiting.front(), alive)) {
            count(c, c.waiting.front(), alive);
            out.push_back(std::move(c.waiting.front()));
            c.waiting.pop_front();
            --waiting_;
        }
    }
    dirty_.clear();
    return out;
}

std::vector<std::uint64_t> admission::engine_died(int e) {
    std::vector<std::uint64_t> ids;
    for (auto& [client, c] : clients_) {
        for (const auto& q : c.waiting)
            if (std::find(q.targets.begin(), q.targets.end(), e) != q.targets.end()) ids.push_back(q.r.id);
        // Its replies are answered for (lost): room was made; a request that waited for room
        // on it now waits for nothing there.
        if (!c.waiting.empty()) dirty_.insert(client);
    }
    return ids;
}

bool admission::abort(std::uint64_t id) {
    const auto client = protocol::client_of(id);
    auto it = clients_.find(client);
    if (it == clients_.end()) return false;
    auto& w = it->second.waiting;
    auto q = std::find_if(w.begin(), w.end(), [&](const request& r) { return r.r.id == id; });
    if (q == w.end()) return false;
    w.erase(q);
    --waiting_;
    if (!w.empty()) dirty_.insert(client);  // the one behind it may go now
    return true;
}

std::vector<std::uint64_t> admission::forget(std::uint32_t client) {
    std::vector<std::uint64_t> ids;
    auto it = clients_.find(client);
    if (it == clients_.end()) return ids;
    for (const auto& q : it->second.waiting) ids.push_back(q.r.id);
    waiting_ -= it->second.waiting.size();
    clients_.erase(it);
    dirty_.erase(client);
    return ids;
}

std::vector<std::uint64_t> admission::take_all() {
    std::vector<std::uint64_t> ids;
    for (auto& [client, c] : clients_) {
        for (const auto& q : c.waiting)
            ids.push_back(q.r.id);
        c.waiting.clear();
    }
    waiting_ = 0;
    dirty_.clear();
    return ids;
}

}  // namespace pcluster::controller
