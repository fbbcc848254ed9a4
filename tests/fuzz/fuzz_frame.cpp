// libFuzzer target: the frame decoder. Arbitrary bytes as a frame (frame_view), and as a stream
// cut into arbitrary chunks through frame_reader::feed, with and without skipping bad frames:
// nothing may crash, hang, read out of bounds or allocate more than the frame limit allows, and
// whatever comes out must be consistent (a frame's view holds, a skipped frame's id is its own).
#include <cstdint>
#include <cstring>
#include <span>

#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/stream.hpp"
#include "fuzz_support.hpp"

using namespace pcluster::protocol;

namespace {
constexpr std::uint64_t fuzz_max_frame = 1 << 20;  // the reader allocates at most this per frame

void check_view(const frame_view& v) {
    for (std::uint32_t i = 0; i < v.nbufs(); ++i) {
        if (!v.has_buf(i)) __builtin_trap();  // a whole frame holds every buffer
        volatile char sink = 0;
        if (v.buf_len(i)) sink = v.data()[v.buf_offset(i) + v.buf_len(i) - 1];
        (void)sink;
    }
    (void)peek_id(v);
    if (is_request(v.type())) {
        try {
            const route r = decode_route(v);
            if (peek_id(v) != r.id) __builtin_trap();  // the peeked id is the decoded one
        } catch (const frame_error&) {
        }
    }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const std::uint8_t mode = data[0];
    const char* bytes = reinterpret_cast<const char*>(data + 1);
    const std::size_t n = size - 1;
    // The bytes as one frame (also as a truncated one, as engines see a request's shared part).
    try {
        frame_view v(bytes, n, fuzz_max_frame);
        if (v.available() == frame_size(v.prefix())) check_view(v);
    } catch (const frame_error&) {
    }
    // The bytes as a stream, in chunks of 1..16 bytes or all at once.
    frame_reader reader(fuzz_max_frame);
    reader.set_skip_bad(mode & 1);
    const std::size_t chunk = (mode >> 1) & 15;
    try {
        pcluster::fuzz::feed_chunked(
            reader, std::span<const char>(bytes, n), chunk,
            [](received_frame& f) {
                if (f.bytes->size() > fuzz_max_frame) __builtin_trap();
                check_view(f.view());
            },
            [&] {
                const auto& b = reader.last_bad();
                if (!(mode & 1) || b.error.empty()) __builtin_trap();  // skipping only when asked
            });
    } catch (const frame_error&) {
        // Bad magic or version (or a bad frame without skipping): the stream ends here.
    }
    return 0;
}
