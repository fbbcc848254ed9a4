#include "pcluster/mpi/envelope.hpp"

#include <climits>
#include <cstring>

namespace pcluster::mpi_wire {

envelope_head envelope_view::head() const {
    envelope_head h;
    std::memcpy(&h, bytes_.data(), sizeof h);
    return h;
}

envelope_slot envelope_view::slot(int engine) const {
    envelope_slot s;
    std::memcpy(&s, bytes_.data() + sizeof(envelope_head) + sizeof(envelope_slot) * static_cast<std::size_t>(engine), sizeof s);
    return s;
}

std::span<const char> envelope_view::inline_bytes() const {
    return bytes_.subspan(layout_.inline_offset(), head().common_len);
}

std::vector<std::uint64_t> envelope_view::part_lens() const {
    const int n = static_cast<int>((layout_.inline_offset() - sizeof(envelope_head)) / sizeof(envelope_slot));
    std::vector<std::uint64_t> out(static_cast<std::size_t>(n));
    for (int e = 0; e < n; ++e) out[static_cast<std::size_t>(e)] = slot(e).part_len;
    return out;
}

std::vector<char> build_envelope(int n_engines, const protocol::request_layout& l, const std::vector<int>& targets,
                                 const std::vector<std::uint64_t>& direct_sent, std::span<const char> frame) {
    const envelope_layout el(n_engines);
    std::vector<char> env(el.size(), 0);
    const envelope_head h{l.common_len, l.has_parts};
    std::memcpy(env.data(), &h, sizeof h);
    std::vector<envelope_slot> slots(static_cast<std::size_t>(n_engines), envelope_slot{0, 0, 0});
    for (int e = 0; e < n_engines; ++e) slots[static_cast<std::size_t>(e)].direct_before = direct_sent[static_cast<std::size_t>(e)];
    for (std::size_t k = 0; k < targets.size(); ++k) {
        auto& s = slots[static_cast<std::size_t>(targets[k])];
        s.targeted = 1;
        if (l.has_parts) s.part_len = l.part_len[k];
    }
    std::memcpy(env.data() + sizeof h, slots.data(), sizeof(envelope_slot) * slots.size());
    if (el.carries_inline(l.common_len)) std::memcpy(env.data() + el.inline_offset(), frame.data(), l.common_len);
    return env;
}

bool parts_fit_scatter(std::span<const std::uint64_t> part_lens) {
    std::uint64_t total = 0;
    for (auto len : part_lens) total += len;
    return total <= static_cast<std::uint64_t>(INT_MAX);
}

bool plan_scatter(int comm_size, const protocol::request_layout& l, const std::vector<int>& targets,
                  const std::vector<int>& rank_of, scatter_plan* out) {
    if (!parts_fit_scatter(l.part_len)) return false;
    out->counts.assign(static_cast<std::size_t>(comm_size), 0);
    out->displs.assign(static_cast<std::size_t>(comm_size), 0);
    out->base = l.part_off.empty() ? 0 : l.part_off[0];
    for (std::size_t k = 0; k < targets.size(); ++k) {
        const auto r = static_cast<std::size_t>(rank_of[static_cast<std::size_t>(targets[k])]);
        out->counts[r] = static_cast<int>(l.part_len[k]);
        out->displs[r] = static_cast<int>(l.part_off[k] - out->base);
    }
    return true;
}

std::vector<char> build_direct_message(const direct_head& h, std::span<const char> common, std::span<const char> part) {
    std::vector<char> msg(sizeof h + common.size() + part.size());
    std::memcpy(msg.data(), &h, sizeof h);
    std::memcpy(msg.data() + sizeof h, common.data(), common.size());
    if (!part.empty()) std::memcpy(msg.data() + sizeof h + common.size(), part.data(), part.size());
    return msg;
}

}  // namespace pcluster::mpi_wire
