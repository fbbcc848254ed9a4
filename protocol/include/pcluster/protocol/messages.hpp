// Every pcluster message, defined once. The bridge, the controller, the engines and the Python
// client (through the pcluster._core module) all serialize these very structs; docs/protocol.md
// describes them. Add a field: append it, bump that struct's CEREAL_CLASS_VERSION and read it only
// when `version` says it is there.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <cereal/cereal.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/common.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

namespace pcluster::protocol {

enum class message_type : std::uint16_t {
    // handshake, client <-> bridge
    challenge = 1,
    auth_request = 2,
    auth_reply = 3,
    // requests, client -> bridge -> controller -> engines
    execute_request = 10,
    push_request = 11,
    pull_request = 12,
    apply_request = 13,
    scatter_request = 14,
    gather_request = 15,
    map_request = 16,
    shutdown_request = 17,
    task_request = 18,
    control_request = 19,
    // replies and notices, back towards the client
    engine_reply = 40,
    job_ended = 41,
    output = 42,
    control_reply = 43,
    // a large frame handed over in shared memory (same host only)
    shm_frame = 20,
    shm_return = 21,
    // bridge <-> controller only
    job_info = 60,
    bridge_ready = 61,
};

// Where a request goes and how its buffers are laid out. Every request starts with one.
//   id: chosen by the client; the high 32 bits are the client number the bridge assigned at
//       login (the bridge refuses any other), the low 32 bits a per-client counter.
//   targets: engine ids, in the order the parts are given; empty means every engine.
//   shared_bufs: the first `shared_bufs` frame buffers go to every target.
//   part_bufs: empty, or one count per target: the next part_bufs[k] buffers go to targets[k] only.
//   flags: route_flags bits.
enum route_flags : std::uint32_t {
    // The client shares this host's /dev/shm: large replies may come as shm_frame.
    reply_by_shm = 1,
    // The engine captures what the request prints (sys.stdout/sys.stderr) and sends it back:
    // with the reply, and as `output` messages while a long request runs. Without it, prints go
    // to the engine's own stdout (mpirun's terminal).
    capture_output = 2,
};
struct route {
    bool operator==(const route&) const = default;
    std::uint64_t id = 0;
    std::vector<std::int32_t> targets;
    std::uint32_t shared_bufs = 0;
    std::vector<std::uint32_t> part_bufs;
    std::uint32_t flags = 0;

    template <class Archive>
    void serialize(Archive& ar, std::uint32_t /*version*/) {
        ar(id, targets, shared_bufs, part_bufs, flags);
    }
};

struct challenge {
    bool operator==(const challenge&) const = default;
    std::array<std::uint8_t, 32> nonce{};
    std::string job_id;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(nonce, job_id); }
};

// mac = HMAC-SHA256(key, "pcluster-client" || challenge.nonce); client_nonce lets the client check
// the bridge holds the key too. shm_probe (may be empty) names a /dev/shm file the client made
// holding shm_token: if the bridge, once the MAC is right, can read it there, the two share
// /dev/shm (same host, same user, no container or tunnel in between) and large frames may use it.
struct auth_request {
    bool operator==(const auth_request&) const = default;
    std::array<std::uint8_t, 32> mac{};
    std::array<std::uint8_t, 32> client_nonce{};
    std::string shm_probe;
    std::array<std::uint8_t, 32> shm_token{};
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(mac, client_nonce, shm_probe, shm_token); }
};

struct engine_info {
    bool operator==(const engine_info&) const = default;
    std::int32_t id = 0;
    std::string host;
    std::int64_t pid = 0;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(id, host, pid); }
};

// mac = HMAC-SHA256(key, "pcluster-bridge" || auth_request.client_nonce) when ok.
struct auth_reply {
    bool operator==(const auth_reply&) const = default;
    bool ok = false;
    std::string message;
    std::uint32_t client_no = 0;
    std::array<std::uint8_t, 32> mac{};
    std::vector<engine_info> engines;
    bool shm_ok = false;  // the client's shm_probe was readable here
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(ok, message, client_no, mac, engines, shm_ok); }
};

// Runs `code` in each target's namespace. Unless `silent`, a final expression statement's value
// comes back as the reply's execute_result (its repr), as IPython shows Out[...].
struct execute_request {
    bool operator==(const execute_request&) const = default;
    route r;
    std::string code;
    bool silent = true;  // version 2
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t version) {
        ar(r, code);
        if (version >= 2) ar(silent);
    }
};

// Shared buffers: one pickled dict (stream + out-of-band buffers) merged into each namespace.
struct push_request {
    bool operator==(const push_request&) const = default;
    route r;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(r); }
};

// Each target replies with one pickle: the value of names[0] if single, else a list of values.
struct pull_request {
    bool operator==(const pull_request&) const = default;
    route r;
    std::vector<std::string> names;
    bool single = true;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(r, names, single); }
};

// Shared buffers: cloudpickled (f, args, kwargs). Each target replies with pickled f(*args, **kw).
struct apply_request {
    bool operator==(const apply_request&) const = default;
    route r;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(r); }
};

