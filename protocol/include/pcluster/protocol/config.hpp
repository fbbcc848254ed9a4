// Every setting pcluster reads from the environment, defined once, read through one validated
// accessor. A bad value is an error at start-up naming the variable and what it accepts
// (check_config); docs/configuration.md and `pcluster --help` list this very table.
// Add a setting: one X(...) line, then read it with config::integer/number/flag/text.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace pcluster::config {

// X(id, variable, type, default, min, max, read by, meaning)
#define PCLUSTER_KNOBS(X)                                                                                        \
    X(spin_ns, "PCLUSTER_SPIN_NS", integer, "50000", 0, 1e10, "engines, controller",                              \
      "ns an idle MPI loop polls flat out after its last progress")                                               \
    X(yield_ns, "PCLUSTER_YIELD_NS", integer, "2000000", 0, 1e10, "engines, controller",                          \
      "ns it then polls with sched_yield() between polls")                                                       \
    X(busy_yield_ns, "PCLUSTER_BUSY_YIELD_NS", integer, "1000000000", 0, 1e11, "engines, controller",             \
      "the same while a transfer of its own is in flight (transfers advance only while polled)")                  \
    X(nap_ns, "PCLUSTER_NAP_NS", integer, "20000", 1000, 1e9, "engines, controller",                              \
      "ns of each short sleep that follows, until doze_ns")                                                      \
    X(doze_ns, "PCLUSTER_DOZE_NS", integer, "5000000", 0, 1e11, "engines, controller",                            \
      "ns after the last progress when sleeps start doubling")                                                   \
    X(max_sleep_ns, "PCLUSTER_MAX_SLEEP_NS", integer, "1000000", 1000, 1e9, "engines, controller",                \
      "the longest single sleep of an idle loop")                                                                \
    X(doorbell, "PCLUSTER_DOORBELL", flag, "1", 0, 1, "engines, controller",                                       \
      "1: idle engines on the controller's host sleep in the kernel until rung; 0: they poll with back-off")    \
    X(stream_after, "PCLUSTER_STREAM_AFTER", number, "0.5", 0, 86400, "engines",                                 \
      "s a request runs before what it prints is streamed to the client")                                        \
    X(stream_every, "PCLUSTER_STREAM_EVERY", number, "0.1", 0.001, 3600, "engines",                              \
      "s between two streamed output messages of a running request")                                             \
    X(task_prefetch, "PCLUSTER_TASK_PREFETCH", integer, "0", 0, 32, "controller",                                 \
      "load-balanced tasks an engine may hold at once; 0 adapts the window (2..32) to task length")             \
    X(malloc_default, "PCLUSTER_MALLOC_DEFAULT", flag, "0", 0, 1, "engines, controller",                          \
      "1 keeps glibc's malloc defaults (freed memory goes back to the OS sooner, large messages fault pages in)") \
    X(send_linger_us, "PCLUSTER_SEND_LINGER_US", integer, "500", 0, 1e6, "client",                                \
      "us the client's writer waits for more non-blocking requests to send in one write")                        \
    X(noninteractive, "PCLUSTER_NONINTERACTIVE", flag, "0", 0, 1, "client", "1 turns progress bars off")         \
    X(heartbeat_s, "PCLUSTER_HEARTBEAT_S", number, "1", 0.05, 60, "engines, controller",                          \
      "s between heartbeats of each engine to the controller and back")                                          \
    X(dead_after_s, "PCLUSTER_DEAD_AFTER_S", number, "4.5", 0.2, 3600, "engines, controller",                       \
      "s of silence after which a peer on another host counts as dead (same host: noticed at once)")            \
    X(interrupt_signal, "PCLUSTER_INTERRUPT_SIGNAL", integer, "2", 0, 8, "engines",                               \
      "which real-time signal (SIGRTMIN + n) interrupts an engine's running code")                              \
    X(max_reply_text, "PCLUSTER_MAX_REPLY_TEXT", integer, "1048576", 1024, 4194304, "engines",                    \
      "characters of an exception's message, its traceback or an execute result kept in a reply (the rest is cut, with a note)") \
    X(max_reply_rich, "PCLUSTER_MAX_REPLY_RICH", integer, "4194304", 1024, 6291456, "engines",                   \
      "bytes of rich output (display(), figures, publish_data) one reply carries; outputs past it become a note saying what was dropped") \
    X(client_window, "PCLUSTER_CLIENT_WINDOW", integer, "16", 1, 65536, "controller",                             \
      "requests of one client sent to one engine and not yet answered; more wait in the controller")             \
    X(client_shm_mib, "PCLUSTER_CLIENT_SHM_MIB", integer, "1024", 0, 1e7, "controller",                            \
      "MiB of reply segments in /dev/shm one local client may hold; beyond, its replies come through the bridge") \
    X(results_keep, "PCLUSTER_RESULTS_KEEP", integer, "10000", 0, 1e8, "controller",                             \
      "finished requests whose results the controller keeps for rc.get_result and a client that reconnects (oldest dropped first; 0: none)") \
    X(results_mib, "PCLUSTER_RESULTS_MIB", integer, "256", 0, 1e7, "controller",                                  \
      "MiB those kept results may take (oldest dropped first)")                                                  \
    X(results_item_kib, "PCLUSTER_RESULTS_ITEM_KIB", integer, "1024", 0, 1e9, "controller",                       \
      "KiB of one engine's reply beyond which it is not kept (its record says so); a large reply kept costs a copy") \
    X(shutdown_grace_s, "PCLUSTER_SHUTDOWN_GRACE_S", number, "10", 0, 86400, "controller",                        \
      "s running code may finish after a shutdown; then it is interrupted, and 5 s later the engines exit")   \
    X(ctrl_c_interrupts, "PCLUSTER_CTRL_C_INTERRUPTS", flag, "0", 0, 1, "client",                                 \
      "1: Ctrl-C in a blocking call interrupts the engines' code too; 0: it only stops waiting")               \
    X(connection_file, "PCLUSTER_CONNECTION_FILE", text, "", 0, 0, "pcluster, client",                             \
      "the connection file when none is given (default: see PCLUSTER_CONNECTION_DIR)")                          \
    X(ssh, "PCLUSTER_SSH", text, "", 0, 0, "client",                                                             \
      "the ssh command for tunnels (sshserver=), e.g. \"ssh -J gateway\" (default: ssh)")                        \
    X(slurm_template, "PCLUSTER_SLURM_TEMPLATE", text, "", 0, 0, "client",                                        \
      "the batch template pcluster submit fills (default: slurm/pcluster.sbatch of this installation)")         \
    X(exe, "PCLUSTER_EXE", text, "", 0, 0, "client",                                                             \
      "the pcluster program batch jobs start (default: the one that ran `pcluster submit`, else PATH's)")       \
    X(connection_dir, "PCLUSTER_CONNECTION_DIR", text, "", 0, 0, "pcluster, client",                               \
      "where connection files go (default ~/.pcluster): connection.json, or slurm-<job id>.json in a SLURM job")

