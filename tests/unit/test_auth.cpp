// Login against a real pcluster-bridge process: this test plays the controller on the other end
// of the socket pair, exactly as rank 0 does.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "connection.hpp"
#include "pcluster/protocol/auth.hpp"
#include "pcluster/protocol/codec.hpp"

using namespace pcluster::protocol;
using pcluster::client::auth_error;
using pcluster::client::connection;

TEST_CASE("MACs depend on key, label and nonce", "[auth]") {
    const digest k1 = random_bytes32(), k2 = random_bytes32(), n = random_bytes32();
    CHECK(k1 != k2);
    CHECK(macs_equal(auth_mac(k1, client_label, n), auth_mac(k1, client_label, n)));
    CHECK_FALSE(macs_equal(auth_mac(k1, client_label, n), auth_mac(k2, client_label, n)));
    CHECK_FALSE(macs_equal(auth_mac(k1, client_label, n), auth_mac(k1, bridge_label, n)));
    CHECK(from_hex(to_hex(k1)) == k1);
    CHECK_THROWS_AS(from_hex("abc"), std::invalid_argument);
    CHECK_THROWS_AS(from_hex(std::string(64, 'g')), std::invalid_argument);
}

namespace {
extern "C" char** environ;

struct bridge_process {
    pid_t pid = -1;
    int fd = -1;
    std::filesystem::path file;
    nlohmann::json info;

    bridge_process() {
        file = std::filesystem::temp_directory_path() / ("pcluster-test-" + std::to_string(getpid()) + ".json");
        int sv[2];
        REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
        fcntl(sv[1], F_SETFD, 0);  // only the bridge's end may survive exec
        std::vector<std::string> args = {PCLUSTER_BRIDGE_PATH, "--controller-fd", std::to_string(sv[1]),
                                         "--connection-file", file.string(), "--log-level", "error"};
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        REQUIRE(posix_spawn(&pid, PCLUSTER_BRIDGE_PATH, nullptr, nullptr, argv.data(), environ) == 0);
        ::close(sv[1]);
        fd = sv[0];
        job_info ji{"test-job", {{0, "here", 1}, {1, "here", 2}}, "here", getpid()};
        write_frame(fd, encode(ji));
        auto ready = decode<bridge_ready>(read_frame(fd, clock::now() + std::chrono::seconds(10)).view());
        REQUIRE(ready.connection_file == file.string());
        std::ifstream in(file);
        info = nlohmann::json::parse(in);
    }
    ~bridge_process() {
        if (fd >= 0) ::close(fd);  // the bridge ends when the controller's socket closes
        if (pid > 0) {  // never kill(-1): that signals every process we may signal
            int st = 0;
            for (int i = 0; i < 200 && waitpid(pid, &st, WNOHANG) != pid; ++i) usleep(10000);
            kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
        std::filesystem::remove(file);
    }
};
}  // namespace

TEST_CASE("the bridge admits the right key and refuses a wrong one", "[auth][bridge]") {
    bridge_process b;
    struct stat st {};
    REQUIRE(stat(b.file.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    const std::string key = b.info["key"];
    CHECK(key.size() == 64);
    const int port = b.info["port"];

    SECTION("right key") {
        connection c("127.0.0.1", port, key, 5);
        CHECK(c.client_no() >= 1);
        CHECK(c.engines().size() == 2);
        CHECK(c.job_id() == "test-job");
    }
    SECTION("wrong key") {
        std::string wrong = key;
        wrong[0] = wrong[0] == 'a' ? 'b' : 'a';
        CHECK_THROWS_AS(connection("127.0.0.1", port, wrong, 5), auth_error);
        // The bridge is unharmed: the right key still gets in afterwards.
        connection c("127.0.0.1", port, key, 5);
        CHECK(c.engines().size() == 2);
    }
}

TEST_CASE("the bridge removes its connection file when the controller goes", "[bridge]") {
    std::filesystem::path file;
    {
        bridge_process b;
        file = b.file;
        REQUIRE(std::filesystem::exists(file));
        ::close(b.fd);
        b.fd = -1;
        int st = 0;
        for (int i = 0; i < 300 && waitpid(b.pid, &st, WNOHANG) != b.pid; ++i) usleep(10000);
        CHECK(WIFEXITED(st));
        CHECK(WEXITSTATUS(st) == 0);
        b.pid = -1;
    }
    CHECK_FALSE(std::filesystem::exists(file));
}
