// The frame decoder must survive anything a peer can send: corrupt, truncated, oversize input
// is refused with a frame_error that says what was wrong, never a crash or a huge allocation.
#include <catch2/catch.hpp>

#include <cstring>
#include <random>

#include <sys/socket.h>
#include <unistd.h>

#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/stream.hpp"

using namespace pcluster::protocol;

namespace {
std::vector<char> good_frame() {
    const std::string buf = "0123456789";
    return encode(pull_request{route{1, {0}, 1, {}}, {"a"}, true}, {{buf.data(), buf.size()}}).flatten();
}
frame_prefix prefix_of(const std::vector<char>& f) {
    frame_prefix p;
    std::memcpy(&p, f.data(), sizeof p);
    return p;
}
void set_prefix(std::vector<char>& f, const frame_prefix& p) { std::memcpy(f.data(), &p, sizeof p); }
}  // namespace

TEST_CASE("a bad magic is refused", "[frames]") {
    auto f = good_frame();
    f[0] ^= 0x55;
    CHECK_THROWS_WITH(frame_view(f.data(), f.size()), Catch::Contains("magic"));
}

TEST_CASE("another protocol version is a version_error naming both versions", "[frames]") {
    auto f = good_frame();
    auto p = prefix_of(f);
    p.version = protocol_version + 1;
    set_prefix(f, p);
    try {
        frame_view v(f.data(), f.size());
        FAIL("accepted a frame of another version");
    } catch (const version_error& e) {
        CHECK(e.theirs == protocol_version + 1);
        CHECK_THAT(e.what(), Catch::Contains("version"));
    }
}

TEST_CASE("truncated frames are refused at every length", "[frames]") {
    const auto f = good_frame();
    for (std::size_t n = 0; n < f.size(); ++n) {
        // A truncated frame is acceptable only as a view of its leading part (the engine's blob);
        // then the buffers it lacks must say so.
        try {
            frame_view v(f.data(), n);
            for (std::uint32_t i = 0; i < v.nbufs(); ++i) CHECK_FALSE(v.has_buf(i));
        } catch (const frame_error&) {
        }
    }
}

TEST_CASE("inconsistent lengths are refused", "[frames]") {
    auto f = good_frame();
    auto p = prefix_of(f);
    SECTION("body longer than the buffers") {
        p.body_len += 5;
        set_prefix(f, p);
        f.resize(f.size() + 5);
        CHECK_THROWS_AS(frame_view(f.data(), f.size()), frame_error);
    }
    SECTION("a buffer length past the end") {
        std::uint64_t huge = ~0ull;
        std::memcpy(f.data() + prefix_size, &huge, 8);
        CHECK_THROWS_WITH(frame_view(f.data(), f.size()), Catch::Contains("past the end"));
    }
    SECTION("bytes beyond the declared length") {
        f.push_back('x');
        CHECK_THROWS_WITH(frame_view(f.data(), f.size()), Catch::Contains("beyond"));
    }
    SECTION("body shorter than its table and meta") {
        p.body_len = 3;
        set_prefix(f, p);
        CHECK_THROWS_AS(frame_view(f.data(), f.size()), frame_error);
    }
}

TEST_CASE("oversize frames are refused before allocation", "[frames]") {
    frame_prefix p;
    p.type = 11;
    p.body_len = std::uint64_t{1} << 62;
    CHECK_THROWS_WITH(check_prefix(p, 1 << 20), Catch::Contains("exceeds the maximum"));
    p.body_len = 10;
    p.nbufs = max_nbufs + 1;
    CHECK_THROWS_AS(check_prefix(p), frame_error);
    p.nbufs = 0;
    p.meta_len = max_meta_len + 1;
    CHECK_THROWS_AS(check_prefix(p), frame_error);
}

TEST_CASE("malformed meta is a frame_error, not a crash", "[frames]") {
    std::mt19937 rng(12345);
    for (int round = 0; round < 2000; ++round) {
        std::string meta(rng() % 64, '\0');
        for (auto& c : meta) c = static_cast<char>(rng());
        const std::vector<std::uint64_t> none;
        auto head = make_head(static_cast<std::uint16_t>(10 + rng() % 8), meta, none);
        frame_view v(head.data(), head.size());
        try {
            decode_route(v);
        } catch (const frame_error&) {
        }
    }
}

TEST_CASE("random bytes never crash the stream reader", "[frames]") {
    std::mt19937 rng(777);
    for (int round = 0; round < 300; ++round) {
        int sv[2];
        REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
        std::vector<char> junk(rng() % 200);
        for (auto& c : junk) c = static_cast<char>(rng());
        if (round % 3 == 0 && junk.size() >= 4) std::memcpy(junk.data(), &frame_magic, 4);  // get past the magic
        REQUIRE(::write(sv[1], junk.data(), junk.size()) == static_cast<ssize_t>(junk.size()));
        ::close(sv[1]);
        frame_reader r(1 << 20);
        received_frame f;
        try {
            while (r.read(sv[0], &f) == frame_reader::status::frame) {}
        } catch (const std::exception&) {
        }
        ::close(sv[0]);
    }
}

TEST_CASE("the stream reader reassembles frames split at every byte", "[frames]") {
    const auto f = good_frame();
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    frame_reader r;
    received_frame out;
    int frames = 0;
    for (char c : f) {
        REQUIRE(::write(sv[1], &c, 1) == 1);
        if (r.read(sv[0], &out) == frame_reader::status::frame) ++frames;
    }
    CHECK(frames == 1);
    CHECK(decode<pull_request>(out.view()).names == std::vector<std::string>{"a"});
    ::close(sv[1]);
    CHECK(r.read(sv[0], &out) == frame_reader::status::closed);
    ::close(sv[0]);
}

TEST_CASE("EOF in the middle of a frame is an error", "[frames]") {
    const auto f = good_frame();
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    REQUIRE(::write(sv[1], f.data(), f.size() - 3) == static_cast<ssize_t>(f.size() - 3));
    ::close(sv[1]);
    frame_reader r;
    received_frame out;
    // The first read takes what is there; the next one meets the EOF.
    auto read_twice = [&] {
        if (r.read(sv[0], &out) == frame_reader::status::again) r.read(sv[0], &out);
    };
    CHECK_THROWS_WITH(read_twice(), Catch::Contains("middle of a frame"));
    ::close(sv[0]);
}
