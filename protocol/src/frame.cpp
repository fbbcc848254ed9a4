#include "pcluster/protocol/frame.hpp"

#include <csignal>
#include <cstdlib>
#include <cstring>

#include "pcluster/protocol/codec.hpp"

namespace pcluster::protocol {

version_error::version_error(std::uint16_t v)
    : frame_error("protocol version mismatch: peer speaks version " + std::to_string(v) +
                  ", this side speaks version " + std::to_string(protocol_version) +
                  "; use the same pcluster build for the job and the client"),
      theirs(v) {}

void check_prefix(const frame_prefix& p, std::uint64_t max_frame) {
    if (p.magic != frame_magic) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "bad frame magic 0x%08x (expected 0x%08x)", p.magic,
                      frame_magic);
        throw frame_error(buf);
    }
    if (p.version != protocol_version) throw version_error(p.version);
    if (p.meta_len > max_meta_len)
        throw frame_error("meta of " + std::to_string(p.meta_len) + " bytes exceeds the limit of " +
                          std::to_string(max_meta_len));
    if (p.nbufs > max_nbufs)
        throw frame_error(std::to_string(p.nbufs) + " buffers exceed the limit of " +
                          std::to_string(max_nbufs));
    const std::uint64_t fixed = std::uint64_t{p.meta_len} + 8ull * p.nbufs;
    if (p.body_len < fixed)
        throw frame_error("body of " + std::to_string(p.body_len) +
                          " bytes is shorter than its table and meta (" + std::to_string(fixed) + ")");
    if (p.body_len > max_frame - prefix_size)
        throw frame_error("frame of " + std::to_string(p.body_len + prefix_size) +
                          " bytes exceeds the maximum of " + std::to_string(max_frame));
}

frame_view::frame_view(const char* data, std::size_t avail, std::uint64_t max_frame)
    : base_(data), avail_(avail) {
    if (avail < prefix_size)
        throw frame_error("truncated frame: " + std::to_string(avail) + " bytes, prefix needs " +
                          std::to_string(prefix_size));
    std::memcpy(&prefix_, data, prefix_size);
    check_prefix(prefix_, max_frame);
    const std::uint64_t table_end = prefix_size + 8ull * prefix_.nbufs;
    data_off_ = table_end + prefix_.meta_len;
    if (avail < data_off_)
        throw frame_error("truncated frame: " + std::to_string(avail) +
                          " bytes, table and meta need " + std::to_string(data_off_));
    if (avail > frame_size(prefix_))
        throw frame_error("frame has " + std::to_string(avail - frame_size(prefix_)) +
                          " bytes beyond its declared length");
    meta_ = data + table_end;
    offsets_.resize(prefix_.nbufs);
    std::uint64_t off = data_off_;
    for (std::uint32_t i = 0; i < prefix_.nbufs; ++i) {
        offsets_[i] = off;
        const std::uint64_t len = buf_len(i);
        if (len > frame_size(prefix_) - off)
            throw frame_error("buffer " + std::to_string(i) + " of " + std::to_string(len) +
                              " bytes runs past the end of the frame");
        off += len;
    }
    if (off != frame_size(prefix_))
        throw frame_error("buffers add up to " + std::to_string(off - data_off_) +
                          " bytes but the frame declares " +
                          std::to_string(frame_size(prefix_) - data_off_));
}

std::uint64_t frame_view::buf_len(std::uint32_t i) const {
    std::uint64_t len;
    std::memcpy(&len, base_ + prefix_size + 8ull * i, 8);
    return len;
}

std::uint64_t outgoing_frame::size() const {
    std::uint64_t n = head.size();
    for (const auto& b : bufs) n += b.size();
    return n;
}

std::vector<char> outgoing_frame::flatten() const {
    std::vector<char> out;
    out.reserve(size());
    out.insert(out.end(), head.begin(), head.end());
    for (const auto& b : bufs) out.insert(out.end(), b.begin(), b.end());
    return out;
}

std::vector<char> make_head(std::uint16_t type, std::span<const char> meta,
                            std::span<const std::uint64_t> buf_lens) {
    frame_prefix p;
    p.type = type;
    p.meta_len = static_cast<std::uint32_t>(meta.size());
    p.nbufs = static_cast<std::uint32_t>(buf_lens.size());
    std::uint64_t body = meta.size() + 8ull * buf_lens.size();
    for (auto l : buf_lens) body += l;
    p.body_len = body;
    std::vector<char> head(prefix_size + 8 * buf_lens.size() + meta.size());
    std::memcpy(head.data(), &p, prefix_size);
    if (!buf_lens.empty()) std::memcpy(head.data() + prefix_size, buf_lens.data(), 8 * buf_lens.size());
    if (!meta.empty()) std::memcpy(head.data() + prefix_size + 8 * buf_lens.size(), meta.data(), meta.size());
    return head;
}

route decode_route(const frame_view& f) {
    route r;
    bool found = visit_request_type(f.type(), [&](auto tag) { r = decode<decltype(tag)>(f).r; });
    if (!found)
        throw frame_error(std::string("expected a request frame, got ") + type_name(f.type()));
    return r;
}

}  // namespace pcluster::protocol

namespace pcluster::protocol {

std::string ended_by_signal(int sig) {
    const char* job = std::getenv("SLURM_JOB_ID");
    if (job && *job && sig == SIGTERM)
        return std::string("the job was cancelled by SLURM (job ") + job +
               ": scancel, its time limit or a node failure sent SIGTERM)";
    const char* abbrev = sigabbrev_np(sig);
    const std::string name = "SIG" + (abbrev ? std::string(abbrev) : std::to_string(sig));
    return "the job was stopped by a signal (" + name +
           (sig == SIGTERM || sig == SIGINT ? ": Ctrl-C or kill on mpirun sends it to every rank)" : ")");
}

std::uint64_t reply_id(const frame_view& f) {
    // cereal puts the class version ahead of the fields, so the id is read by a full decode.
    if (is(f, message_type::output)) return decode<output>(f).id;
    if (is(f, message_type::control_reply)) return decode<control_reply>(f).id;
    return decode<engine_reply>(f).id;
}

}  // namespace pcluster::protocol
