// pcluster._core: the protocol's one definition (protocol/messages.hpp) made available to
// Python, plus the client connection. Both the client and the engines' kernel use it, so no
// Python code ever writes or parses the wire format by hand.
#include <pybind11/chrono.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>

#include "connection.hpp"
#include "pcluster/protocol/codec.hpp"

namespace py = pybind11;
namespace proto = pcluster::protocol;
using pcluster::client::connection;
using pcluster::client::reply;

namespace {

// Owns received bytes and lends them to Python through the buffer protocol; memoryview slices
// of it (and numpy arrays unpickled from those) keep it alive.
struct blob {
    std::shared_ptr<proto::byte_buffer> bytes;
};

py::list views_of(py::object owner, const std::vector<std::pair<std::uint64_t, std::uint64_t>>& ranges) {
    py::memoryview mv(owner);
    py::list out;
    auto getitem = mv.attr("__getitem__");
    for (auto [off, len] : ranges) out.append(getitem(py::slice(off, off + len, 1)));
    return out;
}

// Memory of a Python buffer, for the duration of `infos`.
std::vector<std::span<const char>> spans_of(py::list bufs, std::vector<py::buffer_info>& infos) {
    std::vector<std::span<const char>> spans;
    for (auto b : bufs) {
        auto info = py::reinterpret_borrow<py::buffer>(b).request();
        bool contiguous = true;
        py::ssize_t expect = info.itemsize;
        for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
            if (info.shape[d] > 1 && info.strides[d] != expect) contiguous = false;
            expect *= info.shape[d];
        }
        if (!contiguous) throw py::type_error("buffers sent to engines must be contiguous");
        spans.emplace_back(static_cast<const char*>(info.ptr), static_cast<std::size_t>(info.size * info.itemsize));
        infos.push_back(std::move(info));
    }
    return spans;
}

// Engine output as str; bytes that are not UTF-8 (a chunk cut by an old engine, C code writing
// bytes) become U+FFFD instead of an exception that would lose the result.
py::object text_of(const std::string& b) {
    PyObject* o = PyUnicode_DecodeUTF8(b.data(), static_cast<Py_ssize_t>(b.size()), "replace");
    if (!o) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(o);
}

py::list output_list(const std::vector<pcluster::client::output_chunk>& chunks) {
    py::list out;
    for (const auto& c : chunks) out.append(py::make_tuple(c.engine, text_of(c.stdout_text), text_of(c.stderr_text)));
    return out;
}

// Sends `msg` as request `id` to `targets` (empty: all engines, or any for a task) with the
// route flags `flags` added; a request without parts that names no shared_bufs shares all its
// buffers. The route is filled
// in here, on the copy that is sent: one call from Python instead of an attribute set each.
template <class T>
void send_as(connection& c, const T& msg_in, py::list bufs, bool direct, std::uint64_t id,
             std::vector<std::int32_t> targets, std::uint32_t flags) {
    std::vector<py::buffer_info> infos;
    auto spans = spans_of(bufs, infos);
    T msg = msg_in;
    msg.r.id = id;
    msg.r.targets = std::move(targets);
    msg.r.flags |= flags;
    if (msg.r.part_bufs.empty() && msg.r.shared_bufs == 0) msg.r.shared_bufs = static_cast<std::uint32_t>(spans.size());
    if (c.local()) msg.r.flags |= proto::reply_by_shm;
    auto frame = proto::encode(msg, std::move(spans));
    // A task gets one reply (from whichever engine runs it), a control request one from the
    // controller; other requests one per target.
    constexpr bool one_reply =
        std::is_same_v<T, proto::task_request> || std::is_same_v<T, proto::control_request>;
    const std::size_t replies = one_reply ? 1 : msg.r.targets.empty() ? c.engines().size() : msg.r.targets.size();
    if (!direct && frame.size() <= 4096) {
        // Queued (copied) for the writer thread: no system call, so no reason to drop the GIL.
        c.send(msg.r.id, replies, frame, false);
        return;
    }
    py::gil_scoped_release nogil;
    c.send(msg.r.id, replies, frame, direct);
}

