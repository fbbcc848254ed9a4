// Encoding and decoding of messages into frames (see frame.hpp, messages.hpp).
//
// Decoding is bounded: a string's or container's claimed length is checked against the bytes
// actually left in the meta before anything is allocated (cereal's own archives resize a
// container to whatever count the input claims, so 20 bytes claiming a billion engine ids made
// the bridge allocate 4 GB). A claim that cannot fit is a frame_error, like any malformed meta.
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <cereal/archives/portable_binary.hpp>

#include "pcluster/protocol/frame.hpp"
#include "pcluster/protocol/messages.hpp"

namespace pcluster::protocol {

namespace detail {

template <class T>
struct is_std_vector : std::false_type {};
template <class T, class A>
struct is_std_vector<std::vector<T, A>> : std::true_type {};
template <class T>
struct is_std_array : std::false_type {};
template <class T, std::size_t N>
struct is_std_array<std::array<T, N>> : std::true_type {};
template <class T>
concept has_field_list = requires { T::fields(); };

// The fewest bytes one T can take in the portable binary encoding (a string or container: its
// 8-byte size; a message: the sum of its fields). Claimed counts are checked against it.
template <class T>
constexpr std::size_t min_wire_size() {
    if constexpr (std::is_arithmetic_v<T> || std::is_enum_v<T>) {
        return sizeof(T);
    } else if constexpr (std::is_same_v<T, std::string> || is_std_vector<T>::value) {
        return 8;
    } else if constexpr (is_std_array<T>::value) {
        return std::tuple_size_v<T> * min_wire_size<typename T::value_type>();
    } else if constexpr (has_field_list<T>) {
        std::size_t n = 0;
        std::apply([&](auto... fd) { ((n += min_wire_size<typename decltype(fd)::type>()), ...); }, T::fields());
        return n;
    } else {
        return 1;  // std::optional (its flag) and anything else: at least a byte
    }
}

// A cereal input archive reading the portable binary format (what encode_meta writes) straight
// from frame memory, refusing any claimed size that the bytes left cannot hold.
class bounded_input_archive : public cereal::InputArchive<bounded_input_archive, cereal::AllowEmptyClassElision> {
public:
    explicit bounded_input_archive(std::span<const char> s)
        : cereal::InputArchive<bounded_input_archive, cereal::AllowEmptyClassElision>(this),
          p_(s.data()),
          end_(s.data() + s.size()) {
        std::uint8_t little = 0;
        load_binary<1>(&little, 1);
        if (little > 1) throw cereal::Exception("bad endianness flag");
        swap_ = (little == 1) != (std::endian::native == std::endian::little);
    }

    template <std::size_t DataSize>
    void load_binary(void* dst, std::size_t n) {
        if (n > left())
            throw cereal::Exception("needs " + std::to_string(n) + " bytes, " + std::to_string(left()) + " left");
        if (n == 0) return;  // an empty string or vector: its data() may be null
        std::memcpy(dst, p_, n);
        p_ += n;
        if constexpr (DataSize > 1) {
            if (swap_) {
                auto* b = static_cast<std::uint8_t*>(dst);
                for (std::size_t i = 0; i + DataSize <= n; i += DataSize)
                    for (std::size_t j = 0; j < DataSize / 2; ++j) std::swap(b[i + j], b[i + DataSize - 1 - j]);
            }
        }
    }
    // A claim of `count` items of at least `each` bytes: refused unless the bytes are there.
    void check_claim(std::uint64_t count, std::size_t each) const {
        if (count > left() / (each ? each : 1))
            throw cereal::Exception("claims " + std::to_string(count) + " items of at least " + std::to_string(each) +
                                    " bytes, only " + std::to_string(left()) + " bytes left");
    }
    std::size_t left() const { return static_cast<std::size_t>(end_ - p_); }

private:
    const char* p_;
    const char* end_;
    bool swap_ = false;
};

// cereal pairs every input archive with an output archive (it finds an enum's minimal form
// through it); this one exists only for that pairing, encoding uses PortableBinaryOutputArchive.
class bounded_archive_pair : public cereal::OutputArchive<bounded_archive_pair, cereal::AllowEmptyClassElision> {
public:
    bounded_archive_pair() : cereal::OutputArchive<bounded_archive_pair, cereal::AllowEmptyClassElision>(this) {}
};

template <class T>
std::enable_if_t<std::is_arithmetic_v<T> && !std::is_same_v<T, bool>> CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar,
                                                                                                T& t) {
    ar.template load_binary<sizeof(T)>(std::addressof(t), sizeof(t));
}
// A bool is one byte, 0 or 1: any other value is refused (copied into a bool it would be a value
// the type cannot hold).
inline void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, bool& t) {
    std::uint8_t b = 0;
    ar.template load_binary<1>(&b, 1);
    if (b > 1) throw cereal::Exception("a bool of value " + std::to_string(b));
    t = b != 0;
}
template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(bounded_input_archive& ar, cereal::NameValuePair<T>& t) {
    ar(t.value);
}
// Strings and cereal's generic containers read their size through here: at least a byte each.
template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(bounded_input_archive& ar, cereal::SizeTag<T>& t) {
    ar(t.size);
    ar.check_claim(static_cast<std::uint64_t>(t.size), 1);
}
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, cereal::BinaryData<T>& bd) {
    using TT = std::remove_pointer_t<T>;
    ar.template load_binary<sizeof(TT)>(bd.data, static_cast<std::size_t>(bd.size));
}
// Vectors: the claimed count must fit at the element's smallest encoding (a vector of 4-byte
// ids claiming n needs 4n bytes left), so what is reserved is bounded by the bytes present.
template <class T, class A>
void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, std::vector<T, A>& v) {
    std::uint64_t n = 0;
    ar.template load_binary<sizeof(n)>(&n, sizeof(n));
    ar.check_claim(n, min_wire_size<T>());
    v.clear();
    if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
        v.resize(static_cast<std::size_t>(n));
        ar.template load_binary<sizeof(T)>(v.data(), static_cast<std::size_t>(n) * sizeof(T));
    } else {
        v.reserve(static_cast<std::size_t>(n));
        for (std::uint64_t i = 0; i < n; ++i) {
            T x{};
            ar(x);
            v.push_back(std::move(x));
        }
    }
}

