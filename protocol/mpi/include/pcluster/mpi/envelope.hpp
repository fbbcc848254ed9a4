// What the controller sends ahead of each request on the two MPI channels, and how it cuts a
// request for them. Pure layout and building, no MPI calls, unit-tested (tests/unit/test_envelope.cpp).
//
// Collective channel (requests for every engine): per request, every engine receives by
// broadcast a fixed-size envelope - per engine whether it is targeted, the length of its part,
// and how many direct requests it was sent before - with the request itself inline when it fits;
// then, when it does not, the request's common bytes by broadcast; then the parts by scatter.
// The envelope is kept under Open MPI's shared-memory eager limit (4 KiB with its header), so
// each hop of the broadcast is one message, not a rendezvous (measured: that alone cost ~100 us
// per all-engine request on 4 engines).
//
// Direct channel (requests for some engines): each target receives a head - how many
// collective requests came before, the lengths - followed in the same message by the request
// and its part when they fit in direct_message_size (most single-engine requests and tasks),
// else by the common bytes and its part in separate messages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "pcluster/protocol/layout.hpp"

namespace pcluster::mpi_wire {

inline constexpr std::size_t envelope_budget = 3968;
// The engines' receive buffer for direct heads; under the 4 KiB eager limit too, so the
// controller's send never waits for a busy engine.
inline constexpr std::size_t direct_message_size = 4000;

struct envelope_head {
    std::uint64_t common_len;
    std::uint64_t has_parts;
};
struct envelope_slot {
    std::uint64_t part_len;
    std::uint64_t direct_before;
    std::uint64_t targeted;
};

struct direct_head {
    std::uint64_t collective_before;
    std::uint64_t common_len;
    std::uint64_t part_len;
    std::uint64_t has_parts;
    // Deaths the controller had seen when it issued this request: the engine runs it only once
    // it is in that epoch too (its communicators rebuilt), so user code never meets a
    // communicator that still holds a dead engine.
    std::uint64_t epoch = 0;
};

// The envelope of a job with n engines: head | slot[n] | inline request bytes.
class envelope_layout {
public:
    explicit envelope_layout(int n_engines) : n_(n_engines) {}
    std::size_t inline_offset() const { return sizeof(envelope_head) + sizeof(envelope_slot) * static_cast<std::size_t>(n_); }
    std::size_t inline_capacity() const { return inline_offset() < envelope_budget ? envelope_budget - inline_offset() : 0; }
    std::size_t size() const { return inline_offset() + inline_capacity(); }
    bool carries_inline(std::uint64_t common_len) const { return common_len <= inline_capacity(); }

private:
    int n_;
};

// An envelope received by an engine.
class envelope_view {
public:
    envelope_view(std::span<const char> bytes, int n_engines) : bytes_(bytes), layout_(n_engines) {}
    envelope_head head() const;
    envelope_slot slot(int engine) const;
    std::span<const char> inline_bytes() const;  // the request itself, when it was carried inline
    // Every engine's part length (all engines take part in the scatter, targeted or not).
    std::vector<std::uint64_t> part_lens() const;

private:
    std::span<const char> bytes_;
    envelope_layout layout_;
};

// The envelope for a collective request: `frame` its bytes, `targets` the engine ids in the
// route's order, `direct_sent` per engine the direct requests issued to it so far.
std::vector<char> build_envelope(int n_engines, const protocol::request_layout& l, const std::vector<int>& targets,
                                 const std::vector<std::uint64_t>& direct_sent, std::span<const char> frame);

// Whether parts of these lengths fit a scatter's int counts and displacements (else they go
// point to point); the controller and every engine decide alike from the same lengths.
bool parts_fit_scatter(std::span<const std::uint64_t> part_lens);

// Counts and displacements (bytes, by rank of the collective communicator, root 0 first) of the
// scatter of a collective request's parts, relative to the first part; false when the parts do
// not fit int counts (then they go point to point). rank_of[engine]: the engine's rank there
// (engine + 1 until an engine dies; the survivors' communicator numbers them anew).
struct scatter_plan {
    std::vector<int> counts, displs;
    std::uint64_t base = 0;  // offset of the first part in the frame
};
bool plan_scatter(int comm_size, const protocol::request_layout& l, const std::vector<int>& targets,
                  const std::vector<int>& rank_of, scatter_plan* out);

// Whether a direct request travels as one message (head, common bytes and part together).
inline bool direct_inline(std::uint64_t common_len, std::uint64_t part_len) {
    return sizeof(direct_head) + common_len + part_len <= direct_message_size;
}
// That one message.
std::vector<char> build_direct_message(const direct_head& h, std::span<const char> common, std::span<const char> part);

}  // namespace pcluster::mpi_wire
