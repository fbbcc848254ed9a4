// Field lists: every message struct names its fields once, with PCLUSTER_FIELDS, and that one
// list drives its wire encoding (cereal), its equality, its Python binding (pcluster._core) and
// the round-trip and golden tests. A struct's wire form is its fields in list order.
#pragma once

#include <tuple>

namespace pcluster::protocol {

// One field of struct C: its name (as Python and the docs spell it) and where it lives.
template <class C, class M>
struct field {
    using owner = C;
    using type = M;
    const char* name;
    M C::*member;
};

// Calls f(field) for every field of T, in wire order.
template <class T, class F>
constexpr void for_each_field(F&& f) {
    std::apply([&](auto... fd) { (f(fd), ...); }, T::fields());
}

namespace detail {
template <class Archive, class T>
void serialize_fields(Archive& ar, T& msg) {
    std::apply([&](auto... fd) { ar(msg.*(fd.member)...); }, T::fields());
}
}  // namespace detail

}  // namespace pcluster::protocol

// Preprocessor map over up to 16 field names: F(T, name), comma separated.
#define PCLUSTER_PP_CAT_(a, b) a##b
#define PCLUSTER_PP_CAT(a, b) PCLUSTER_PP_CAT_(a, b)
#define PCLUSTER_PP_NARGS_(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14, _15, _16, N, ...) N
#define PCLUSTER_PP_NARGS(...) PCLUSTER_PP_NARGS_(__VA_ARGS__, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1)
#define PCLUSTER_PP_MAP_1(F, T, x) F(T, x)
#define PCLUSTER_PP_MAP_2(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_1(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP_3(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_2(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP_4(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_3(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP_5(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_4(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP_6(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_5(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP_7(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_6(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP_8(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_7(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP_9(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_8(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP_10(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_9(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP_11(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_10(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP_12(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_11(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP_13(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_12(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP_14(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_13(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP_15(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_14(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP_16(F, T, x, ...) F(T, x), PCLUSTER_PP_MAP_15(F, T, __VA_ARGS__)
#define PCLUSTER_PP_MAP(F, T, ...) PCLUSTER_PP_CAT(PCLUSTER_PP_MAP_, PCLUSTER_PP_NARGS(__VA_ARGS__))(F, T, __VA_ARGS__)

#define PCLUSTER_FIELD_(T, m) ::pcluster::protocol::field<T, decltype(T::m)>{#m, &T::m}

// Inside struct T: its fields, in wire order. Defines fields(), serialize() and operator==.
#define PCLUSTER_FIELDS(T, ...)                                                                            \
    static constexpr auto fields() { return std::make_tuple(PCLUSTER_PP_MAP(PCLUSTER_FIELD_, T, __VA_ARGS__)); } \
    template <class Archive>                                                                               \
    void serialize(Archive& ar) {                                                                          \
        ::pcluster::protocol::detail::serialize_fields(ar, *this);                                         \
    }                                                                                                      \
    bool operator==(const T&) const = default;
