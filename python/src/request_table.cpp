#include "request_table.hpp"

#include <cerrno>
#include <system_error>
#include <utility>

namespace pcluster::client {

namespace proto = pcluster::protocol;

void request_table::add(std::uint64_t id, std::size_t expected) {
    std::lock_guard lk(mu_);
    if (closed_) throw std::system_error(ENOTCONN, std::generic_category(), reason_);
    requests_[id].expected = expected;
}

void request_table::remove(std::uint64_t id) {
    std::lock_guard lk(mu_);
    requests_.erase(id);
}

void request_table::file_reply(reply_ptr r) {
    const std::uint64_t id = r->meta.id;
    std::lock_guard lk(mu_);
    if (closed_) return;  // close() froze the state: abandon() fails what is incomplete
    auto it = requests_.find(id);
    if (it == requests_.end()) return;  // not ours, or its completion was already taken
    auto& req = it->second;
    const bool was_complete = req.complete();
    if (r->meta.origin == proto::reply_origin::refused) req.whole = true;
    req.replies.push_back(std::move(r));
    if (!was_complete && req.complete()) {
        if (req.takers > 0) {
            cv_.notify_all();
        } else {
            completed_.push_back(id);
            done_cv_.notify_one();
        }
    }
    if (req.counters) cv_.notify_all();
}

void request_table::file_output(output_chunk o) {
    std::lock_guard lk(mu_);
    if (closed_) return;
    if (auto it = requests_.find(o.id); it != requests_.end()) it->second.output.push_back(std::move(o));
}

std::optional<completion> request_table::take_locked(std::unordered_map<std::uint64_t, request>::iterator it) {
    completion out{std::move(it->second.replies), std::move(it->second.output)};
    requests_.erase(it);
    return out;
}

std::optional<completion> request_table::wait_take(std::uint64_t id, time_point deadline) {
    std::unique_lock lk(mu_);
    auto it = requests_.find(id);
    if (it == requests_.end()) return std::nullopt;
    if (!it->second.complete()) {
        ++it->second.takers;
        cv_.wait_until(lk, deadline, [&] {
            auto i = requests_.find(id);
            return i == requests_.end() || i->second.complete() || closed_;
        });
        it = requests_.find(id);
        if (it == requests_.end()) return std::nullopt;
        --it->second.takers;
        if (!it->second.complete()) return std::nullopt;
    }
    return take_locked(it);
}

std::optional<completion> request_table::take(std::uint64_t id) {
    std::lock_guard lk(mu_);
    auto it = requests_.find(id);
    if (it == requests_.end() || !it->second.complete()) return std::nullopt;
    return take_locked(it);
}

bool request_table::pending(std::uint64_t id) {
    std::lock_guard lk(mu_);
    return requests_.count(id) != 0;
}

void request_table::file_event(proto::engine_event ev) {
    {
        std::lock_guard lk(mu_);
        events_.push_back(std::move(ev));
    }
    done_cv_.notify_all();
}

std::vector<proto::engine_event> request_table::take_events() {
    std::lock_guard lk(mu_);
    return std::exchange(events_, {});
}

std::vector<std::uint64_t> request_table::next_completed(time_point deadline) {
    std::unique_lock lk(mu_);
    done_cv_.wait_until(lk, deadline, [&] { return !completed_.empty() || !events_.empty() || closed_; });
    std::vector<std::uint64_t> out(completed_.begin(), completed_.end());
    completed_.clear();
    return out;
}

std::vector<reply_ptr> request_table::wait_count(std::uint64_t id, std::size_t n, time_point deadline) {
    std::unique_lock lk(mu_);
    auto it = requests_.find(id);
    if (it == requests_.end()) return {};
    ++it->second.counters;
    cv_.wait_until(lk, deadline, [&] {
        auto i = requests_.find(id);
        return i == requests_.end() || i->second.replies.size() >= n || i->second.complete() || closed_;
    });
    it = requests_.find(id);
    if (it == requests_.end()) return {};
    --it->second.counters;
    return it->second.replies;
}

std::vector<output_chunk> request_table::take_output(std::uint64_t id) {
    std::lock_guard lk(mu_);
    auto it = requests_.find(id);
    if (it == requests_.end()) return {};
    std::vector<output_chunk> out;
    out.swap(it->second.output);
    return out;
}

std::vector<std::uint64_t> request_table::abandon(std::optional<std::uint64_t> id) {
    std::lock_guard lk(mu_);
    std::vector<std::uint64_t> out;
    if (!closed_) return out;
    for (auto it = requests_.begin(); it != requests_.end();) {
        if ((!id || it->first == *id) && !it->second.complete()) {
            out.push_back(it->first);
            it = requests_.erase(it);
        } else {
            ++it;
        }
    }
    cv_.notify_all();
    return out;
}

void request_table::close(const std::string& reason) {
    {
        std::lock_guard lk(mu_);
        if (!closed_) {
            closed_ = true;
            reason_ = reason;
        }
    }
    cv_.notify_all();
    done_cv_.notify_all();
}

bool request_table::closed() {
    std::lock_guard lk(mu_);
    return closed_;
}

std::string request_table::close_reason() {
    std::lock_guard lk(mu_);
    return reason_;
}

}  // namespace pcluster::client
