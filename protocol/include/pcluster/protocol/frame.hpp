// Wire frames: the one container every pcluster message travels in, on TCP, on the
// bridge<->controller socket and inside MPI messages.
//
// Layout (little-endian, as the x86-64/aarch64 hosts we run on):
//   u32 magic 'PCL1' | u16 protocol version | u16 message type | u32 meta_len | u32 nbufs |
//   u64 body_len | u64 buf_len[nbufs] | meta (cereal portable binary) | buffers, back to back
// body_len counts everything after the 24-byte prefix. Buffers are opaque bytes (pickle streams
// and their out-of-band buffers); nothing in C++ ever interprets them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace pcluster::protocol {

inline constexpr std::uint32_t frame_magic = 0x314C4350;  // "PCL1" read as little-endian bytes
// Raised on any change to any message (see messages.hpp); tests/unit/golden/ pins each version.
inline constexpr std::uint16_t protocol_version = 4;
inline constexpr std::size_t prefix_size = 24;
inline constexpr std::uint64_t default_max_frame = std::uint64_t{16} << 30;  // 16 GiB
inline constexpr std::uint32_t max_meta_len = 16u << 20;
inline constexpr std::uint32_t max_nbufs = 1u << 20;

// Thrown for any frame that cannot be what it claims to be. what() says what was expected and
// what came, so a log line is enough to diagnose a bad peer.
struct frame_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Thrown when the peer speaks another protocol version; separate so callers can say which fix.
struct version_error : frame_error {
    std::uint16_t theirs;
    explicit version_error(std::uint16_t v);
};

// Owned bytes that are not zero-filled on allocation: receive buffers of gigabytes are written
// by recv/MPI right away, so clearing them first would only cost a pass over memory.
// It may instead own a memory mapping (a shared-memory frame, see shm.hpp), unmapped on destruction.
class byte_buffer {
public:
    byte_buffer() = default;
    explicit byte_buffer(std::size_t n) : heap_(std::make_unique_for_overwrite<char[]>(n)), size_(n) {}
    static std::shared_ptr<byte_buffer> adopt_mapping(char* map, std::size_t n);
    // Runs once the mapping is gone (after munmap): e.g. hand a shared-memory segment back.
    void on_release(std::function<void()> f) { on_release_ = std::move(f); }
    ~byte_buffer();
    byte_buffer(const byte_buffer&) = delete;
    byte_buffer& operator=(const byte_buffer&) = delete;
    char* data() { return map_ ? map_ : heap_.get(); }
    const char* data() const { return map_ ? map_ : heap_.get(); }
    std::size_t size() const { return size_; }
    // Whether it holds a memory mapping (shared memory another process may write) rather than heap.
    bool mapped() const { return map_ != nullptr; }

private:
    std::unique_ptr<char[]> heap_;
    char* map_ = nullptr;
    std::size_t size_ = 0;
    std::function<void()> on_release_;
};

struct frame_prefix {
    std::uint32_t magic = frame_magic;
    std::uint16_t version = protocol_version;
    std::uint16_t type = 0;
    std::uint32_t meta_len = 0;
    std::uint32_t nbufs = 0;
    std::uint64_t body_len = 0;
};
static_assert(sizeof(frame_prefix) == prefix_size);

// Checks magic, version and the size limits of a prefix; throws frame_error / version_error.
void check_prefix(const frame_prefix& p, std::uint64_t max_frame = default_max_frame);

// Total frame size (prefix + body).
inline std::uint64_t frame_size(const frame_prefix& p) { return prefix_size + p.body_len; }

// A read-only view of a frame that may be truncated after its first `avail` bytes (the engine gets
// the shared part of a request by broadcast and its own part separately). Validates structure:
// table inside the frame, buffer lengths add up to body_len.
class frame_view {
public:
    frame_view(const char* data, std::size_t avail, std::uint64_t max_frame = default_max_frame);

    const frame_prefix& prefix() const { return prefix_; }
    std::uint16_t type() const { return prefix_.type; }
    std::span<const char> meta() const { return {meta_, prefix_.meta_len}; }
    std::uint32_t nbufs() const { return prefix_.nbufs; }
    std::uint64_t buf_len(std::uint32_t i) const;
    // Offset of buffer i from the start of the frame.
    std::uint64_t buf_offset(std::uint32_t i) const { return offsets_[i]; }
    // Offset where buffer data begins (end of the meta).
    std::uint64_t data_offset() const { return data_off_; }
    const char* data() const { return base_; }
    std::size_t available() const { return avail_; }
    // Whether buffer i lies entirely inside the available bytes.
    bool has_buf(std::uint32_t i) const { return offsets_[i] + buf_len(i) <= avail_; }

private:
    const char* base_;
    std::size_t avail_;
    frame_prefix prefix_{};
    const char* meta_ = nullptr;
    std::uint64_t data_off_ = 0;
    std::vector<std::uint64_t> offsets_;
};

// A frame under construction: header bytes (prefix, table, meta) owned here, payload buffers
// referenced, so a large buffer is written with writev and never copied.
struct outgoing_frame {
    std::vector<char> head;
    std::vector<std::span<const char>> bufs;
    // Keeps the memory behind bufs alive until the frame is fully written.
    std::shared_ptr<void> keepalive;

    std::uint64_t size() const;
    // Concatenates head and buffers into one contiguous block (used where MPI needs one).
    std::vector<char> flatten() const;
};

// Builds the head of a frame for already-serialized meta bytes and the given buffer lengths.
std::vector<char> make_head(std::uint16_t type, std::span<const char> meta,
                            std::span<const std::uint64_t> buf_lens);

}  // namespace pcluster::protocol
