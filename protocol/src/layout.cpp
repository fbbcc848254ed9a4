#include "pcluster/protocol/layout.hpp"

#include <algorithm>
#include <string>

namespace pcluster::protocol {

request_layout layout_of(const frame_view& v, const route& r, std::size_t n_targets) {
    std::uint64_t bufs = r.shared_bufs;
    if (!r.part_bufs.empty()) {
        if (r.part_bufs.size() != n_targets)
            throw layout_error("request has " + std::to_string(r.part_bufs.size()) + " parts for " +
                               std::to_string(n_targets) + " targets");
        for (auto c : r.part_bufs) bufs += c;
    }
    if (bufs != v.nbufs())
        throw layout_error("request layout names " + std::to_string(bufs) + " buffers, the frame has " +
                           std::to_string(v.nbufs()));
    const std::uint64_t size = frame_size(v.prefix());
    auto offset_of = [&](std::uint32_t b) { return b < v.nbufs() ? v.buf_offset(b) : size; };
    request_layout l;
    l.has_parts = !r.part_bufs.empty();
    l.common_len = l.has_parts ? offset_of(r.shared_bufs) : size;
    if (l.has_parts) {
        for (std::size_t k = 0; k < n_targets; ++k) {
            const auto [first, count] = part_buffers(r, k);
            std::uint64_t len = 0;
            for (std::uint32_t j = 0; j < count; ++j) len += v.buf_len(first + j);
            l.part_off.push_back(offset_of(first));
            l.part_len.push_back(len);
        }
    }
    return l;
}

buffer_range part_buffers(const route& r, std::size_t k) {
    if (k >= r.part_bufs.size()) throw layout_error("the request has no part for target " + std::to_string(k));
    std::uint32_t first = r.shared_bufs;
    for (std::size_t j = 0; j < k; ++j) first += r.part_bufs[j];
    return {first, r.part_bufs[k]};
}

std::size_t target_index(const route& r, std::int32_t engine) {
    if (r.targets.empty()) return static_cast<std::size_t>(engine);
    auto it = std::find(r.targets.begin(), r.targets.end(), engine);
    if (it == r.targets.end()) throw layout_error("request does not target engine " + std::to_string(engine));
    return static_cast<std::size_t>(it - r.targets.begin());
}

}  // namespace pcluster::protocol
