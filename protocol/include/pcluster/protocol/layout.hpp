// Where each target's bytes are in a request frame (route.shared_bufs / route.part_bufs): the
// controller cuts a request into what every target gets and each target's own part; the engine
// finds its part's buffers. One definition for both, pure (no MPI, no sockets).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "pcluster/protocol/frame.hpp"
#include "pcluster/protocol/messages.hpp"

namespace pcluster::protocol {

// A route whose layout does not fit its frame or its targets.
struct layout_error : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

struct request_layout {
    // Every target gets the frame's first common_len bytes: up to the first part buffer, or all
    // of it when the request has no parts.
    std::uint64_t common_len = 0;
    bool has_parts = false;
    // By target index k (the order of the route's targets): byte range of its part in the frame.
    std::vector<std::uint64_t> part_off, part_len;
};

// Checks the route against the frame (one part count per target, counts adding up to the
// frame's buffers) and computes the byte ranges. n_targets: how many engines the request goes to
// (route.targets.size(), or every engine when that is empty). Throws layout_error.
request_layout layout_of(const frame_view& v, const route& r, std::size_t n_targets);

// The buffers of target k's part: indices [first, first + count) of the frame's buffers.
struct buffer_range {
    std::uint32_t first = 0, count = 0;
};
buffer_range part_buffers(const route& r, std::size_t k);

// Target index of `engine` in the route (its position in targets; the engine id itself when the
// request goes to every engine). Throws layout_error if the route does not name it.
std::size_t target_index(const route& r, std::int32_t engine);

}  // namespace pcluster::protocol
