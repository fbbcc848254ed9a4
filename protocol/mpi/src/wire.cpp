#include "pcluster/mpi/wire.hpp"

#include <climits>

#include "pcluster/mpi/idle.hpp"

namespace pcluster::mpi_wire {

void check(int rc, const char* routine) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw mpi_error(std::string(routine) + " failed (code " + std::to_string(rc) + "): " + std::string(msg, len));
}

namespace {
// `len` bytes as (count, datatype): plain bytes when the count fits an int, else one element of
// a committed derived type the caller frees once the operation is posted (MPI keeps what a
// pending operation needs).
struct byte_count {
    int count;
    MPI_Datatype type;
    bool derived;
};

byte_count bytes_of(std::uint64_t len) {
    if (len <= static_cast<std::uint64_t>(INT_MAX)) return {static_cast<int>(len), MPI_BYTE, false};
    constexpr std::uint64_t block = std::uint64_t{1} << 30;
    MPI_Datatype gib, blocks, rest_type, whole;
    check(MPI_Type_contiguous(static_cast<int>(block), MPI_BYTE, &gib), "MPI_Type_contiguous");
    check(MPI_Type_contiguous(static_cast<int>(len / block), gib, &blocks), "MPI_Type_contiguous");
    const std::uint64_t rest = len % block;
    check(MPI_Type_contiguous(static_cast<int>(rest), MPI_BYTE, &rest_type), "MPI_Type_contiguous");
    int lens[2] = {1, 1};
    MPI_Aint displs[2] = {0, static_cast<MPI_Aint>(len - rest)};
    MPI_Datatype types[2] = {blocks, rest_type};
    check(MPI_Type_create_struct(rest ? 2 : 1, lens, displs, types, &whole), "MPI_Type_create_struct");
    check(MPI_Type_commit(&whole), "MPI_Type_commit");
    MPI_Type_free(&gib);
    MPI_Type_free(&blocks);
    MPI_Type_free(&rest_type);
    return {1, whole, true};
}

template <class Post>
void post(std::uint64_t len, std::vector<MPI_Request>& reqs, const char* routine, Post&& op) {
    byte_count b = bytes_of(len);
    MPI_Request r;
    const int rc = op(b.count, b.type, &r);
    if (b.derived) MPI_Type_free(&b.type);
    check(rc, routine);
    reqs.push_back(r);
}
}  // namespace

void isend_bytes(const void* p, std::uint64_t len, int dest, int tag, MPI_Comm comm, std::vector<MPI_Request>& reqs) {
    post(len, reqs, "MPI_Isend", [&](int n, MPI_Datatype t, MPI_Request* r) { return MPI_Isend(p, n, t, dest, tag, comm, r); });
}

void irecv_bytes(void* p, std::uint64_t len, int src, int tag, MPI_Comm comm, std::vector<MPI_Request>& reqs) {
    post(len, reqs, "MPI_Irecv", [&](int n, MPI_Datatype t, MPI_Request* r) { return MPI_Irecv(p, n, t, src, tag, comm, r); });
}

void ibcast_bytes(void* p, std::uint64_t len, MPI_Comm comm, std::vector<MPI_Request>& reqs) {
    post(len, reqs, "MPI_Ibcast", [&](int n, MPI_Datatype t, MPI_Request* r) { return MPI_Ibcast(p, n, t, 0, comm, r); });
}

bool test_all(std::vector<MPI_Request>& reqs) {
    if (reqs.empty()) return true;
    int done = 0;
    check(MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
    if (done) reqs.clear();
    return done != 0;
}

void wait_all(std::vector<MPI_Request>& reqs) {
    backoff b;
    while (!test_all(reqs)) b.idle(true);
}

void send_reply(const std::vector<std::span<const char>>& pieces, MPI_Comm reply_comm, MPI_Comm direct_comm,
                std::vector<MPI_Request>& reqs, std::vector<std::uint64_t>& lens, std::vector<char>& flat) {
    std::uint64_t total = 0;
    for (auto& p : pieces) total += p.size();
    if (total < reply_in_pieces || (pieces.size() == 1 && total <= static_cast<std::uint64_t>(INT_MAX))) {
        const char* data = pieces.size() == 1 ? pieces[0].data() : nullptr;
        if (pieces.size() != 1) {
            flat.reserve(total);
            for (auto& p : pieces) flat.insert(flat.end(), p.begin(), p.end());
            data = flat.data();
        }
        isend_bytes(data, total, 0, tag_reply_whole, reply_comm, reqs);
        return;
    }
    lens.clear();
    for (auto& p : pieces) lens.push_back(p.size());
    MPI_Request r;
    check(MPI_Isend(lens.data(), static_cast<int>(lens.size()), MPI_UINT64_T, 0, tag_reply_sizes, reply_comm, &r),
          "MPI_Isend");
    reqs.push_back(r);
    for (auto& p : pieces) isend_bytes(p.data(), p.size(), 0, tag_reply_piece, direct_comm, reqs);
}

}  // namespace pcluster::mpi_wire
