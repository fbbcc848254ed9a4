#include "pcluster/protocol/config.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>

namespace pcluster::config {

namespace {
std::string range_of(const knob_info& i) {
    char buf[128];
    switch (i.type) {
    case knob_type::integer: std::snprintf(buf, sizeof buf, "a whole number from %.0f to %.0f", i.min, i.max); break;
    case knob_type::number: std::snprintf(buf, sizeof buf, "a number from %g to %g", i.min, i.max); break;
    case knob_type::flag: return "0 or 1";
    case knob_type::text: return "any text";
    }
    return buf;
}

// The raw value: the environment's when set and not empty, else the default.
std::string raw(const knob_info& i, bool* from_env) {
    const char* v = std::getenv(std::string(i.variable).c_str());
    *from_env = v && *v;
    return *from_env ? std::string(v) : std::string(i.default_value);
}

[[noreturn]] void bad(const knob_info& i, const std::string& v) {
    throw config_error(std::string(i.variable) + "=" + v + " is not valid: it takes " + range_of(i) + " (" +
                       std::string(i.doc) + "); unset it for the default " + std::string(i.default_value));
}

double parse_number(const knob_info& i) {
    bool env = false;
    const std::string v = raw(i, &env);
    if (i.type == knob_type::flag) {
        if (v == "1" || v == "true" || v == "yes" || v == "on") return 1;
        if (v == "0" || v == "false" || v == "no" || v == "off") return 0;
        bad(i, v);
    }
    char* end = nullptr;
    errno = 0;
    const double d = std::strtod(v.c_str(), &end);
    if (errno || end == v.c_str() || *end != '\0' || !std::isfinite(d) || d < i.min || d > i.max) bad(i, v);
    if (i.type == knob_type::integer && d != std::floor(d)) bad(i, v);
    return d;
}
}  // namespace

const knob_info& info(knob k) { return knobs[static_cast<std::size_t>(k)]; }

std::int64_t integer(knob k) { return static_cast<std::int64_t>(parse_number(info(k))); }
double number(knob k) { return parse_number(info(k)); }
bool flag(knob k) { return parse_number(info(k)) != 0; }
std::string text(knob k) {
    bool env = false;
    return raw(info(k), &env);
}

void check_config() {
    for (const auto& i : knobs)
        if (i.type != knob_type::text) parse_number(i);
}

std::string describe() {
    std::string out = "Settings (environment variables; pass them to every rank, e.g. mpirun -x NAME):\n";
    for (const auto& i : knobs) {
        out += "  " + std::string(i.variable) + " (" + range_of(i) + ", default " +
               (i.default_value.empty() ? std::string("none") : std::string(i.default_value)) + "; " +
               std::string(i.read_by) + "): " + std::string(i.doc) + "\n";
    }
    return out;
}

}  // namespace pcluster::config
