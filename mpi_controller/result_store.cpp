#include "result_store.hpp"

#include <algorithm>
#include <cstring>

#include "pcluster/protocol/config.hpp"

namespace pcluster::controller {

namespace proto = pcluster::protocol;

store_limits store_limits::from_settings() {
    store_limits l;
    l.records = static_cast<std::size_t>(config::integer(config::knob::results_keep));
    l.bytes = static_cast<std::uint64_t>(config::integer(config::knob::results_mib)) << 20;
    l.item = static_cast<std::uint64_t>(config::integer(config::knob::results_item_kib)) << 10;
    return l;
}

void result_store::submitted(std::uint64_t id, std::uint16_t type, const std::vector<int>& targets, bool task,
                             double now, std::shared_ptr<proto::byte_buffer> request) {
    if (!enabled()) return;
    auto [it, fresh] = entries_.try_emplace(id);
    if (!fresh) return;  // a refusal came first (or the id repeats: the first one stands)
    auto& e = it->second;
    e.type = type;
    e.task = task;
    e.targets = targets;
    e.expected = task ? 1 : targets.size();
    e.submitted = now;
    e.order = next_order_++;
    if (task && request && !request->mapped() && request->size() <= limits_.item) {
        e.bytes += request->size();
        e.request = std::move(request);
    }
    gone_.erase(id);
}

void result_store::replied(std::uint64_t id, int engine, bool whole, std::span<const char> frame, double now,
                           std::shared_ptr<proto::byte_buffer> owner) {
    if (!enabled()) return;
    auto it = entries_.find(id);
    if (it == entries_.end()) {
        if (!whole) return;
        submitted(id, 0, {}, false, now);
        it = entries_.find(id);
    }
    auto& e = it->second;
    if (e.done) return;
    kept_reply k;
    k.engine = engine;
    k.size = frame.size();
    if (frame.size() <= limits_.item && frame.size() <= limits_.bytes) {
        if (owner && owner->data() <= frame.data() && frame.data() + frame.size() <= owner->data() + owner->size()) {
            k.offset = static_cast<std::uint64_t>(frame.data() - owner->data());
            k.frame = std::move(owner);
        } else {
            auto copy = std::make_shared<proto::byte_buffer>(std::max<std::size_t>(frame.size(), 1));
            std::memcpy(copy->data(), frame.data(), frame.size());
            k.frame = std::move(copy);
        }
        e.bytes += frame.size();
    }
    if (e.task && e.targets.empty() && engine != proto::no_engine) e.targets.push_back(engine);
    e.replies.push_back(std::move(k));
    if (whole || e.replies.size() >= e.expected) finish(id, e, now);
}

void result_store::finish(std::uint64_t id, entry& e, double now) {
    e.done = true;
    e.completed = now;
    bytes_ += e.bytes;
    ++finished_count_;
    finish_order_.push_back(id);
    evict();
}

void result_store::evict() {
    while (!finish_order_.empty() && (finished_count_ > limits_.records || bytes_ > limits_.bytes)) {
        const auto id = finish_order_.front();
        finish_order_.pop_front();
        auto it = entries_.find(id);
        if (it == entries_.end() || !it->second.done) continue;  // purged meanwhile
        forget(id, proto::result_state::dropped);
    }
    // Purged ids leave their place in finish_order_ behind: drop those at the front.
    while (!finish_order_.empty() && !entries_.count(finish_order_.front())) finish_order_.pop_front();
}

void result_store::forget(std::uint64_t id, proto::result_state why) {
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    if (it->second.done) {
        bytes_ -= it->second.bytes;
        --finished_count_;
    }
    entries_.erase(it);
    if (gone_.emplace(id, why).second) gone_order_.push_back(id);
    const std::size_t remember = std::max<std::size_t>(8 * limits_.records, 1024);
    while (gone_order_.size() > remember) {
        gone_.erase(gone_order_.front());
        gone_order_.pop_front();
    }
}

bool result_store::purge(std::uint64_t id) {
    auto it = entries_.find(id);
    if (it == entries_.end() || !it->second.done) return false;
    forget(id, proto::result_state::purged);
    return true;
}

proto::result_record result_store::record(std::uint64_t id) const {
    proto::result_record r;
    r.id = id;
    auto it = entries_.find(id);
    if (it == entries_.end()) {
        auto g = gone_.find(id);
        r.state = g == gone_.end() ? proto::result_state::unknown : g->second;
        return r;
    }
    const auto& e = it->second;
    r.state = e.done ? proto::result_state::done : proto::result_state::pending;
    r.type = e.type;
    r.targets.assign(e.targets.begin(), e.targets.end());
    r.submitted = e.submitted;
    r.completed = e.completed;
    for (const auto& k : e.replies) r.replies.push_back({k.engine, k.size, k.frame != nullptr});
    r.resubmittable = e.task && e.request != nullptr;
    r.resubmitted_as = e.resubmitted_as;
    return r;
}

std::vector<proto::result_record> result_store::all() const {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> order;  // (acceptance, id)
    order.reserve(entries_.size());
    for (const auto& [id, e] : entries_) order.emplace_back(e.order, id);
    std::sort(order.begin(), order.end());
    std::vector<proto::result_record> out;
    out.reserve(order.size());
    for (const auto& [o, id] : order) out.push_back(record(id));
    return out;
}

std::vector<std::shared_ptr<const proto::byte_buffer>> result_store::frames(std::uint64_t id) const {
    std::vector<std::shared_ptr<const proto::byte_buffer>> out;
    auto it = entries_.find(id);
    if (it == entries_.end() || !it->second.done) return out;
    for (const auto& k : it->second.replies) {
        if (!k.frame) continue;
        if (k.offset == 0 && k.frame->size() == k.size) {
            out.push_back(k.frame);
        } else {  // kept by reference inside a larger buffer: hand out exactly its bytes
            auto copy = std::make_shared<proto::byte_buffer>(std::max<std::uint64_t>(k.size, 1));
            std::memcpy(copy->data(), k.frame->data() + k.offset, k.size);
            out.push_back(std::move(copy));
        }
    }
    return out;
}

std::shared_ptr<const proto::byte_buffer> result_store::task_request(std::uint64_t id) const {
    auto it = entries_.find(id);
    if (it == entries_.end() || !it->second.done || !it->second.task) return nullptr;
    return it->second.request;
}

void result_store::resubmitted(std::uint64_t id, std::uint64_t as) {
    if (auto it = entries_.find(id); it != entries_.end()) it->second.resubmitted_as = as;
}

std::vector<std::uint64_t> result_store::finished(const std::vector<int>& engines) const {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> order;
    for (const auto& [id, e] : entries_) {
        if (!e.done) continue;
        const bool match = engines.empty() || std::any_of(e.replies.begin(), e.replies.end(), [&](const kept_reply& k) {
                               return std::find(engines.begin(), engines.end(), k.engine) != engines.end();
                           });
        if (match) order.emplace_back(e.order, id);
    }
    std::sort(order.begin(), order.end());
    std::vector<std::uint64_t> out;
    for (const auto& [o, id] : order) out.push_back(id);
    return out;
}

}  // namespace pcluster::controller
