// The MPI side of the protocol, shared by the controller (rank 0) and the engines (ranks 1..N):
// tags, transfers of any length, the reply path. The two request channels are described in
// envelope.hpp; docs/protocol.md has the whole picture.
//
// Replies, from either channel, go point to point to rank 0 on the reply communicator as soon as
// each engine has one: a small frame whole (tag_reply_whole); a large one as the lengths of its
// pieces (tag_reply_sizes: head, pickle stream, out-of-band buffers) followed by each piece on
// the direct communicator (tag_reply_piece) - sent from where the pickle left them, never copied
// into one block on the engine. Rank 0 probes with ANY_TAG, so each engine's replies arrive in
// the order it sent them (MPI's non-overtaking rule).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace pcluster::mpi_wire {

inline constexpr int tag_direct_head = 1;       // direct comm: a direct_head (with the request when small)
inline constexpr int tag_direct_data = 2;       // direct comm: the common bytes, then the part
inline constexpr int tag_reply_whole = 3;       // reply comm: a whole reply frame
inline constexpr int tag_reply_sizes = 4;       // reply comm: u64 lengths of a large reply's pieces
inline constexpr int tag_collective_part = 5;   // collective comm: parts too large for a scatter
inline constexpr int tag_reply_piece = 7;       // direct comm: one piece of a large reply
inline constexpr int tag_output = 8;            // reply comm: a protocol::output frame, whole (before its reply)

// Replies this large go in pieces (no copy into one block on the engine).
inline constexpr std::uint64_t reply_in_pieces = std::uint64_t{1} << 20;

struct mpi_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Every raw MPI call goes through here: the routine, the code and MPI's own words.
void check(int rc, const char* routine);

// Non-blocking transfers of any length, each one MPI operation: lengths beyond MPI's int count
// travel as one element of a derived datatype (whole GiB blocks plus the rest), as mpi4py's
// pkl5 does. Both sides may describe the same bytes differently; only the total must agree.
void isend_bytes(const void* p, std::uint64_t len, int dest, int tag, MPI_Comm comm, std::vector<MPI_Request>& reqs);
void irecv_bytes(void* p, std::uint64_t len, int src, int tag, MPI_Comm comm, std::vector<MPI_Request>& reqs);
void ibcast_bytes(void* p, std::uint64_t len, MPI_Comm comm, std::vector<MPI_Request>& reqs);

// Whether every request is done (then reqs is cleared).
bool test_all(std::vector<MPI_Request>& reqs);
// Waits for all of reqs without burning a core (idle back-off while polling).
void wait_all(std::vector<MPI_Request>& reqs);

// Sends a reply frame, given as its pieces, to rank 0 (see above). Appends the requests to wait
// on; `pieces`, `lens` and `flat` must live until they complete.
void send_reply(const std::vector<std::span<const char>>& pieces, MPI_Comm reply_comm, MPI_Comm direct_comm,
                std::vector<MPI_Request>& reqs, std::vector<std::uint64_t>& lens, std::vector<char>& flat);

}  // namespace pcluster::mpi_wire