// Reads cereal input straight from frame memory, without copying the meta into a string.
struct span_buf : std::streambuf {
    explicit span_buf(std::span<const char> s) {
        char* p = const_cast<char*>(s.data());
        setg(p, p, p + s.size());
    }
};

template <class T>
constexpr bool leads_with_id() {
    using first = typename std::tuple_element_t<0, decltype(T::fields())>::type;
    return std::is_same_v<first, route> || std::is_same_v<first, std::uint64_t>;
}
}  // namespace detail

}  // namespace pcluster::protocol

CEREAL_SETUP_ARCHIVE_TRAITS(pcluster::protocol::detail::bounded_input_archive,
                            pcluster::protocol::detail::bounded_archive_pair)

namespace pcluster::protocol {

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
// garbage, a length claimed beyond the bytes present); `what` names the message in the error.
template <class T>
T decode_meta(std::span<const char> meta, const char* what = "message") {
    T msg{};
    try {
        detail::bounded_input_archive ar(meta);
        ar(msg);
        if (ar.left() != 0) throw frame_error(std::string("malformed ") + what + " meta: trailing bytes");
    } catch (const frame_error&) {
        throw;
    } catch (const std::exception& e) {
        throw frame_error(std::string("malformed ") + what + " meta: " + e.what());
    }
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

// Whether messages of `type` start with their request id: every request (its route), and
// engine_reply, output, control_reply and shm_frame.
constexpr bool carries_id(std::uint16_t type) {
    switch (static_cast<message_type>(type)) {
#define PCLUSTER_MESSAGE_CARRIES_ID_(name, number, role) \
    case message_type::name: return detail::leads_with_id<name>();
        PCLUSTER_MESSAGES(PCLUSTER_MESSAGE_CARRIES_ID_)
#undef PCLUSTER_MESSAGE_CARRIES_ID_
    }
    return false;
}
static_assert(carries_id(static_cast<std::uint16_t>(message_type::engine_reply)) &&
              carries_id(static_cast<std::uint16_t>(message_type::output)) &&
              carries_id(static_cast<std::uint16_t>(message_type::control_reply)) &&
              carries_id(static_cast<std::uint16_t>(message_type::shm_frame)) &&
              carries_id(static_cast<std::uint16_t>(message_type::execute_request)) &&
              !carries_id(static_cast<std::uint16_t>(message_type::auth_request)));

// The request id of a message of `type` read from the first bytes of its meta alone, without
// decoding the rest: a frame that cannot be decoded (or taken at all) can still fail the one
// request it belongs to. nullopt when the type carries no id or the bytes are too few.
inline std::optional<std::uint64_t> peek_id(std::uint16_t type, std::span<const char> meta_head) {
    if (!carries_id(type) || meta_head.size() < 9) return std::nullopt;
    const auto flag = static_cast<std::uint8_t>(meta_head[0]);
    if (flag > 1) return std::nullopt;
    std::uint64_t id;
    std::memcpy(&id, meta_head.data() + 1, 8);
    if ((flag == 1) != (std::endian::native == std::endian::little)) id = __builtin_bswap64(id);
    return id;
}
inline std::optional<std::uint64_t> peek_id(const frame_view& f) { return peek_id(f.type(), f.meta()); }

// The engine an engine_reply or output comes from (its second field), read the same way.
inline std::optional<std::int32_t> peek_engine(std::uint16_t type, std::span<const char> meta_head) {
    static_assert(std::is_same_v<typename std::tuple_element_t<1, decltype(engine_reply::fields())>::type, std::int32_t> &&
                  std::is_same_v<typename std::tuple_element_t<1, decltype(output::fields())>::type, std::int32_t>);
    if ((type != static_cast<std::uint16_t>(message_type::engine_reply) &&
         type != static_cast<std::uint16_t>(message_type::output)) ||
        meta_head.size() < 13 || static_cast<std::uint8_t>(meta_head[0]) > 1)
        return std::nullopt;
    std::uint32_t e;
    std::memcpy(&e, meta_head.data() + 9, 4);
    if ((meta_head[0] == 1) != (std::endian::native == std::endian::little)) e = __builtin_bswap32(e);
    return static_cast<std::int32_t>(e);
}

// The route of any request frame (throws frame_error for non-request types).
route decode_route(const frame_view& f);

// The request id of an engine_reply or output frame (throws frame_error for other types).
std::uint64_t reply_id(const frame_view& f);

}  // namespace pcluster::protocol