enum class knob {
#define PCLUSTER_KNOB_ENUM_(id, var, type, dflt, lo, hi, who, doc) id,
    PCLUSTER_KNOBS(PCLUSTER_KNOB_ENUM_)
#undef PCLUSTER_KNOB_ENUM_
};

enum class knob_type { integer, number, flag, text };

struct knob_info {
    knob id;
    std::string_view variable;
    knob_type type;
    std::string_view default_value;
    double min, max;
    std::string_view read_by, doc;
};

inline constexpr knob_info knobs[] = {
#define PCLUSTER_KNOB_INFO_(id, var, type, dflt, lo, hi, who, doc) {knob::id, var, knob_type::type, dflt, lo, hi, who, doc},
    PCLUSTER_KNOBS(PCLUSTER_KNOB_INFO_)
#undef PCLUSTER_KNOB_INFO_
};

struct config_error : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

const knob_info& info(knob k);
// The setting's value (the environment's, else the default); config_error for a bad value,
// naming the variable and the accepted range.
std::int64_t integer(knob k);
double number(knob k);
bool flag(knob k);
std::string text(knob k);
// Reads every setting once: throws config_error for the first bad one.
void check_config();
// The table as text lines, for `pcluster --help`.
std::string describe();

}  // namespace pcluster::config