// Parts: target k's pickled slice of the sequence, bound to `key` in its namespace.
struct scatter_request {
    bool operator==(const scatter_request&) const = default;
    route r;
    std::string key;
    bool flatten = false;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(r, key, flatten); }
};

// Each target replies with pickled namespace[key].
struct gather_request {
    bool operator==(const gather_request&) const = default;
    route r;
    std::string key;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(r, key); }
};

// Shared buffers: cloudpickled f. Parts: target k's pickled list of argument tuples. Each target
// replies with the pickled list [f(*t) for t in part].
struct map_request {
    bool operator==(const map_request&) const = default;
    route r;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(r); }
};

// Engines leave their loop after replying; the controller then ends the job.
struct shutdown_request {
    bool operator==(const shutdown_request&) const = default;
    route r;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(r); }
};

// A task for the load-balanced farm: the controller's scheduler picks the engine (among
// r.targets, empty: any) when the task's dependencies are done; the engine replies with one
// engine_reply, with the task's id. Shared buffers: pickled (fbytes, args, kwargs) for
// task_kind::apply; for task_kind::map_chunk (fbytes, items, 1) - a slice of one sequence, f(x)
// per item - or (fbytes, [argument tuples], None); fbytes being the cloudpickle of the function.
// part_bufs must be empty.
//   after:   ids of tasks that must have finished first (successfully unless after_failure_ok);
//   follow:  ids of tasks that must have finished successfully; runs on the engine they ran on;
//   retries: how many more times a task whose engine raised is tried, on other engines;
//   timeout: seconds it may wait for its dependencies (<= 0: no limit), then fails TaskTimeout.
enum class task_kind : std::uint8_t { apply = 0, map_chunk = 1 };
struct task_request {
    bool operator==(const task_request&) const = default;
    route r;
    task_kind kind = task_kind::apply;
    std::vector<std::uint64_t> after;
    std::vector<std::uint64_t> follow;
    std::int32_t retries = 0;
    double timeout = 0;
    bool after_failure_ok = false;
    bool return_exceptions = false;  // map_chunk: an item that raises comes back as its error
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) {
        ar(r, kind, after, follow, retries, timeout, after_failure_ok, return_exceptions);
    }
};

// Requests the controller answers itself, with one control_reply; never reach engines.
//   abort:        drop the tasks `ids` (the caller's own) that have not been sent to an engine;
//                 each then fails with TaskAborted; running ones are named in `refused`.
//   queue_status: per engine tasks sent and not answered, and done; tasks not yet sent.
//   forget_client: the bridge says client (r.id >> 32) left: its queued tasks are dropped.
enum class control_action : std::uint8_t { abort = 0, queue_status = 1, forget_client = 2 };
struct control_request {
    bool operator==(const control_request&) const = default;
    route r;
    control_action action = control_action::queue_status;
    std::vector<std::uint64_t> ids;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(r, action, ids); }
};

struct engine_queue {
    bool operator==(const engine_queue&) const = default;
    std::int32_t engine = 0;
    std::int32_t assigned = 0;  // sent, not yet answered (running or waiting on the engine)
    std::uint64_t done = 0;     // answered
    bool alive = true;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(engine, assigned, done, alive); }
};

struct control_reply {
    bool operator==(const control_reply&) const = default;
    std::uint64_t id = 0;
    bool ok = true;
    std::string message;
    std::vector<std::uint64_t> aborted;
    std::vector<std::string> refused;  // "task <id>: <reason>"
    std::vector<engine_queue> engines;
    std::uint64_t unassigned = 0;  // accepted, not yet sent (waiting ones included)
    std::uint64_t waiting = 0;     // of those, waiting for dependencies
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(id, ok, message, aborted, refused, engines, unassigned, waiting); }
};

enum class reply_status : std::uint8_t { ok = 0, error = 1 };

// One per target engine per request. engine == -1: the controller or bridge refused the whole
// request (bad targets, malformed layout); it is then the only reply for that id.
// Buffers: the pickled result (stream + out-of-band buffers), none on error.
struct engine_reply {
    bool operator==(const engine_reply&) const = default;
    std::uint64_t id = 0;
    std::int32_t engine = -1;
    reply_status status = reply_status::ok;
    std::string ename;
    std::string evalue;
    std::vector<std::string> traceback;
    double started = 0;    // engine wall clock, seconds since the epoch
    double completed = 0;
    // Version 2: what the request printed and had not yet streamed as `output` messages (with
    // route_flags::capture_output), and an execute_request's final expression (repr), if any.
    std::string stdout_text;
    std::string stderr_text;
    std::string execute_result;
    bool has_execute_result = false;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t version) {
        ar(id, engine, status, ename, evalue, traceback, started, completed);
        if (version >= 2) ar(stdout_text, stderr_text, execute_result, has_execute_result);
    }
};

