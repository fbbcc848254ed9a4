#include "addresses.hpp"

#include "pcluster/protocol/host.hpp"

#include <cstdlib>
#include <cstring>
#include <optional>

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace pcluster::bridge {

namespace {
bool is_wildcard(const std::string& ip) { return ip == "0.0.0.0" || ip == "::"; }

std::string env(const char* name) {
    const char* v = std::getenv(name);
    return v ? v : "";
}


// The source address this host would use to reach `host`: a UDP connect() only looks up the
// route, it sends nothing.
std::optional<std::string> source_address_towards(const std::string& host) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_DGRAM;
    if (getaddrinfo(host.c_str(), "9", &hints, &res) != 0 || !res) return std::nullopt;
    std::optional<std::string> out;
    const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
        sockaddr_in me{};
        socklen_t len = sizeof me;
        char buf[INET_ADDRSTRLEN];
        if (getsockname(fd, reinterpret_cast<sockaddr*>(&me), &len) == 0 &&
            inet_ntop(AF_INET, &me.sin_addr, buf, sizeof buf))
            out = buf;
    }
    if (fd >= 0) ::close(fd);
    freeaddrinfo(res);
    return out;
}
}  // namespace

std::vector<std::string> interface_addresses() {
    std::vector<std::string> out, loop;
    ifaddrs* ifs = nullptr;
    if (getifaddrs(&ifs) != 0) return {"127.0.0.1"};
    for (ifaddrs* i = ifs; i; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP)) continue;
        char buf[INET_ADDRSTRLEN];
        if (!inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof buf)) continue;
        ((i->ifa_flags & IFF_LOOPBACK) ? loop : out).push_back(buf);
    }
    freeifaddrs(ifs);
    out.insert(out.end(), loop.begin(), loop.end());
    if (out.empty()) out.push_back("127.0.0.1");
    return out;
}

listen_plan plan_listen(const std::string& requested) {
    listen_plan p;
    if (requested.empty()) {
        const std::string submit = env("SLURM_SUBMIT_HOST");
        if (!env("SLURM_JOB_ID").empty() && !submit.empty() && submit != protocol::host_name()) {
            // A submit host that resolves to loopback here (Debian's 127.0.1.1 line for the
            // machine's own name in /etc/hosts, copied to nodes) says nothing about the route to
            // it: listening on loopback would shut the login node out, so all interfaces instead.
            const auto a = source_address_towards(submit);
            if (a && a->rfind("127.", 0) != 0) {
                p.listen = p.connect = *a;
                p.addresses = {*a};
                p.why = "a SLURM job submitted from " + submit + ": the address this node reaches it from";
                return p;
            }
            p.listen = "0.0.0.0";
            p.why = "a SLURM job submitted from " + submit +
                    (a ? ", which resolves to loopback here: all interfaces" : ", which does not resolve here: all interfaces");
        } else {
            p.listen = p.connect = "127.0.0.1";
            p.addresses = {p.connect};
            p.why = "loopback (the default; --ip ADDR or --ip 0.0.0.0 for clients on other hosts)";
            return p;
        }
    } else {
        p.listen = requested;
        p.why = "--ip " + requested;
    }
    if (is_wildcard(p.listen)) {
        p.addresses = interface_addresses();
        p.connect = p.addresses.front();
    } else {
        p.connect = p.listen;
        p.addresses = {p.connect};
    }
    return p;
}

}  // namespace pcluster::bridge
