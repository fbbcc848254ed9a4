// Encoding and decoding of messages into frames (see frame.hpp, messages.hpp).
#pragma once

#include <sstream>
#include <streambuf>
#include <string>

#include <cereal/archives/portable_binary.hpp>

#include "pcluster/protocol/frame.hpp"
#include "pcluster/protocol/messages.hpp"

namespace pcluster::protocol {

namespace detail {
// Reads cereal input straight from frame memory, without copying the meta into a string.
struct span_buf : std::streambuf {
    explicit span_buf(std::span<const char> s) {
        char* p = const_cast<char*>(s.data());
        setg(p, p, p + s.size());
    }
};
}  // namespace detail

// Whether a frame carries a message of type t.
inline bool is(const frame_view& v, message_type t) { return v.type() == static_cast<std::uint16_t>(t); }

template <class T>
std::string encode_meta(const T& msg) {
    std::ostringstream os;
    {
        cereal::PortableBinaryOutputArchive ar(os);
        ar(msg);
    }
    return std::move(os).str();
}

// A frame for `msg` whose buffers are `bufs` (referenced, not copied).
template <class T>
outgoing_frame encode(const T& msg, std::vector<std::span<const char>> bufs = {}) {
    const std::string meta = encode_meta(msg);
    std::vector<std::uint64_t> lens;
    lens.reserve(bufs.size());
    for (const auto& b : bufs) lens.push_back(b.size());
    return outgoing_frame{make_head(static_cast<std::uint16_t>(type_of<T>::value), meta, lens),
                          std::move(bufs), nullptr};
}

// Decodes meta bytes as T. Throws frame_error when they are not a valid T (truncated, trailing
// garbage); `what` names the message in the error.
template <class T>
T decode_meta(std::span<const char> meta, const char* what = "message") {
    detail::span_buf sb(meta);
    std::istream is(&sb);
    T msg{};
    try {
        cereal::PortableBinaryInputArchive ar(is);
        ar(msg);
    } catch (const std::exception& e) {
        throw frame_error(std::string("malformed ") + what + " meta: " + e.what());
    }
    if (is.peek() != std::char_traits<char>::eof())
        throw frame_error(std::string("malformed ") + what + " meta: trailing bytes");
    return msg;
}

// Decodes the meta of a frame as T. Throws frame_error when the type does not match or the meta
// is not a valid T.
template <class T>
T decode(const frame_view& f) {
    constexpr auto want = static_cast<std::uint16_t>(type_of<T>::value);
    if (f.type() != want)
        throw frame_error(std::string("expected a ") + type_name(want) + " frame, got " + type_name(f.type()));
    return decode_meta<T>(f.meta(), type_name(want));
}

// The route of any request frame (throws frame_error for non-request types).
route decode_route(const frame_view& f);

// The request id of an engine_reply or output frame (throws frame_error for other types).
std::uint64_t reply_id(const frame_view& f);

}  // namespace pcluster::protocol
