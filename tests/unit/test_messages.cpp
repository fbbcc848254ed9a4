// Every message, from the one list (PCLUSTER_MESSAGES): a round trip through a frame, and a golden
// encoding per protocol version that fails when a message's wire form changes without raising
// protocol_version (the versioning policy in messages.hpp).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <set>
#include <tuple>

#include "pcluster/protocol/codec.hpp"

using namespace pcluster::protocol;

namespace {

// Every field set to a value of its own, from its type alone: a field added to a struct is
// covered without touching this test.
template <class T>
void fill(T& v, int& seed);

template <class T>
concept has_fields = requires { T::fields(); };

template <class T>
void fill_one(T& v, int& seed) {
    if constexpr (has_fields<T>) {
        for_each_field<T>([&](auto fd) { fill(v.*(fd.member), seed); });
    } else if constexpr (std::is_same_v<T, bool>) {
        v = true;
    } else if constexpr (std::is_enum_v<T>) {
        v = static_cast<T>(1);  // valid for every enum of the protocol
    } else if constexpr (std::is_arithmetic_v<T>) {
        v = static_cast<T>(++seed % 97 + 2);
    } else if constexpr (std::is_same_v<T, std::string>) {
        v = "text-" + std::to_string(++seed);
    } else {
        static_assert(sizeof(T) == 0, "a field type the sample filler does not know");
    }
}
template <class T, std::size_t N>
void fill_one(std::array<T, N>& v, int& seed) {
    for (auto& x : v) fill(x, seed);
}
template <class T>
void fill_one(std::vector<T>& v, int& seed) {
    v.resize(2);
    for (auto& x : v) fill(x, seed);
}
template <class T>
void fill_one(std::optional<T>& v, int& seed) {
    v.emplace();
    fill(*v, seed);
}
template <class T>
void fill(T& v, int& seed) {
    fill_one(v, seed);
}

template <class T>
T sample() {
    T msg{};
    int seed = 0;
    fill(msg, seed);
    return msg;
}

template <class... T>
struct drop_first;
template <class F, class... T>
struct drop_first<F, T...> {
    using type = std::tuple<T...>;
};
#define PCLUSTER_MESSAGE_TYPE_(name, number, role) , name
using all_messages = drop_first<void PCLUSTER_MESSAGES(PCLUSTER_MESSAGE_TYPE_)>::type;
#undef PCLUSTER_MESSAGE_TYPE_

std::string hex(const std::vector<char>& bytes) {
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned char c : bytes) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

std::vector<char> unhex(const std::string& s) {
    std::vector<char> out;
    for (std::size_t i = 0; i + 1 < s.size(); i += 2) out.push_back(static_cast<char>(std::stoi(s.substr(i, 2), nullptr, 16)));
    return out;
}

// name -> hex encoding, from a golden file.
std::map<std::string, std::string> read_golden(const std::string& path) {
    std::map<std::string, std::string> out;
    std::ifstream in(path);
    std::string name, enc;
    while (in >> name >> enc) out[name] = enc;
    return out;
}

std::string golden_path(int version) {
    return std::string(PCLUSTER_GOLDEN_DIR) + "/protocol_v" + std::to_string(version) + ".txt";
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("every message survives a frame round trip", "[messages]", all_messages) {
    const TestType msg = sample<TestType>();
    CHECK_FALSE(msg == TestType{});  // the filler reached every field that matters
    const std::string payload_a = "stream", payload_b(100000, 'z');
    auto out = encode(msg, {{payload_a.data(), payload_a.size()}, {payload_b.data(), payload_b.size()}});
    const auto flat = out.flatten();
    REQUIRE(flat.size() == out.size());

    frame_view v(flat.data(), flat.size());
    CHECK(v.type() == static_cast<std::uint16_t>(type_of<TestType>::value));
    REQUIRE(v.nbufs() == 2);
    CHECK(std::string(v.data() + v.buf_offset(0), v.buf_len(0)) == payload_a);
    CHECK(std::string(v.data() + v.buf_offset(1), v.buf_len(1)) == payload_b);
    CHECK(decode<TestType>(v) == msg);
}

TEST_CASE("every message encodes as this protocol version's golden file says", "[messages][golden]") {
    // PCLUSTER_UPDATE_GOLDEN=1 rewrites the file: do that only together with raising
    // protocol_version (frame.hpp), so that peers of the old encoding get a version error.
    const auto path = golden_path(protocol_version);
    std::map<std::string, std::string> now;
    std::apply([&](auto... m) { ((now[type_name(static_cast<std::uint16_t>(type_of<decltype(m)>::value))] =
                                      hex(encode(sample<decltype(m)>()).flatten())),
                                 ...); },
               all_messages{});
    if (std::getenv("PCLUSTER_UPDATE_GOLDEN")) {
        std::ofstream out(path);
        for (const auto& [name, enc] : now) out << name << ' ' << enc << '\n';
    }
    const auto golden = read_golden(path);
    for (const auto& [name, enc] : now) {
        INFO("message " << name << ": its encoding changed. Raise protocol_version (protocol/include/pcluster/protocol/"
                                   "frame.hpp), then regenerate " << path << " with PCLUSTER_UPDATE_GOLDEN=1");
        CHECK(golden.count(name) == 1);
        if (golden.count(name)) CHECK(golden.at(name) == enc);
    }
    CHECK(golden.size() == now.size());
}

TEST_CASE("frames of the previous protocol version give a version error naming both versions", "[messages][golden]") {
    const auto old = read_golden(golden_path(protocol_version - 1));
    REQUIRE(!old.empty());
    for (const auto& [name, enc] : old) {
        INFO(name);
        const auto bytes = unhex(enc);
        try {
            frame_view v(bytes.data(), bytes.size());
            FAIL("an old " << name << " frame was accepted");
        } catch (const version_error& e) {
            CHECK(e.theirs == protocol_version - 1);
            CHECK_THAT(e.what(), Catch::Contains("version " + std::to_string(protocol_version - 1)) &&
                                     Catch::Contains("version " + std::to_string(protocol_version)) &&
                                     Catch::Contains("same pcluster build"));
        }
    }
}

TEST_CASE("the message list drives names, request kinds and dispatch", "[messages]") {
    CHECK(std::string(type_name(static_cast<std::uint16_t>(message_type::task_request))) == "task_request");
    CHECK(std::string(type_name(999)) == "unknown message type");
    int requests = 0;
    for_each_message([&](auto m) {
        const auto t = static_cast<std::uint16_t>(type_of<decltype(m)>::value);
        bool visited = false;
        CHECK(visit_request_type(t, [&](auto tag) { visited = std::is_same_v<decltype(tag), decltype(m)>; }) == is_request(t));
        if (is_request(t)) {
            CHECK(visited);
            ++requests;
        }
    });
    CHECK(requests == 10);
}

TEST_CASE("decoding as the wrong type names both types", "[messages]") {
    const auto flat = encode(sample<pull_request>()).flatten();
    frame_view v(flat.data(), flat.size());
    try {
        decode<push_request>(v);
        FAIL("decoded a pull_request as a push_request");
    } catch (const frame_error& e) {
        CHECK_THAT(e.what(), Catch::Contains("push_request") && Catch::Contains("pull_request"));
    }
}

TEST_CASE("the route of any request is readable without knowing its type", "[messages]") {
    const auto flat = encode(sample<scatter_request>()).flatten();
    CHECK(decode_route(frame_view(flat.data(), flat.size())) == sample<scatter_request>().r);
    const auto reply = encode(sample<engine_reply>()).flatten();
    CHECK_THROWS_AS(decode_route(frame_view(reply.data(), reply.size())), frame_error);
}

TEST_CASE("error replies: one constructor for every origin, named by the error table", "[messages][errors]") {
    const auto r = error_reply(request_id(3, 9), reply_origin::controller, 2, error_kind::engine_died, "engine 2 died");
    CHECK(r.status == reply_status::error);
    CHECK(r.origin == reply_origin::controller);
    CHECK(r.engine == 2);
    CHECK(r.ename == "EngineDied");
    CHECK(client_of(r.id) == 3);
    CHECK(seq_of(r.id) == 9);
    // User exceptions keep their own name and carry no kind.
    const auto u = error_reply(5, reply_origin::engine, 1, error_kind::none, "ZeroDivisionError", "division by zero", {"tb"});
    CHECK(u.ename == "ZeroDivisionError");
    CHECK(u.kind == error_kind::none);
    // Every kind has a distinct name and Python bases.
    std::set<std::string_view> names;
    for (const auto& k : error_kinds) {
        CHECK(names.insert(k.name).second);
        CHECK(!k.python_bases.empty());
        CHECK(name_of(k.kind) == k.name);
    }
}
