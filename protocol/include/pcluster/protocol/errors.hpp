// Every error pcluster makes up itself (as opposed to an exception raised by user code on an
// engine), defined once. An error reply names its kind (engine_reply.kind) and the kind's name;
// the Python client raises one exception class per kind, made from this table (pcluster.error).
// Add an error: one X(...) line here, then produce it with protocol::error_reply().
#pragma once

#include <cstdint>
#include <string_view>

namespace pcluster::protocol {

// X(id, name, Python base classes, when it happens)
#define PCLUSTER_ERROR_KINDS(X)                                                                              \
    X(bad_request, "BadRequest", "RemoteError,ValueError",                                                   \
      "the controller refused a malformed request (layout, repeated engines, wrong parts)")                   \
    X(no_such_engine, "NoSuchEngine", "RemoteError,IndexError", "a request named an engine the job does not have") \
    X(job_shutting_down, "JobShuttingDown", "RemoteError", "the job was already shutting down")               \
    X(engine_internal, "EngineInternalError", "RemoteError",                                                  \
      "the engine's request handling itself failed (not the user's code)")                                   \
    X(reply_lost, "ReplyLost", "RemoteError", "this client could not receive a reply (e.g. map it from shared memory)") \
    X(engine_died, "EngineDied", "EngineError", "the engine died while the request waited on it")               \
    X(request_lost, "RequestLost", "EngineError",                                                              \
      "the request never reached this engine: an engine its broadcast went through died")                     \
    X(task_aborted, "TaskAborted", "TaskError", "the task (or direct request: view.abort) was aborted (abort(), its client left, shutdown) before it ran") \
    X(task_timeout, "TaskTimeout", "TaskError", "the task waited longer than its timeout= for its dependencies") \
    X(dependency_failed, "DependencyFailed", "DependencyError", "a dependency of the task failed")             \
    X(impossible_dependency, "ImpossibleDependency", "DependencyError",                                        \
      "the task's dependencies can never be met together (follow engines disagree or died)")                   \
    X(invalid_dependency, "InvalidDependency", "DependencyError", "a dependency names a task the controller does not know") \
    X(unmet_dependency, "UnmetDependency", "DependencyError",                                                  \
      "the function's condition (pcluster.depend) is false on this engine; a task is tried on another")       \
    X(invalid_task, "InvalidTask", "TaskError", "the task itself is invalid (id in use, engine, retries; resubmit of a task not kept)") \
    X(client_left, "ClientLeft", "RemoteError",                                                                \
      "its client disconnected while the request waited in the controller; it was not sent to the engines")

// none: not made by pcluster - user code on the engine raised `ename`.
enum class error_kind : std::uint8_t {
    none = 0,
#define PCLUSTER_ERROR_ENUM_(id, name, bases, doc) id,
    PCLUSTER_ERROR_KINDS(PCLUSTER_ERROR_ENUM_)
#undef PCLUSTER_ERROR_ENUM_
};

struct error_kind_info {
    error_kind kind;
    std::string_view name, python_bases, doc;
};

inline constexpr error_kind_info error_kinds[] = {
#define PCLUSTER_ERROR_INFO_(id, name, bases, doc) {error_kind::id, name, bases, doc},
    PCLUSTER_ERROR_KINDS(PCLUSTER_ERROR_INFO_)
#undef PCLUSTER_ERROR_INFO_
};

constexpr std::string_view name_of(error_kind k) {
    for (const auto& i : error_kinds)
        if (i.kind == k) return i.name;
    return "RemoteError";
}

}  // namespace pcluster::protocol
