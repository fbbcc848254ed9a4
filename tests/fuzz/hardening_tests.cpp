// Issue 11's pure pieces, with Catch2: bounded decoding of every message (absurd counts at every
// position of its encoding, the largest allocation measured), the stream reader skipping what it
// cannot take and keeping the request id, the login verdict, log limiting and login throttling,
// segment ownership, connection-file ownership checks, a pool that forgets removed segments.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <new>
#include <string>

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "guard.hpp"
#include "login.hpp"
#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/connection_file.hpp"
#include "pcluster/protocol/shm.hpp"
#include "pcluster/protocol/stream.hpp"
#include "fuzz_support.hpp"

using namespace pcluster::protocol;
using pcluster::fuzz::filled;
using namespace pcluster::bridge;
namespace fs = std::filesystem;

// The largest single allocation while `watching`: what a decoder asked for.
namespace {
std::atomic<bool> watching{false};
std::atomic<std::size_t> largest{0};
}  // namespace

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PCLUSTER_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define PCLUSTER_SANITIZED 1
#endif
#endif
#ifndef PCLUSTER_SANITIZED
void* operator new(std::size_t n) {
    if (watching.load(std::memory_order_relaxed)) {
        std::size_t cur = largest.load(std::memory_order_relaxed);
        while (n > cur && !largest.compare_exchange_weak(cur, n)) {
        }
    }
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#define PCLUSTER_MEASURES_ALLOCATIONS 1
#endif

namespace {

// Sizes a decoder must refuse before allocating them.
constexpr std::uint64_t absurd[] = {1'000'000'000ull, std::uint64_t{1} << 40, std::uint64_t{1} << 62, ~std::uint64_t{0}};
}  // namespace

TEST_CASE("every message: absurd counts at every position fail without a large allocation", "[hardening][decode]") {
    std::size_t refused = 0;
    for_each_message([&](auto tag) {
        using T = decltype(tag);
        const std::string meta = encode_meta(filled<T>());
        for (std::size_t at = 1; at + 8 <= meta.size(); ++at) {
            for (std::uint64_t claim : absurd) {
                std::string bad = meta;
                std::memcpy(bad.data() + at, &claim, 8);
                largest = 0;
                watching = true;
                bool threw = false;
                try {
                    (void)decode_meta<T>(bad, "test");
                } catch (const frame_error&) {
                    threw = true;
                }
                watching = false;
                refused += threw;
#ifdef PCLUSTER_MEASURES_ALLOCATIONS
                // Strings, vectors and messages: never more than a few times the bytes present.
                INFO(type_name(static_cast<std::uint16_t>(type_of<T>::value)) << " claim " << claim << " at " << at);
                CHECK(largest.load() <= 8 * bad.size() + 256);
#endif
            }
        }
    });
    CHECK(refused > 100);
}

TEST_CASE("a claim of a billion engine ids in 20 bytes is refused at once", "[hardening][decode]") {
    std::string meta(1, '\1');
    const std::uint64_t id = request_id(1, 1), n = 1'000'000'000;
    meta.append(reinterpret_cast<const char*>(&id), 8);
    meta.append(reinterpret_cast<const char*>(&n), 8);
    meta.append(26, '\0');
    CHECK_THROWS_WITH(decode_meta<execute_request>(meta, "execute_request"),
                      Catch::Contains("claims 1000000000 items of at least 4 bytes"));
    // And a bool that is neither 0 nor 1 is malformed, not undefined behaviour.
    std::string b = encode_meta(job_ended{"x"});
    CHECK_NOTHROW(decode_meta<job_ended>(b));
    std::string sf = encode_meta(shm_frame{1, "/dev/shm/pcluster-a-b", 5, true});
    sf.back() = 7;
    CHECK_THROWS_WITH(decode_meta<shm_frame>(sf), Catch::Contains("bool of value 7"));
}

TEST_CASE("the id (and engine) of every request and reply is read without decoding", "[hardening][decode]") {
    for_each_message([&](auto tag) {
        using T = decltype(tag);
        const auto type = static_cast<std::uint16_t>(type_of<T>::value);
        const T m = filled<T>();
        const std::string meta = encode_meta(m);
        if constexpr (detail::leads_with_id<T>()) {
            REQUIRE(peek_id(type, meta) == request_id(1, 7));
        } else {
            CHECK_FALSE(peek_id(type, meta));
        }
    });
    engine_reply r;
    r.id = 99;
    r.engine = 3;
    CHECK(peek_engine(static_cast<std::uint16_t>(message_type::engine_reply), encode_meta(r)) == 3);
    CHECK_FALSE(peek_id(static_cast<std::uint16_t>(message_type::engine_reply), std::string("\1abc")));
}

namespace {
std::string flat(const outgoing_frame& f) {
    const auto v = f.flatten();
    return std::string(v.begin(), v.end());
}
}  // namespace

TEST_CASE("the stream reader skips a frame it cannot take and keeps its request id", "[hardening][stream]") {
    engine_reply big;
    big.id = request_id(4, 2);
    big.engine = 1;
    big.stdout_text = std::string(3000, 'o');
    const std::string good1 = flat(encode(job_ended{"before"})), over = flat(encode(big)),
                      good2 = flat(encode(job_ended{"after"}));
    const std::string stream = good1 + over + good2;
    for (std::size_t chunk : {std::size_t{1}, std::size_t{7}, stream.size()}) {
        frame_reader r(2048);  // `over` breaks this limit
        r.set_skip_bad(true);
        std::vector<std::string> seen;
        std::span<const char> rest(stream);
        while (!rest.empty()) {
            std::span<const char> in = rest.first(std::min(chunk, rest.size()));
            const std::size_t n = in.size();
            for (;;) {
                received_frame f;
                const auto st = r.feed(in, &f);
                if (st == frame_reader::status::frame) seen.push_back(decode<job_ended>(f.view()).reason);
                else if (st == frame_reader::status::bad) {
                    seen.push_back("bad");
                    CHECK(r.last_bad().id == big.id);
                    CHECK(r.last_bad().engine == 1);
                    CHECK(r.last_bad().size == over.size());
                    CHECK_THAT(r.last_bad().error, Catch::Contains("exceeds the maximum"));
                } else break;
            }
            rest = rest.subspan(n - in.size());
            CHECK(r.held_bytes() <= 64 * 1024 + 2048);  // never the skipped frame itself
        }
        CHECK(seen == std::vector<std::string>{"before", "bad", "after"});
    }
    // Without skipping it is an error, as before.
    frame_reader strict(2048);
    std::span<const char> in(stream);
    received_frame f;
    CHECK(strict.feed(in, &f) == frame_reader::status::frame);
    CHECK_THROWS_AS(strict.feed(in, &f), frame_error);
}

TEST_CASE("the stream reader turns a frame whose table does not add up into one bad frame", "[hardening][stream]") {
    std::string payload = "0123456789";
    const std::string f1 = flat(encode(engine_reply{request_id(2, 5), 0}, {std::span<const char>(payload)}));
    std::string broken = f1;
    const std::uint64_t wrong = 3;  // buffer 0 claims 3 bytes; the frame holds 10
    std::memcpy(broken.data() + prefix_size, &wrong, 8);
    const std::string stream = broken + flat(encode(job_ended{"next"}));
    frame_reader r;
    r.set_skip_bad(true);
    std::span<const char> in(stream);
    received_frame f;
    REQUIRE(r.feed(in, &f) == frame_reader::status::bad);
    CHECK(r.last_bad().id == request_id(2, 5));
    REQUIRE(r.feed(in, &f) == frame_reader::status::frame);
    CHECK(decode<job_ended>(f.view()).reason == "next");
}

TEST_CASE("before login a reader holds a few KiB whatever the prefix claims", "[hardening][stream]") {
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    frame_prefix p;
    p.type = 2;
    p.meta_len = 100;
    p.body_len = std::uint64_t{6} << 30;
    REQUIRE(::write(sv[1], &p, sizeof p) == sizeof p);
    frame_reader r(login_max_frame);
    received_frame f;
    CHECK_THROWS_WITH(r.read(sv[0], &f), Catch::Contains("exceeds the maximum of 4096"));
    CHECK(r.held_bytes() <= 2 * login_max_frame);
    ::close(sv[0]);
    ::close(sv[1]);
}

TEST_CASE("login verdicts: the key, not the form, decides; the probe names the owner", "[hardening][login]") {
    const digest key = random_bytes32(), nonce = random_bytes32();
    auth_request req;
    req.mac = auth_mac(key, client_label, nonce);
    req.shm_probe = "/dev/shm/pcluster-c42xdeadbeef-0123456789ab";
    auto f = encode(req);
    auto v = judge_login(frame_view(f.head.data(), f.head.size()), key, nonce);
    CHECK(v.ok);
    CHECK(v.shm_owner == "c42xdeadbeef");
    req.mac[0] ^= 1;
    f = encode(req);
    v = judge_login(frame_view(f.head.data(), f.head.size()), key, nonce);
    CHECK_FALSE(v.ok);
    CHECK(v.why == "wrong key");
    f = encode(challenge{});
    v = judge_login(frame_view(f.head.data(), f.head.size()), key, nonce);
    CHECK_FALSE(v.ok);
    CHECK_THAT(v.why, Catch::Contains("not a login"));
    CHECK(shm_owner_of("/dev/shm/pcluster-c1x2-3") == "c1x2");
    CHECK(shm_owner_of("/dev/shm/pcluster-a-b-c") == "");
    CHECK(shm_owner_of("/dev/shm/pcluster--b") == "");
    CHECK(shm_owner_of("/dev/shm/other-a-b") == "");
    CHECK(shm_owner_of("/dev/shm/pcluster-a/../../etc-b") == "");
    CHECK(shm_path_of_owner("/dev/shm/pcluster-me-1", "me"));
    CHECK_FALSE(shm_path_of_owner("/dev/shm/pcluster-you-1", "me"));
    CHECK_FALSE(shm_path_of_owner("/dev/shm/pcluster-me-1", ""));
}

TEST_CASE("repeated log lines are counted, not printed", "[hardening][guard]") {
    log_limiter logs(3, std::chrono::seconds(10));
    const auto t0 = steady::now();
    int shown = 0;
    for (int i = 0; i < 1000; ++i) shown += logs.allow("failed login", t0);
    CHECK(shown == 3);
    CHECK(logs.held_back() == 997);
    CHECK(logs.allow("other kind", t0));
    logs.tick(t0 + std::chrono::seconds(11));  // one line: "... and 997 more like this"
    CHECK(logs.held_back() == 0);
    CHECK(logs.allow("failed login", t0 + std::chrono::seconds(11)));
}

TEST_CASE("failed logins from one address wait longer each time, up to a bound", "[hardening][guard]") {
    using namespace std::chrono;
    login_throttle t(milliseconds(100), seconds(5), seconds(60));
    const auto t0 = steady::now();
    CHECK(t.failed("10.0.0.1", t0) == milliseconds(100));
    CHECK(t.failed("10.0.0.1", t0) == milliseconds(200));
    CHECK(t.failed("10.0.0.1", t0) == milliseconds(400));
    for (int i = 0; i < 20; ++i) t.failed("10.0.0.1", t0);
    CHECK(t.failed("10.0.0.1", t0) == seconds(5));
    CHECK(t.failed("10.0.0.2", t0) == milliseconds(100));  // another address is not slowed
    CHECK(t.failed("10.0.0.1", t0 + seconds(61)) == milliseconds(100));  // forgotten after a quiet minute
}

TEST_CASE("connection files and directories: the user's own, not writable by others", "[hardening][connection_file]") {
    const fs::path d = fs::temp_directory_path() / ("pcluster-hardening-" + std::to_string(getpid()));
    fs::create_directories(d);
    struct cleanup {
        fs::path p;
        ~cleanup() { fs::remove_all(p); }
    } c{d};
    ::chmod(d.c_str(), 0700);
    CHECK_NOTHROW(check_private_dir(d.string()));
    ::chmod(d.c_str(), 0777);
    CHECK_THROWS_WITH(check_private_dir(d.string()), Catch::Contains("is writable by others (mode 0777)"));
    ::chmod(d.c_str(), 0770);
    CHECK_THROWS_WITH(check_private_dir(d.string()), Catch::Contains("writable by its group"));
    ::chmod(d.c_str(), 01777);
    CHECK_NOTHROW(check_private_dir(d.string()));  // sticky, like /tmp
    ::chmod(d.c_str(), 0700);
    const fs::path f = d / "c.json";
    std::ofstream(f) << "{}";
    ::chmod(f.c_str(), 0600);
    CHECK_NOTHROW(check_private_file(f.string()));
    ::chmod(f.c_str(), 0622);
    CHECK_THROWS_WITH(check_private_file(f.string()), Catch::Contains("c.json is writable by others"));
    ::chmod(f.c_str(), 0600);
    CHECK_THROWS_WITH(check_private_file((d / "none.json").string()), Catch::Contains("cannot use connection file"));
    if (::geteuid() == 0) {
        REQUIRE(::chown(f.c_str(), 65534, 65534) == 0);
        CHECK_THROWS_WITH(check_private_file(f.string()), Catch::Contains("is owned by uid 65534, not by you (uid 0)"));
        REQUIRE(::chown(d.c_str(), 65534, 65534) == 0);
        CHECK_THROWS_WITH(check_private_dir(d.string()), Catch::Contains("is owned by uid 65534"));
    }
}

TEST_CASE("a pool never hands out a kept segment someone removed", "[hardening][shm]") {
    shm_pool pool("t" + std::to_string(getpid()) + "x" + to_hex(random_bytes32()).substr(0, 6), {4, std::uint64_t{1} << 30});
    auto s = pool.get(1 << 20);
    const std::string first = s.path;
    CHECK(shm_intact(s));
    pool.put(std::move(s));
    auto again = pool.get(1 << 20);
    CHECK(again.path == first);  // reused, warm
    ::unlink(again.path.c_str());
    CHECK_FALSE(shm_intact(again));
    pool.put(std::move(again));
    auto fresh = pool.get(1 << 20);
    CHECK(fresh.path != first);
    CHECK(shm_intact(fresh));
    pool.put(std::move(fresh));
    pool.clear();
}