proto::clock::time_point deadline_of(std::optional<double> timeout) {
    if (!timeout) return proto::clock::time_point::max();
    return proto::clock::now() + std::chrono::microseconds(static_cast<long long>(std::max(0.0, *timeout) * 1e6));
}

py::object outcome_to_python(std::optional<pcluster::client::outcome> o) {
    if (!o) return py::none();
    std::vector<std::shared_ptr<reply>> replies;
    for (auto& r : o->replies) replies.push_back(std::const_pointer_cast<reply>(r));
    return py::make_tuple(py::cast(std::move(replies)), output_list(o->output));
}

template <class T, class Cls>
void add_request(Cls& cls) {
    cls.def(py::init<>()).def_readwrite("r", &T::r);
}

// Decodes a request frame on an engine. `frame` holds the request up to (or including) its parts;
// `part` this engine's part when it came separately (collective scatter). Returns
// (message, shared buffer views, part buffer views).
py::tuple decode_request(py::object frame, py::object part, int engine_id) {
    auto info = py::reinterpret_borrow<py::buffer>(frame).request();
    proto::frame_view v(static_cast<const char*>(info.ptr), static_cast<std::size_t>(info.size));
    py::object msg;
    proto::route r;
    bool ok = proto::visit_request_type(v.type(), [&](auto tag) {
        auto m = proto::decode<decltype(tag)>(v);
        r = m.r;
        msg = py::cast(std::move(m));
    });
    if (!ok) throw py::value_error(std::string("not a request: ") + proto::type_name(v.type()));
    std::vector<std::pair<std::uint64_t, std::uint64_t>> shared, parts;
    for (std::uint32_t i = 0; i < r.shared_bufs; ++i) {
        if (!v.has_buf(i)) throw py::value_error("request frame is missing its shared buffers");
        shared.emplace_back(v.buf_offset(i), v.buf_len(i));
    }
    py::object part_owner = frame;
    if (!r.part_bufs.empty()) {
        std::size_t k = static_cast<std::size_t>(engine_id);
        if (!r.targets.empty()) {
            auto it = std::find(r.targets.begin(), r.targets.end(), engine_id);
            if (it == r.targets.end()) throw py::value_error("request does not target this engine");
            k = static_cast<std::size_t>(it - r.targets.begin());
        }
        std::uint32_t first = r.shared_bufs;
        for (std::size_t j = 0; j < k; ++j) first += r.part_bufs[j];
        const std::uint32_t cnt = r.part_bufs.at(k);
        if (!part.is_none()) {
            part_owner = part;
            std::uint64_t off = 0;
            for (std::uint32_t j = 0; j < cnt; ++j) {
                parts.emplace_back(off, v.buf_len(first + j));
                off += v.buf_len(first + j);
            }
            auto pinfo = py::reinterpret_borrow<py::buffer>(part).request();
            if (static_cast<std::uint64_t>(pinfo.size) != off) throw py::value_error("part has the wrong length");
        } else {
            for (std::uint32_t j = 0; j < cnt; ++j) {
                if (!v.has_buf(first + j)) throw py::value_error("request frame is missing this engine's part");
                parts.emplace_back(v.buf_offset(first + j), v.buf_len(first + j));
            }
        }
    }
    return py::make_tuple(msg, views_of(frame, shared), views_of(part_owner, parts));
}