// Engine -> controller -> bridge -> client, while request `id` runs on `engine` for longer than
// the streaming delay: what it printed since the last one. Always before that engine's
// engine_reply for the request; the reply carries whatever was not streamed.
struct output {
    bool operator==(const output&) const = default;
    std::uint64_t id = 0;
    std::int32_t engine = -1;
    std::string stdout_text;
    std::string stderr_text;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(id, engine, stdout_text, stderr_text); }
};

// The bridge tells every client before it closes: the job is over.
struct job_ended {
    bool operator==(const job_ended&) const = default;
    std::string reason;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(reason); }
};

// Controller -> bridge at start-up.
struct job_info {
    bool operator==(const job_info&) const = default;
    std::string job_id;
    std::vector<engine_info> engines;
    std::string controller_host;
    std::int64_t controller_pid = 0;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) {
        ar(job_id, engines, controller_host, controller_pid);
    }
};

// Bridge -> controller once it listens and the connection file is written.
struct bridge_ready {
    bool operator==(const bridge_ready&) const = default;
    std::string address;
    std::uint16_t port = 0;
    std::string connection_file;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(address, port, connection_file); }
};

// A frame too large to be worth copying through sockets, left in the first `size` bytes of a
// shared-memory file at `path` (/dev/shm/pcluster-*, mode 0600) by whoever made it. The receiver
// maps it; unless `keep`, it also unlinks it. With `keep` the sender reuses the file once the
// request's replies are in (a client's segment pool: fresh pages cost more than the copy).
// `id` is the request id, so errors and routing need not open the file.
struct shm_frame {
    bool operator==(const shm_frame&) const = default;
    std::uint64_t id = 0;
    std::string path;
    std::uint64_t size = 0;
    bool keep = false;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(id, path, size, keep); }
};

// Client -> controller: reply segments (shm_frame with keep) the client no longer uses; the
// controller reuses them for later replies instead of faulting in fresh pages. The bridge sends
// one with reuse = false for a client that disconnects holding segments: that process may still
// map them, so the controller must forget them (unlink, unmap), never reuse them.
struct shm_return {
    bool operator==(const shm_return&) const = default;
    std::vector<std::string> paths;
    bool reuse = true;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t) { ar(paths, reuse); }
};

// Compile-time map from struct to its wire type.
template <class T> struct type_of;
#define PCLUSTER_MESSAGE(T)                                                             \
    template <> struct type_of<T> {                                                     \
        static constexpr message_type value = message_type::T;                          \
    };
PCLUSTER_MESSAGE(challenge)
PCLUSTER_MESSAGE(auth_request)
PCLUSTER_MESSAGE(auth_reply)
PCLUSTER_MESSAGE(execute_request)
PCLUSTER_MESSAGE(push_request)
PCLUSTER_MESSAGE(pull_request)
PCLUSTER_MESSAGE(apply_request)
PCLUSTER_MESSAGE(scatter_request)
PCLUSTER_MESSAGE(gather_request)
PCLUSTER_MESSAGE(map_request)
PCLUSTER_MESSAGE(shutdown_request)
PCLUSTER_MESSAGE(task_request)
PCLUSTER_MESSAGE(control_request)
PCLUSTER_MESSAGE(control_reply)
PCLUSTER_MESSAGE(engine_reply)
PCLUSTER_MESSAGE(job_ended)
PCLUSTER_MESSAGE(output)
PCLUSTER_MESSAGE(shm_frame)
PCLUSTER_MESSAGE(shm_return)
PCLUSTER_MESSAGE(job_info)
PCLUSTER_MESSAGE(bridge_ready)
#undef PCLUSTER_MESSAGE

const char* type_name(std::uint16_t type);
bool is_request(std::uint16_t type);

// Calls f(T{}) with the request struct type for `type`; returns false for non-request types.
template <class F>
bool visit_request_type(std::uint16_t type, F&& f) {
    switch (static_cast<message_type>(type)) {
    case message_type::execute_request: f(execute_request{}); return true;
    case message_type::push_request: f(push_request{}); return true;
    case message_type::pull_request: f(pull_request{}); return true;
    case message_type::apply_request: f(apply_request{}); return true;
    case message_type::scatter_request: f(scatter_request{}); return true;
    case message_type::gather_request: f(gather_request{}); return true;
    case message_type::map_request: f(map_request{}); return true;
    case message_type::shutdown_request: f(shutdown_request{}); return true;
    case message_type::task_request: f(task_request{}); return true;
    case message_type::control_request: f(control_request{}); return true;
    default: return false;
    }
}

}  // namespace pcluster::protocol

CEREAL_CLASS_VERSION(pcluster::protocol::route, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::challenge, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::auth_request, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::engine_info, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::auth_reply, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::execute_request, 2)
CEREAL_CLASS_VERSION(pcluster::protocol::push_request, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::pull_request, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::apply_request, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::scatter_request, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::gather_request, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::map_request, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::shutdown_request, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::task_request, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::control_request, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::engine_queue, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::control_reply, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::engine_reply, 2)
CEREAL_CLASS_VERSION(pcluster::protocol::output, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::job_ended, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::shm_frame, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::shm_return, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::job_info, 1)
CEREAL_CLASS_VERSION(pcluster::protocol::bridge_ready, 1)
