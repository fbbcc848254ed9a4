// Shared-memory frames: when client and job share a host, large frames skip the two socket hops
// (client -> bridge -> controller, and back) and travel as a file in /dev/shm that the sender
// fills and the receiver maps. Only the small shm_frame reference crosses the sockets.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include "pcluster/protocol/frame.hpp"
#include "pcluster/protocol/messages.hpp"

namespace pcluster::protocol {

// Frames at least this large go by shared memory when the peer allows it.
inline constexpr std::uint64_t shm_threshold = std::uint64_t{1} << 20;
inline constexpr const char* shm_dir = "/dev/shm";
inline constexpr const char* shm_prefix = "pcluster-";

// A new shared-memory file of `size` bytes mapped read-write, named
// /dev/shm/pcluster-<owner>-<random>. Throws std::system_error (no space, no /dev/shm).
struct shm_out {
    std::string path;
    std::shared_ptr<byte_buffer> map;
    std::uint64_t ino = 0;  // the file's inode: a kept segment whose name no longer leads to it is not reused
};
// Whether `s`'s name still leads to its file (nobody removed or replaced it).
bool shm_intact(const shm_out& s);
shm_out create_shm(const std::string& owner, std::uint64_t size);

// Maps the first ref.size bytes of the file named by `ref`, unlinking it unless ref.keep (then
// its owner reuses it). Checks the name's form, and that the file is a regular file of at least
// ref.size bytes owned by this user. Throws frame_error / system_error.
std::shared_ptr<byte_buffer> take_shm(const shm_frame& ref);

// Whether the segment at `path` holds `token` in its first 32 bytes (and is ours, and regular).
bool probe_matches(const std::string& path, const std::array<std::uint8_t, 32>& token);

// Whether `path` has the form create_shm makes (checked before anything touches it).
bool valid_shm_path(const std::string& path);

// Removes leftovers /dev/shm/pcluster-<owner>-* (after a peer died before taking them).
void remove_shm_leftovers(const std::string& owner);
// Removes client segments (/dev/shm/pcluster-c<pid>x*) whose process is gone: a client killed
// while filling one never announced it, so nobody else knows its name.
void remove_dead_client_segments();
// The owner tag for a client's segments: "c<pid>x<random>".
std::string client_shm_owner();
bool has_shm_leftovers(const std::string& owner);

// Segments kept for reuse by whoever made them: a fresh segment's pages cost more to fault in
// than the copy into them (here ~60 ms per 100 MiB against 8 ms), so the client keeps its
// request segments and the controller its reply segments once they come back. get() returns the
// smallest kept segment that fits without wasting more than half of it, else a new one (rounded
// up to a MiB); put() keeps a segment, removing the oldest beyond the limits. A kept segment
// that someone removed meanwhile is forgotten, never handed out. Thread-safe.
class shm_pool {
public:
    struct limits {
        std::size_t segments;
        std::uint64_t bytes;
    };
    shm_pool(std::string owner, limits l) : owner_(std::move(owner)), limits_(l) {}
    ~shm_pool() { clear(); }
    shm_pool(const shm_pool&) = delete;
    shm_pool& operator=(const shm_pool&) = delete;

    shm_out get(std::uint64_t size);
    void put(shm_out s);
    // Unlinks every kept segment (mappings go when their last user lets go).
    void clear();
    const std::string& owner() const { return owner_; }

private:
    std::string owner_;
    limits limits_;
    std::mutex mu_;
    std::deque<shm_out> free_;  // oldest first
};

}  // namespace pcluster::protocol