// The head (prefix, table, meta) of a reply frame whose buffers are `bufs`; the engine sends the
// buffers themselves from where they are.
py::bytes encode_reply(const proto::engine_reply& rep, py::list bufs) {
    std::vector<py::buffer_info> infos;
    const auto head = proto::encode(rep, spans_of(bufs, infos)).head;
    return py::bytes(head.data(), head.size());
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "pcluster wire protocol and client connection (C++)";
    m.attr("protocol_version") = proto::protocol_version;
    m.attr("capture_output") = static_cast<std::uint32_t>(proto::capture_output);

    static py::exception<pcluster::client::auth_error> auth_exc(m, "AuthenticationError", PyExc_PermissionError);
    static py::exception<proto::version_error> version_exc(m, "ProtocolVersionError", PyExc_RuntimeError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const pcluster::client::auth_error& e) {
            auth_exc(e.what());
        } catch (const proto::version_error& e) {
            version_exc(e.what());
        } catch (const proto::timeout_error& e) {
            PyErr_SetString(PyExc_TimeoutError, e.what());
        } catch (const std::system_error& e) {
            PyErr_SetString(PyExc_ConnectionError, e.what());
        } catch (const proto::frame_error& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    });

    py::class_<proto::route>(m, "route")
        .def(py::init<>())
        .def_readwrite("id", &proto::route::id)
        .def_readwrite("targets", &proto::route::targets)
        .def_readwrite("shared_bufs", &proto::route::shared_bufs)
        .def_readwrite("part_bufs", &proto::route::part_bufs)
        .def_readwrite("flags", &proto::route::flags);

    py::class_<proto::engine_info>(m, "engine_info")
        .def_readonly("id", &proto::engine_info::id)
        .def_readonly("host", &proto::engine_info::host)
        .def_readonly("pid", &proto::engine_info::pid);

    py::class_<proto::execute_request> ex(m, "execute_request");
    add_request<proto::execute_request>(ex);
    ex.def_readwrite("code", &proto::execute_request::code).def_readwrite("silent", &proto::execute_request::silent);
    py::class_<proto::push_request> pu(m, "push_request");
    add_request<proto::push_request>(pu);
    py::class_<proto::pull_request> pl(m, "pull_request");
    add_request<proto::pull_request>(pl);
    pl.def_readwrite("names", &proto::pull_request::names).def_readwrite("single", &proto::pull_request::single);
    py::class_<proto::apply_request> ap(m, "apply_request");
    add_request<proto::apply_request>(ap);
    py::class_<proto::scatter_request> sc(m, "scatter_request");
    add_request<proto::scatter_request>(sc);
    sc.def_readwrite("key", &proto::scatter_request::key).def_readwrite("flatten", &proto::scatter_request::flatten);
    py::class_<proto::gather_request> ga(m, "gather_request");
    add_request<proto::gather_request>(ga);
    ga.def_readwrite("key", &proto::gather_request::key);
    py::class_<proto::map_request> mp(m, "map_request");
    add_request<proto::map_request>(mp);
    py::class_<proto::shutdown_request> sd(m, "shutdown_request");
    add_request<proto::shutdown_request>(sd);
    py::class_<proto::task_request> tk(m, "task_request");
    add_request<proto::task_request>(tk);
    tk.def(py::init([](int kind, std::vector<std::uint64_t> after, std::vector<std::uint64_t> follow, int retries,
                       double timeout, bool return_exceptions) {
               proto::task_request t;
               if (kind != 0 && kind != 1) throw py::value_error("task kind is 0 (apply) or 1 (map chunk)");
               t.kind = static_cast<proto::task_kind>(kind);
               t.after = std::move(after);
               t.follow = std::move(follow);
               t.retries = retries;
               t.timeout = timeout;
               t.return_exceptions = return_exceptions;
               return t;
           }),
           py::arg("kind"), py::arg("after"), py::arg("follow"), py::arg("retries"), py::arg("timeout"),
           py::arg("return_exceptions"));
    tk.def_property(
          "kind", [](const proto::task_request& t) { return static_cast<int>(t.kind); },
          [](proto::task_request& t, int k) {
              if (k != 0 && k != 1) throw py::value_error("task kind is 0 (apply) or 1 (map chunk)");
              t.kind = static_cast<proto::task_kind>(k);
          })
        .def_readwrite("after", &proto::task_request::after)
        .def_readwrite("follow", &proto::task_request::follow)
        .def_readwrite("retries", &proto::task_request::retries)
        .def_readwrite("timeout", &proto::task_request::timeout)
        .def_readwrite("after_failure_ok", &proto::task_request::after_failure_ok)
        .def_readwrite("return_exceptions", &proto::task_request::return_exceptions);
    py::class_<proto::control_request> ct(m, "control_request");
    add_request<proto::control_request>(ct);
    ct.def_property(
          "action", [](const proto::control_request& c) { return static_cast<int>(c.action); },
          [](proto::control_request& c, int a) {
              if (a < 0 || a > 2) throw py::value_error("control action is 0 (abort), 1 (queue_status) or 2");
              c.action = static_cast<proto::control_action>(a);
          })
        .def_readwrite("ids", &proto::control_request::ids);
    py::class_<proto::engine_queue>(m, "engine_queue")
        .def_readonly("engine", &proto::engine_queue::engine)
        .def_readonly("assigned", &proto::engine_queue::assigned)
        .def_readonly("done", &proto::engine_queue::done)
        .def_readonly("alive", &proto::engine_queue::alive);
    py::class_<proto::control_reply>(m, "control_reply")
        .def_readonly("id", &proto::control_reply::id)
        .def_readonly("ok", &proto::control_reply::ok)
        .def_readonly("message", &proto::control_reply::message)
        .def_readonly("aborted", &proto::control_reply::aborted)
        .def_readonly("refused", &proto::control_reply::refused)
        .def_readonly("engines", &proto::control_reply::engines)
        .def_readonly("unassigned", &proto::control_reply::unassigned)
        .def_readonly("waiting", &proto::control_reply::waiting);

    py::class_<proto::engine_reply>(m, "engine_reply")
        .def(py::init<>())
        .def_readwrite("id", &proto::engine_reply::id)
        .def_readwrite("engine", &proto::engine_reply::engine)
        .def_property(
            "ok", [](const proto::engine_reply& r) { return r.status == proto::reply_status::ok; },
            [](proto::engine_reply& r, bool ok) { r.status = ok ? proto::reply_status::ok : proto::reply_status::error; })
        .def_readwrite("ename", &proto::engine_reply::ename)
        .def_readwrite("evalue", &proto::engine_reply::evalue)
        .def_readwrite("traceback", &proto::engine_reply::traceback)
        .def_readwrite("started", &proto::engine_reply::started)
        .def_readwrite("completed", &proto::engine_reply::completed)
        .def_readwrite("stdout_text", &proto::engine_reply::stdout_text)
        .def_readwrite("stderr_text", &proto::engine_reply::stderr_text)
        .def_readwrite("execute_result", &proto::engine_reply::execute_result)
        .def_readwrite("has_execute_result", &proto::engine_reply::has_execute_result);

    m.def("decode_request", &decode_request, py::arg("frame"), py::arg("part"), py::arg("engine_id"));
    m.def("encode_reply", &encode_reply, py::arg("reply"), py::arg("buffers"));

    py::class_<blob>(m, "blob", py::buffer_protocol()).def_buffer([](blob& b) {
        return py::buffer_info(b.bytes->data(), 1, py::format_descriptor<std::uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.bytes->size())}, {1});
    });

    py::class_<reply, std::shared_ptr<reply>>(m, "reply")
        .def_property_readonly("meta", [](const reply& r) { return r.meta; })
        .def_property_readonly("id", [](const reply& r) { return r.meta.id; })
        .def_property_readonly("engine", [](const reply& r) { return r.meta.engine; })
        .def_property_readonly("ok", [](const reply& r) { return r.meta.status == proto::reply_status::ok; })
        .def_property_readonly("ename", [](const reply& r) { return r.meta.ename; })
        .def_property_readonly("evalue", [](const reply& r) { return r.meta.evalue; })
        .def_property_readonly("traceback", [](const reply& r) { return r.meta.traceback; })
        .def_property_readonly("started", [](const reply& r) { return r.meta.started; })
        .def_property_readonly("completed", [](const reply& r) { return r.meta.completed; })
        .def_property_readonly("has_output",
                               [](const reply& r) { return !r.meta.stdout_text.empty() || !r.meta.stderr_text.empty(); })
        .def_property_readonly("stdout", [](const reply& r) { return text_of(r.meta.stdout_text); })
        .def_property_readonly("stderr", [](const reply& r) { return text_of(r.meta.stderr_text); })
        .def_property_readonly("control", [](const reply& r) -> py::object {
            if (!r.control) return py::none();
            return py::cast(*r.control);
        })
        .def_property_readonly("execute_result", [](const reply& r) -> py::object {
            if (!r.meta.has_execute_result) return py::none();
            return py::str(r.meta.execute_result);
        })
        .def("buffers", [](const reply& r) {
            if (!r.frame.bytes) return py::list();
            auto v = r.frame.view();
            std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
            for (std::uint32_t i = 0; i < v.nbufs(); ++i) ranges.emplace_back(v.buf_offset(i), v.buf_len(i));
            return views_of(py::cast(blob{r.frame.bytes}), ranges);
        });

    py::class_<connection>(m, "connection")
        .def(py::init([](const std::string& host, int port, const std::string& key, double timeout) {
                 py::gil_scoped_release nogil;
                 return std::make_unique<connection>(host, port, key, timeout);
             }),
             py::arg("host"), py::arg("port"), py::arg("key"), py::arg("timeout"))
        .def_property_readonly("client_no", &connection::client_no)
        .def_property_readonly("engines", &connection::engines)
        .def_property_readonly("job_id", &connection::job_id)
        .def_property_readonly("local", &connection::local)
        // Overloads are tried in order: the ones sent by the thousand first.
        .def("send", &send_as<proto::task_request>)
        .def("send", &send_as<proto::apply_request>)
        .def("send", &send_as<proto::execute_request>)
        .def("send", &send_as<proto::push_request>)
        .def("send", &send_as<proto::pull_request>)
        .def("send", &send_as<proto::scatter_request>)
        .def("send", &send_as<proto::gather_request>)
        .def("send", &send_as<proto::map_request>)
        .def("send", &send_as<proto::shutdown_request>)
        .def("send", &send_as<proto::control_request>)
        // Waits in slices so Ctrl-C (a pending Python signal) interrupts a blocking wait at once.
        // Returns (replies, output chunks) once complete and taken, None otherwise (time-out,
        // connection closed, or another thread took it).
        // `holder`, if given, gets the outcome as its `_taken` attribute before anything Python
        // runs: a Ctrl-C that lands right after the take then cannot lose it.
        .def(
            "wait_take",
            [](connection& c, std::uint64_t id, std::optional<double> timeout, py::object holder) -> py::object {
                const auto end = deadline_of(timeout);
                for (;;) {
                    const auto slice = std::min(end, proto::clock::now() + std::chrono::milliseconds(100));
                    std::optional<pcluster::client::outcome> o;
                    {
                        py::gil_scoped_release nogil;
                        o = c.wait_take(id, slice);
                    }
                    if (o) {
                        py::object out = outcome_to_python(std::move(o));
                        if (!holder.is_none()) holder.attr("_taken") = out;
                        return out;
                    }
                    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
                    if (c.closed() || !c.pending(id) || proto::clock::now() >= end) return py::none();
                }
            },
            py::arg("id"), py::arg("timeout") = py::none(), py::arg("holder") = py::none())
        .def("take", [](connection& c, std::uint64_t id) { return outcome_to_python(c.take(id)); })
        .def("pending", &connection::pending)
        .def("abandon", &connection::abandon, py::arg("id") = py::none())
        .def(
            "next_completed",
            [](connection& c, double timeout) {
                py::gil_scoped_release nogil;
                return c.next_completed(deadline_of(timeout));
            },
            py::arg("timeout"))
        .def(
            "wait_count",
            [](connection& c, std::uint64_t id, std::size_t n, double timeout) {
                std::vector<pcluster::client::reply_ptr> got;
                {
                    py::gil_scoped_release nogil;
                    got = c.wait_count(id, n, deadline_of(timeout));
                }
                std::vector<std::shared_ptr<reply>> out;
                for (auto& r : got) out.push_back(std::const_pointer_cast<reply>(r));
                return out;
            },
            py::arg("id"), py::arg("n"), py::arg("timeout"))
        .def("take_output", [](connection& c, std::uint64_t id) { return output_list(c.take_output(id)); })
        .def("release", &connection::release)
        .def_property_readonly("closed", &connection::closed)
        .def_property_readonly("close_reason", &connection::close_reason)
        .def("close", [](connection& c) {
            py::gil_scoped_release nogil;
            c.close();
        });
}
