// Settings through one validated accessor (protocol/config.hpp) and the connection file's one
// definition (protocol/connection_file.hpp).
#include <catch2/catch.hpp>

#include <cstdlib>

#include "pcluster/protocol/config.hpp"
#include "pcluster/protocol/connection_file.hpp"
#include "pcluster/protocol/frame.hpp"

using namespace pcluster;

namespace {
struct env_var {
    std::string name;
    env_var(std::string n, const char* v) : name(std::move(n)) { setenv(name.c_str(), v, 1); }
    ~env_var() { unsetenv(name.c_str()); }
};
}  // namespace

TEST_CASE("settings: defaults, values from the environment, bad values named", "[config]") {
    CHECK(config::number(config::knob::stream_every) == Approx(0.1));
    {
        env_var e("PCLUSTER_STREAM_EVERY", "0.25");
        CHECK(config::number(config::knob::stream_every) == Approx(0.25));
    }
    for (const char* bad : {"abc", "0", "-1", "1e9", "nan", "0.1s"}) {
        env_var e("PCLUSTER_STREAM_EVERY", bad);
        INFO(bad);
        CHECK_THROWS_WITH(config::number(config::knob::stream_every),
                          Catch::Contains("PCLUSTER_STREAM_EVERY=") && Catch::Contains("a number from 0.001 to 3600"));
        CHECK_THROWS_AS(config::check_config(), config::config_error);
    }
    {
        env_var e("PCLUSTER_TASK_PREFETCH", "2.5");
        CHECK_THROWS_WITH(config::integer(config::knob::task_prefetch), Catch::Contains("a whole number from 0 to 32"));
    }
    {
        env_var e("PCLUSTER_NONINTERACTIVE", "yes");
        CHECK(config::flag(config::knob::noninteractive));
    }
    {
        env_var e("PCLUSTER_NONINTERACTIVE", "maybe");
        CHECK_THROWS_WITH(config::flag(config::knob::noninteractive), Catch::Contains("0 or 1"));
    }
    CHECK_NOTHROW(config::check_config());
    CHECK_THAT(config::describe(), Catch::Contains("PCLUSTER_SPIN_NS") && Catch::Contains("PCLUSTER_CONNECTION_FILE"));
}

TEST_CASE("connection file: one definition, written and read back, bad files named", "[config]") {
    protocol::connection_info c;
    c.version = protocol::protocol_version;
    c.ip = "10.1.2.3";
    c.addresses = {"10.1.2.3", "127.0.0.1"};
    c.listen = "0.0.0.0";
    c.port = 4242;
    c.key = std::string(64, 'a');
    c.job_id = "vm-1";
    c.engines = 4;
    const auto back = protocol::connection_info_from_json(protocol::to_json(c));
    CHECK(back == c);

    CHECK_THROWS_WITH(protocol::connection_info_from_json("{"), Catch::Contains("not JSON"));
    CHECK_THROWS_WITH(protocol::connection_info_from_json(R"({"version": 1, "ip": "x"})"),
                      Catch::Contains("protocol version 1") && Catch::Contains("same pcluster build"));
    auto text = protocol::to_json(c);
    CHECK_THROWS_WITH(protocol::connection_info_from_json(text.replace(text.find("\"port\": 4242"), 12, "\"port\": \"x\"")),
                      Catch::Contains("'port' has the wrong type"));
    c.key = "zz";
    CHECK_THROWS_WITH(protocol::connection_info_from_json(protocol::to_json(c)), Catch::Contains("64 hex digits"));
}
