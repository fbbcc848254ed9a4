// What the fuzz targets, their seed maker and the hardening tests share.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "pcluster/protocol/messages.hpp"
#include "pcluster/protocol/stream.hpp"

namespace pcluster::fuzz {

// A message with every string, vector and number set to something (fields by PCLUSTER_FIELDS,
// so a new field is covered without touching this).
template <class T>
T filled() {
    using namespace pcluster::protocol;
    T m{};
    for_each_field<T>([&](auto fd) {
        using M = typename decltype(fd)::type;
        auto& x = m.*(fd.member);
        if constexpr (std::is_same_v<M, std::string>) x = std::string("text-") + fd.name;
        else if constexpr (std::is_same_v<M, std::vector<std::string>>) x = {"a", "bc"};
        else if constexpr (std::is_same_v<M, std::vector<std::int32_t>>) x = {0, 2, 5};
        else if constexpr (std::is_same_v<M, std::vector<std::uint32_t>>) x = {1, 1, 0};
        else if constexpr (std::is_same_v<M, std::vector<std::uint64_t>>) x = {request_id(3, 9), 4};
        else if constexpr (std::is_same_v<M, std::vector<engine_info>>) x = {{0, "host", 11, true, ""}, {1, "h2", 12, false, "killed"}};
        else if constexpr (std::is_same_v<M, std::vector<engine_queue>>) x = {{0, 2, 9, true}};
        else if constexpr (std::is_same_v<M, std::optional<std::string>>) x = "'repr'";
        else if constexpr (std::is_same_v<M, route>) x = route{request_id(1, 7), {0, 1}, 1, {1, 1}, 3};
        else if constexpr (std::is_same_v<M, std::uint64_t>) x = request_id(1, 7);
        else if constexpr (std::is_arithmetic_v<M> && !std::is_same_v<M, bool>) x = static_cast<M>(3);
        else if constexpr (std::is_same_v<M, bool>) x = true;
    });
    return m;
}

// Feeds `rest` to `reader` in chunks of `chunk` bytes (0: all at once), as a socket may deliver
// it; on_frame(received_frame&) per whole frame, on_bad() per skipped bad frame. Traps if the
// reader leaves input unread without asking for more (frame_reader::feed's contract).
template <class OnFrame, class OnBad>
void feed_chunked(protocol::frame_reader& reader, std::span<const char> rest, std::size_t chunk, OnFrame on_frame,
                  OnBad on_bad) {
    using protocol::frame_reader;
    while (!rest.empty()) {
        std::span<const char> in = rest.first(chunk ? std::min(rest.size(), chunk) : rest.size());
        const std::size_t before = in.size();
        for (;;) {
            protocol::received_frame f;
            const auto st = reader.feed(in, &f);
            if (st == frame_reader::status::frame) on_frame(f);
            else if (st == frame_reader::status::bad) on_bad();
            else break;
        }
        rest = rest.subspan(before - in.size());
        if (!in.empty()) __builtin_trap();
    }
}

}  // namespace pcluster::fuzz
