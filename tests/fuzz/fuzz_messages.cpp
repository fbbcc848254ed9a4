// libFuzzer target: every message's decoder. The first byte picks the message (in
// PCLUSTER_MESSAGES order), the rest is its meta. A decode either fails with frame_error or gives
// a message that encodes to bytes that decode to the same encoding again; a claimed length never
// allocates beyond what the bytes present allow; a request's or reply's id is what peek_id reads.
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>

#include "pcluster/protocol/codec.hpp"

using namespace pcluster::protocol;

namespace {
template <class T>
void one(std::span<const char> meta) {
    T m;
    try {
        m = decode_meta<T>(meta, "fuzzed");
    } catch (const frame_error&) {
        return;
    }
    const std::string again = encode_meta(m);
    const T m2 = decode_meta<T>(again, "re-encoded");
    if (encode_meta(m2) != again) __builtin_trap();
    constexpr auto type = static_cast<std::uint16_t>(type_of<T>::value);
    if constexpr (detail::leads_with_id<T>()) {
        const auto id = peek_id(type, meta);
        if (!id) __builtin_trap();
        if constexpr (std::is_same_v<typename std::tuple_element_t<0, decltype(T::fields())>::type, route>) {
            if (*id != m.r.id) __builtin_trap();
        } else {
            if (*id != m.id) __builtin_trap();
        }
    }
}

template <class F>
void nth_message(std::size_t k, F&& f) {
    std::size_t i = 0;
    for_each_message([&](auto tag) {
        if (i++ == k) f(tag);
    });
}

constexpr std::size_t message_count() {
    std::size_t n = 0;
#define PCLUSTER_FUZZ_COUNT_(name, number, role) ++n;
    PCLUSTER_MESSAGES(PCLUSTER_FUZZ_COUNT_)
#undef PCLUSTER_FUZZ_COUNT_
    return n;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const std::span<const char> meta(reinterpret_cast<const char*>(data + 1), size - 1);
    nth_message(data[0] % message_count(), [&](auto tag) { one<decltype(tag)>(meta); });
    return 0;
}
