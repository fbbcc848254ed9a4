// Every pcluster message, defined once. The bridge, the controller, the engines and the Python
// client (through pcluster._core) all serialize these very structs; docs/protocol.md describes
// them. Each struct lists its fields once (PCLUSTER_FIELDS): that list is the wire order, the
// Python attribute names and what the round-trip and golden tests check.
//
// Add a message: define its struct here, add one line to PCLUSTER_MESSAGES below, raise
// protocol_version (frame.hpp) and regenerate the golden file (tests/unit/golden/). A request
// also needs its handler on the engines (pcluster._kernel).
//
// Versioning policy: any change to any message's fields raises protocol_version; peers of
// different versions refuse each other at the frame prefix with a version_error naming both
// versions, before any field is decoded. The golden test fails when an encoding changes without it.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <cereal/cereal.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/common.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include "pcluster/protocol/errors.hpp"
#include "pcluster/protocol/fields.hpp"

namespace pcluster::protocol {

// X(struct name, wire type number, role). Roles: handshake (client <-> bridge before login),
// request (client -> engines or controller; starts with a route), reply (towards the client),
// internal (bridge <-> controller), transfer (frames handed over in shared memory).
#define PCLUSTER_MESSAGES(X)              \
    X(challenge, 1, handshake)            \
    X(auth_request, 2, handshake)         \
    X(auth_reply, 3, handshake)           \
    X(execute_request, 10, request)       \
    X(push_request, 11, request)          \
    X(pull_request, 12, request)          \
    X(apply_request, 13, request)         \
    X(scatter_request, 14, request)       \
    X(gather_request, 15, request)        \
    X(map_request, 16, request)           \
    X(shutdown_request, 17, request)      \
    X(task_request, 18, request)          \
    X(control_request, 19, request)      \
    X(shm_frame, 20, transfer)            \
    X(shm_return, 21, transfer)           \
    X(engine_reply, 40, reply)            \
    X(job_ended, 41, reply)               \
    X(output, 42, reply)                  \
    X(control_reply, 43, reply)           \
    X(engine_event, 44, reply)            \
    X(job_info, 60, internal)             \
    X(bridge_ready, 61, internal)

enum class message_type : std::uint16_t {
#define PCLUSTER_MESSAGE_ENUM_(name, number, role) name = number,
    PCLUSTER_MESSAGES(PCLUSTER_MESSAGE_ENUM_)
#undef PCLUSTER_MESSAGE_ENUM_
};

// Request ids: the high 32 bits are the client number the bridge assigned at login (it refuses
// any other), the low 32 bits the client's own counter.
constexpr std::uint64_t request_id(std::uint32_t client, std::uint32_t seq) {
    return (std::uint64_t{client} << 32) | seq;
}
constexpr std::uint32_t client_of(std::uint64_t id) { return static_cast<std::uint32_t>(id >> 32); }
constexpr std::uint32_t seq_of(std::uint64_t id) { return static_cast<std::uint32_t>(id); }

enum route_flags : std::uint32_t {
    // The client shares this host's /dev/shm: large replies may come as shm_frame.
    reply_by_shm = 1,
    // The engine captures what the request prints (sys.stdout/sys.stderr) and sends it back:
    // with the reply, and as `output` messages while a long request runs. Without it, prints go
    // to the engine's own stdout (mpirun's terminal).
    capture_output = 2,
};

// Where a request goes and how its buffers are laid out. Every request starts with one.
//   targets: engine ids, in the order the parts are given; empty means every engine (a task:
//            any engine) the client knew alive: every engine alive now, and those that died
//            after the client's `deaths_seen` deaths (the controller answers for them).
//   shared_bufs: the first `shared_bufs` frame buffers go to every target.
//   part_bufs: empty, or one count per target: the next part_bufs[k] buffers go to targets[k] only.
//   flags: route_flags bits.
struct route {
    std::uint64_t id = 0;
    std::vector<std::int32_t> targets;
    std::uint32_t shared_bufs = 0;
    std::vector<std::uint32_t> part_bufs;
    std::uint32_t flags = 0;
    std::uint32_t deaths_seen = 0;  // engine deaths the client knew of when it sent the request
    PCLUSTER_FIELDS(route, id, targets, shared_bufs, part_bufs, flags, deaths_seen)
};

struct challenge {
    std::array<std::uint8_t, 32> nonce{};
    std::string job_id;
    PCLUSTER_FIELDS(challenge, nonce, job_id)
};

// mac = HMAC-SHA256(key, "pcluster-client" || challenge.nonce); client_nonce lets the client check
// the bridge holds the key too. shm_probe (may be empty) names a /dev/shm file the client made
// holding shm_token: if the bridge, once the MAC is right, can read it there, the two share
// /dev/shm (same host, same user, no container or tunnel in between) and large frames may use it.
struct auth_request {
    std::array<std::uint8_t, 32> mac{};
    std::array<std::uint8_t, 32> client_nonce{};
    std::string shm_probe;
    std::array<std::uint8_t, 32> shm_token{};
    PCLUSTER_FIELDS(auth_request, mac, client_nonce, shm_probe, shm_token)
};

struct engine_info {
    std::int32_t id = 0;
    std::string host;
    std::int64_t pid = 0;
    bool alive = true;
    std::string death;  // once dead: how it died ("exit code 3", "killed by SIGSEGV", ...)
    PCLUSTER_FIELDS(engine_info, id, host, pid, alive, death)
};

// mac = HMAC-SHA256(key, "pcluster-bridge" || auth_request.client_nonce) when ok.
struct auth_reply {
    bool ok = false;
    std::string message;
    std::uint32_t client_no = 0;
    std::array<std::uint8_t, 32> mac{};
    std::vector<engine_info> engines;
    bool shm_ok = false;  // the client's shm_probe was readable here
    PCLUSTER_FIELDS(auth_reply, ok, message, client_no, mac, engines, shm_ok)
};

// Runs `code` in each target's namespace; code Python cannot compile may be IPython syntax
// (%magics, !cmd), run through the engine's IPython shell. Unless `silent`, a final expression
// statement's value (none when the cell ends in ';') comes back as the reply's execute_result
// (its repr), as IPython shows Out[...], and its rich mimebundle, if any, in rich_output.
struct execute_request {
    route r;
    std::string code;
    bool silent = true;
    PCLUSTER_FIELDS(execute_request, r, code, silent)
};

// Shared buffers: one pickled dict (stream + out-of-band buffers) merged into each namespace.
struct push_request {
    route r;
    PCLUSTER_FIELDS(push_request, r)
};

// Each target replies with one pickle: the value of names[0] if `scalar`, else a list of values.
struct pull_request {
    route r;
    std::vector<std::string> names;
    bool scalar = true;
    PCLUSTER_FIELDS(pull_request, r, names, scalar)
};

// Shared buffers: the call payload (serialize.pack_call). Each target replies with the pickled
// f(*args, **kwargs).
struct apply_request {
    route r;
    PCLUSTER_FIELDS(apply_request, r)
};

// Parts: target k's pickled slice of the sequence, bound to `key` in its namespace.
struct scatter_request {
    route r;
    std::string key;
    bool flatten = false;
    PCLUSTER_FIELDS(scatter_request, r, key, flatten)
};

// Each target replies with pickled namespace[key].
struct gather_request {
    route r;
    std::string key;
    PCLUSTER_FIELDS(gather_request, r, key)
};

// Shared buffers: the call payload of f without arguments. Parts: target k's pickled list of
// argument tuples. Each target replies with the pickled list [f(*t) for t in part].
struct map_request {
    route r;
    PCLUSTER_FIELDS(map_request, r)
};

// Engines leave their loop after replying; the controller then ends the job.
struct shutdown_request {
    route r;
    PCLUSTER_FIELDS(shutdown_request, r)
};

// A task for the load-balanced farm: the controller's scheduler picks the engine (among
// r.targets, empty: any) when the task's dependencies are done; the engine replies with one
// engine_reply, with the task's id. Shared buffers: the call payload (task_kind::call), or a map
// chunk's payload (task_kind::map_chunk, serialize.pack_map_chunk). part_bufs must be empty.
//   after:   ids of tasks that must have finished first (successfully unless after_failure_ok);
//   follow:  ids of tasks that must have finished successfully; runs on the engine they ran on;
//   retries: how many more times a task whose engine raised is tried, on other engines;
//   timeout: seconds it may wait for its dependencies (<= 0: no limit), then fails TaskTimeout.
enum class task_kind : std::uint8_t { call = 0, map_chunk = 1 };
struct task_request {
    route r;
    task_kind kind = task_kind::call;
    std::vector<std::uint64_t> after;
    std::vector<std::uint64_t> follow;
    std::int32_t retries = 0;
    double timeout = 0;
    bool after_failure_ok = false;
    bool return_exceptions = false;  // map_chunk: an item that raises comes back as its error
    PCLUSTER_FIELDS(task_request, r, kind, after, follow, retries, timeout, after_failure_ok, return_exceptions)
};

// Requests the controller answers itself, with one control_reply; never reach engines.
//   abort:         drop the tasks `ids` (the caller's own) that have not been sent to an engine;
//                  each then fails with TaskAborted; running ones are named in `refused`. With
//                  r.targets: `ids` are the caller's direct requests to those engines: one still
//                  waiting in the controller is dropped (in `aborted`), the engines skip one that
//                  has not started there (its reply: TaskAborted); answered at once.
//   queue_status:  per engine tasks sent and not answered, and done; tasks not yet sent.
//   forget_client: the bridge says client client_of(r.id) left: its queued tasks and requests
//                  are dropped.
//   signal:        send signal ids[0] to the engines r.targets (every live engine when empty):
//                  SIGINT interrupts what runs (as interrupt), another signal goes to the engine
//                  process (SIGTERM, SIGKILL end it: an engine death). Answered with which
//                  engines were told.
//   hold_client / release_client: the bridge says the replies it holds for client client_of(r.id)
//                  are over that client's budget (it does not read them) / down to half of it:
//                  the controller sends none of its requests or tasks to engines meanwhile
//                  (controller/admission.hpp). No reply.
//   interrupt:     raise KeyboardInterrupt in the code running for requests `ids` (the caller's
//                  own: direct requests on r.targets, tasks wherever they run), or in whatever
//                  runs on r.targets when `ids` is empty. Answered with which engines were told.
//   results:       the records (result_record) of requests `ids`, of any client, in that order;
//                  of every request the controller keeps when `ids` is empty. No replies.
//   fetch_results: the records of `ids` and, as this reply's buffers, their kept engine_reply
//                  frames (record by record, each record's kept replies in its order).
//   purge_results: forget the finished requests `ids`; with no ids, every finished one (only
//                  those that ran on r.targets when it names engines). Pending ones are named in
//                  `refused`; the records answer those purged.
//   resubmit:      ids = [old, new, old, new, ...]: run kept task `old` again as the caller's new
//                  task `new` (same function and arguments, engines, retries; no dependencies).
//                  `new` gets its reply as any task, or an error reply saying why it cannot run.
//   stop_engines:  end the engine processes r.targets (rc.shutdown(targets=...)): only in a job
//                  that survives an engine's exit (recovery); otherwise ok=false saying why.
//                  Answered with which engines were told; each then dies as an engine death.
// The kept results: mpi_controller/result_store.hpp.
enum class control_action : std::uint8_t {
    abort = 0,
    queue_status = 1,
    forget_client = 2,
    interrupt = 3,
    hold_client = 4,
    release_client = 5,
    signal = 6,
    results = 7,
    fetch_results = 8,
    purge_results = 9,
    resubmit = 10,
    stop_engines = 11,
};
// Actions only the bridge may send; it refuses them from a client.
constexpr bool bridge_only(control_action a) {
    return a == control_action::forget_client || a == control_action::hold_client || a == control_action::release_client;
}
struct control_request {
    route r;
    control_action action = control_action::queue_status;
    std::vector<std::uint64_t> ids;
    PCLUSTER_FIELDS(control_request, r, action, ids)
};

struct engine_queue {
    std::int32_t engine = 0;
    std::int32_t assigned = 0;  // sent, not yet answered (running or waiting on the engine)
    std::uint64_t done = 0;     // answered
    bool alive = true;
    PCLUSTER_FIELDS(engine_queue, engine, assigned, done, alive)
};

// What the controller knows of a request's results (control_action::results, fetch_results).
enum class result_state : std::uint8_t {
    pending = 0,  // accepted; not every reply is in
    done = 1,     // every reply is in (kept, or too large to keep: stored_reply.kept)
    dropped = 2,  // it was done, and was dropped to keep the store in its bounds
    purged = 3,   // a client purged it (purge_results)
    unknown = 4,  // no request of that id reached the controller (or too long ago to say)
};
struct stored_reply {
    std::int32_t engine = -1;  // no_engine: a reply made for the whole request
    std::uint64_t size = 0;  // the engine_reply frame's bytes
    bool kept = false;       // false: larger than PCLUSTER_RESULTS_ITEM_KIB, only its record kept
    PCLUSTER_FIELDS(stored_reply, engine, size, kept)
};
struct result_record {
    std::uint64_t id = 0;
    result_state state = result_state::unknown;
    std::uint16_t type = 0;  // the request's message_type (a task: task_request)
    std::vector<std::int32_t> targets;  // engines it waits for, in order (a task: where it ran)
    double submitted = 0;               // controller wall clock, seconds since the epoch
    double completed = 0;               // when its last reply came in; 0 while pending
    std::vector<stored_reply> replies;  // in the order they came
    bool resubmittable = false;         // a task whose request is kept
    std::uint64_t resubmitted_as = 0;   // the newest resubmit of it, if any
    PCLUSTER_FIELDS(result_record, id, state, type, targets, submitted, completed, replies, resubmittable,
                    resubmitted_as)
};

struct control_reply {
    std::uint64_t id = 0;
    bool ok = true;
    std::string message;
    std::vector<std::uint64_t> aborted;
    std::vector<std::string> refused;  // "task <id>: <reason>"
    std::vector<engine_queue> engines;
    std::uint64_t unassigned = 0;  // accepted, not yet sent (waiting ones included)
    std::uint64_t waiting = 0;     // of those, waiting for dependencies
    std::vector<result_record> records;  // results, fetch_results, purge_results
    PCLUSTER_FIELDS(control_reply, id, ok, message, aborted, refused, engines, unassigned, waiting, records)
};

enum class reply_status : std::uint8_t { ok = 0, error = 1 };

// Who made an engine_reply, and what it answers.
enum class reply_origin : std::uint8_t {
    engine = 0,      // engine `engine` ran the request: its result, or what its code raised
    controller = 1,  // the controller answers in place of engine `engine` (it died; a task it settled)
    refused = 2,     // the controller or bridge refused the whole request: its only reply
    client = 3,      // this client made it: it could not receive one reply (engine unknown)
};
inline constexpr std::int32_t no_engine = -1;

// One per target engine per request (a task: one). Buffers: the pickled result, none on error.
// Errors: status error, `kind` the error_kind (none when user code raised), ename/evalue/traceback.
struct engine_reply {
    std::uint64_t id = 0;
    std::int32_t engine = no_engine;
    reply_origin origin = reply_origin::engine;
    reply_status status = reply_status::ok;
    error_kind kind = error_kind::none;
    std::string ename;
    std::string evalue;
    std::vector<std::string> traceback;
    double started = 0;  // engine wall clock, seconds since the epoch
    double completed = 0;
    // What the request printed and had not yet streamed as `output` messages (with
    // route_flags::capture_output), and an execute_request's final expression (repr), if any.
    std::string stdout_text;
    std::string stderr_text;
    std::optional<std::string> execute_result;
    // What the request showed through IPython's display protocol: empty (the common case, no
    // cost) or bytes, a pickle (cloudpickle, protocol 5, in band) made by pcluster._rich of
    // {"outputs": [{"data": {mime: str}, "metadata": {...}}, ...] (display(), figures; binary
    // types base64 as in Jupyter), "execute_result": the final expression's mimebundle {"data",
    // "metadata"} when it has more than text/plain, "data": what publish_data() published}. At
    // most PCLUSTER_MAX_REPLY_RICH bytes: outputs past it are replaced by a text/plain note.
    // Opaque to the controller and the bridge; unpickled only by the client.
    std::string rich_output;
    PCLUSTER_FIELDS(engine_reply, id, engine, origin, status, kind, ename, evalue, traceback, started, completed,
                    stdout_text, stderr_text, execute_result, rich_output)
};

// The one constructor of error replies, for every origin (engines' kernel and C++ side,
// controller, scheduler verdicts, bridge, client).
inline engine_reply error_reply(std::uint64_t id, reply_origin origin, std::int32_t engine, error_kind kind,
                                std::string ename, std::string evalue, std::vector<std::string> traceback = {}) {
    engine_reply r;
    r.id = id;
    r.engine = engine;
    r.origin = origin;
    r.status = reply_status::error;
    r.kind = kind;
    r.ename = ename.empty() ? std::string(name_of(kind)) : std::move(ename);
    r.evalue = std::move(evalue);
    r.traceback = std::move(traceback);
    return r;
}
inline engine_reply error_reply(std::uint64_t id, reply_origin origin, std::int32_t engine, error_kind kind,
                                std::string evalue) {
    return error_reply(id, origin, engine, kind, {}, std::move(evalue));
}

// Engine -> controller -> bridge -> client, while request `id` runs on `engine` for longer than
// the streaming delay: what it printed since the last one. Always before that engine's
// engine_reply for the request; the reply carries whatever was not streamed.
struct output {
    std::uint64_t id = 0;
    std::int32_t engine = no_engine;
    std::string stdout_text;
    std::string stderr_text;
    PCLUSTER_FIELDS(output, id, engine, stdout_text, stderr_text)
};

// Controller -> bridge -> every client: an engine died (or, later, another change of an engine's
// state). The bridge keeps the engine list it gives clients at login up to date with it.
struct engine_event {
    engine_info engine;
    double time = 0;  // seconds since the epoch, when the controller learned it
    PCLUSTER_FIELDS(engine_event, engine, time)
};

// The bridge tells every client before it closes: the job is over.
struct job_ended {
    std::string reason;
    PCLUSTER_FIELDS(job_ended, reason)
};

// Why a job that got signal `sig` ended, for job_ended: inside a SLURM job a SIGTERM is SLURM's
// (scancel, the time limit, a node failure), which is what the user needs to hear.
std::string ended_by_signal(int sig);

// Controller -> bridge at start-up.
struct job_info {
    std::string job_id;
    std::vector<engine_info> engines;
    std::string controller_host;
    std::int64_t controller_pid = 0;
    PCLUSTER_FIELDS(job_info, job_id, engines, controller_host, controller_pid)
};

// Bridge -> controller once it listens and the connection file is written.
struct bridge_ready {
    std::string address;
    std::uint16_t port = 0;
    std::string connection_file;
    PCLUSTER_FIELDS(bridge_ready, address, port, connection_file)
};

// A frame too large to be worth copying through sockets, left in the first `size` bytes of a
// shared-memory file at `path` (/dev/shm/pcluster-*, mode 0600) by whoever made it. The receiver
// maps it; unless `keep`, it also unlinks it. With `keep` the sender reuses the file once the
// request's replies are in (a segment pool: fresh pages cost more than the copy).
// `id` is the request id, so errors and routing need not open the file.
struct shm_frame {
    std::uint64_t id = 0;
    std::string path;
    std::uint64_t size = 0;
    bool keep = false;
    PCLUSTER_FIELDS(shm_frame, id, path, size, keep)
};

// Client -> controller: reply segments (shm_frame with keep) the client no longer uses; the
// controller reuses them for later replies instead of faulting in fresh pages. The bridge sends
// one with reuse = false for a client that disconnects holding segments: that process may still
// map them, so the controller must forget them (unlink, unmap), never reuse them.
struct shm_return {
    std::vector<std::string> paths;
    bool reuse = true;
    PCLUSTER_FIELDS(shm_return, paths, reuse)
};

// Compile-time map from struct to its wire type.
template <class T>
struct type_of;
#define PCLUSTER_MESSAGE_TYPE_OF_(name, number, role)                 \
    template <>                                                       \
    struct type_of<name> {                                            \
        static constexpr message_type value = message_type::name;     \
    };
PCLUSTER_MESSAGES(PCLUSTER_MESSAGE_TYPE_OF_)
#undef PCLUSTER_MESSAGE_TYPE_OF_

// The name of a wire type, "unknown message type" for others.
constexpr const char* type_name(std::uint16_t type) {
    switch (static_cast<message_type>(type)) {
#define PCLUSTER_MESSAGE_NAME_(name, number, role) \
    case message_type::name: return #name;
        PCLUSTER_MESSAGES(PCLUSTER_MESSAGE_NAME_)
#undef PCLUSTER_MESSAGE_NAME_
    }
    return "unknown message type";
}

namespace detail {
enum class role { handshake, request, reply, internal, transfer };
template <role R, class T, class F>
constexpr bool visit_if(F& f) {
    if constexpr (R == role::request) f(T{});
    return R == role::request;
}
}  // namespace detail

// Calls f(T{}) with the request struct type for `type`; returns false for non-request types.
template <class F>
bool visit_request_type(std::uint16_t type, F&& f) {
    switch (static_cast<message_type>(type)) {
#define PCLUSTER_MESSAGE_VISIT_(name, number, r) \
    case message_type::name: return detail::visit_if<detail::role::r, name>(f);
        PCLUSTER_MESSAGES(PCLUSTER_MESSAGE_VISIT_)
#undef PCLUSTER_MESSAGE_VISIT_
    }
    return false;
}

constexpr bool is_request(std::uint16_t type) {
    switch (static_cast<message_type>(type)) {
#define PCLUSTER_MESSAGE_IS_REQUEST_(name, number, r) \
    case message_type::name: return detail::role::r == detail::role::request;
        PCLUSTER_MESSAGES(PCLUSTER_MESSAGE_IS_REQUEST_)
#undef PCLUSTER_MESSAGE_IS_REQUEST_
    }
    return false;
}

// Calls f(T{}) for every message struct, in list order (bindings, tests).
template <class F>
void for_each_message(F&& f) {
#define PCLUSTER_MESSAGE_EACH_(name, number, role) f(name{});
    PCLUSTER_MESSAGES(PCLUSTER_MESSAGE_EACH_)
#undef PCLUSTER_MESSAGE_EACH_
}

}  // namespace pcluster::protocol
