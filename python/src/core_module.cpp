// pcluster._core: the protocol's one definition made available to Python - every message
// struct with its fields (from PCLUSTER_MESSAGES and each struct's PCLUSTER_FIELDS), the enums,
// the error kinds, the settings, the connection file - plus the client connection. Both the
// client and the engines' kernel use it, so no Python code writes or parses the wire format.
#include <pybind11/chrono.h>
#include <pybind11/operators.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "connection.hpp"
#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/config.hpp"
#include "pcluster/protocol/connection_file.hpp"
#include "pcluster/protocol/layout.hpp"

namespace py = pybind11;
namespace proto = pcluster::protocol;
using pcluster::client::completion;
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

// Memory of Python buffers, for the duration of `infos`.
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

// Engine output as str; bytes that are not UTF-8 (C code writing bytes) become U+FFFD instead of
// an exception that would lose the result.
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

// A struct with its fields as attributes, a keyword constructor and ==; from its field list.
template <class T, class... Extra>
py::class_<T, Extra...> bind_struct(py::module_& m, const char* name) {
    py::class_<T, Extra...> cls(m, name);
    const std::string type_name = name;
    cls.def(py::init([type_name](py::kwargs kw) {
        T t;
        for (auto item : kw) {
            const auto key = item.first.cast<std::string>();
            bool found = false;
            proto::for_each_field<T>([&](auto fd) {
                if (!found && key == fd.name) {
                    t.*(fd.member) = item.second.template cast<typename decltype(fd)::type>();
                    found = true;
                }
            });
            if (!found) throw py::type_error(type_name + " has no field '" + key + "'");
        }
        return t;
    }));
    proto::for_each_field<T>([&](auto fd) { cls.def_readwrite(fd.name, fd.member); });
    cls.def(py::self == py::self);
    cls.def_property_readonly_static("fields", [](py::object) {
        py::list names;
        proto::for_each_field<T>([&](auto fd) { names.append(fd.name); });
        return names;
    });
    return cls;
}

// Sends `msg` as request `id` to `targets` (empty: every engine alive after the client's
// `deaths_seen` deaths, or any for a task) with the route flags `flags` added, expecting
// `replies` replies (one per target; a task or a control request: one); a request without parts that names no shared_bufs shares all its buffers. The
// route is filled in here, on the copy that is sent: one call from Python instead of an
// attribute set each.
template <class T>
void send_as(connection& c, const T& msg_in, py::list bufs, bool direct, std::uint64_t id,
             std::vector<std::int32_t> targets, std::uint32_t flags, std::size_t replies, std::uint32_t deaths_seen) {
    std::vector<py::buffer_info> infos;
    auto spans = spans_of(bufs, infos);
    T msg = msg_in;
    msg.r.id = id;
    msg.r.targets = std::move(targets);
    msg.r.flags |= flags;
    msg.r.deaths_seen = deaths_seen;
    if (msg.r.part_bufs.empty() && msg.r.shared_bufs == 0) msg.r.shared_bufs = static_cast<std::uint32_t>(spans.size());
    if (c.local()) msg.r.flags |= proto::reply_by_shm;
    auto frame = proto::encode(msg, std::move(spans));
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

py::object completion_to_python(std::optional<completion> o) {
    if (!o) return py::none();
    std::vector<std::shared_ptr<reply>> replies;
    for (auto& r : o->replies) replies.push_back(std::const_pointer_cast<reply>(r));
    return py::make_tuple(py::cast(std::move(replies)), output_list(o->output));
}

// Decodes a request frame on an engine. `frame` holds the request up to (or including) its
// parts; `part` this engine's part when it came separately (collective scatter). Returns
// (message, shared buffer views, part buffer views).
py::tuple decode_request(py::object frame, py::object part, int engine_id) {
    auto info = py::reinterpret_borrow<py::buffer>(frame).request();
    proto::frame_view v(static_cast<const char*>(info.ptr), static_cast<std::size_t>(info.size));
    py::object msg;
    proto::route r;
    const bool ok = proto::visit_request_type(v.type(), [&](auto tag) {
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
        const auto [first, count] = proto::part_buffers(r, proto::target_index(r, engine_id));
        if (!part.is_none()) {
            // The part came on its own: its buffers are back to back in it.
            part_owner = part;
            std::uint64_t off = 0;
            for (std::uint32_t j = 0; j < count; ++j) {
                parts.emplace_back(off, v.buf_len(first + j));
                off += v.buf_len(first + j);
            }
            if (static_cast<std::uint64_t>(py::reinterpret_borrow<py::buffer>(part).request().size) != off)
                throw py::value_error("part has the wrong length");
        } else {
            for (std::uint32_t j = 0; j < count; ++j) {
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

py::object knob_value(const std::string& name) {
    for (const auto& k : pcluster::config::knobs) {
        if (k.variable != name) continue;
        switch (k.type) {
        case pcluster::config::knob_type::integer: return py::int_(pcluster::config::integer(k.id));
        case pcluster::config::knob_type::number: return py::float_(pcluster::config::number(k.id));
        case pcluster::config::knob_type::flag: return py::bool_(pcluster::config::flag(k.id));
        case pcluster::config::knob_type::text: return py::str(pcluster::config::text(k.id));
        }
    }
    throw py::key_error("no setting " + name);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "pcluster wire protocol and client connection (C++)";
    m.attr("protocol_version") = proto::protocol_version;
    m.attr("capture_output") = static_cast<std::uint32_t>(proto::capture_output);
    m.attr("no_engine") = proto::no_engine;

    static py::exception<pcluster::client::auth_error> auth_exc(m, "AuthenticationError", PyExc_PermissionError);
    static py::exception<proto::version_error> version_exc(m, "ProtocolVersionError", PyExc_RuntimeError);
    static py::exception<proto::connection_file_error> file_exc(m, "ConnectionFileError", PyExc_ValueError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const pcluster::client::auth_error& e) {
            auth_exc(e.what());
        } catch (const proto::version_error& e) {
            version_exc(e.what());
        } catch (const proto::connection_file_error& e) {
            file_exc(e.what());
        } catch (const pcluster::config::config_error& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const proto::timeout_error& e) {
            PyErr_SetString(PyExc_TimeoutError, e.what());
        } catch (const std::system_error& e) {
            PyErr_SetString(PyExc_ConnectionError, e.what());
        } catch (const proto::frame_error& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    });

    // --- names shared with C++: enums, request ids, error kinds ---
    py::enum_<proto::task_kind>(m, "task_kind").value("call", proto::task_kind::call).value("map_chunk", proto::task_kind::map_chunk);
    py::enum_<proto::control_action>(m, "control_action")
        .value("abort", proto::control_action::abort)
        .value("queue_status", proto::control_action::queue_status)
        .value("forget_client", proto::control_action::forget_client)
        .value("interrupt", proto::control_action::interrupt)
        .value("hold_client", proto::control_action::hold_client)
        .value("release_client", proto::control_action::release_client)
        .value("signal", proto::control_action::signal)
        .value("results", proto::control_action::results)
        .value("fetch_results", proto::control_action::fetch_results)
        .value("purge_results", proto::control_action::purge_results)
        .value("resubmit", proto::control_action::resubmit)
        .value("stop_engines", proto::control_action::stop_engines);
    py::enum_<proto::result_state>(m, "result_state")
        .value("pending", proto::result_state::pending)
        .value("done", proto::result_state::done)
        .value("dropped", proto::result_state::dropped)
        .value("purged", proto::result_state::purged)
        .value("unknown", proto::result_state::unknown);
    py::enum_<proto::reply_status>(m, "reply_status").value("ok", proto::reply_status::ok).value("error", proto::reply_status::error);
    py::enum_<proto::reply_origin>(m, "reply_origin")
        .value("engine", proto::reply_origin::engine)
        .value("controller", proto::reply_origin::controller)
        .value("refused", proto::reply_origin::refused)
        .value("client", proto::reply_origin::client);
    py::enum_<proto::error_kind> kinds(m, "error_kind");
    kinds.value("none", proto::error_kind::none);
    py::list kind_table;
    for (const auto& k : proto::error_kinds) {
        kinds.value(std::string(k.name).c_str(), k.kind);
        kind_table.append(py::make_tuple(k.kind, std::string(k.name), std::string(k.python_bases), std::string(k.doc)));
    }
    m.attr("error_kinds") = kind_table;  // (kind, name, Python base classes, when)
    m.def("request_id", &proto::request_id, py::arg("client"), py::arg("seq"));
    m.def("client_of", &proto::client_of);
    m.def("seq_of", &proto::seq_of);

    // --- every message and its parts, from their field lists ---
    bind_struct<proto::route>(m, "route");
    bind_struct<proto::engine_info>(m, "engine_info");
    bind_struct<proto::engine_queue>(m, "engine_queue");
    bind_struct<proto::stored_reply>(m, "stored_reply");
    bind_struct<proto::result_record>(m, "result_record");
    py::list message_names, request_names;
    proto::for_each_message([&](auto tag) {
        using T = decltype(tag);
        const auto type = static_cast<std::uint16_t>(proto::type_of<T>::value);
        bind_struct<T>(m, proto::type_name(type));
        message_names.append(proto::type_name(type));
        if (proto::is_request(type)) request_names.append(proto::type_name(type));
    });
    m.attr("messages") = message_names;
    py::dict message_numbers;  // name -> wire type number (result records name their request's)
    proto::for_each_message([&](auto tag) {
        const auto type = static_cast<std::uint16_t>(proto::type_of<decltype(tag)>::value);
        message_numbers[py::str(proto::type_name(type))] = type;
    });
    m.attr("message_numbers") = message_numbers;
    m.attr("requests") = request_names;  // the messages that start with a route
    m.def("error_reply",
          [](std::uint64_t id, proto::reply_origin origin, std::int32_t engine, proto::error_kind kind, std::string ename,
             std::string evalue, std::vector<std::string> traceback) {
              return proto::error_reply(id, origin, engine, kind, std::move(ename), std::move(evalue), std::move(traceback));
          },
          py::arg("id"), py::arg("origin"), py::arg("engine"), py::arg("kind"), py::arg("ename"), py::arg("evalue"),
          py::arg("traceback"), "The one constructor of error replies (protocol::error_reply).");

    m.def("decode_request", &decode_request, py::arg("frame"), py::arg("part"), py::arg("engine_id"));
    m.def("encode_reply", &encode_reply, py::arg("reply"), py::arg("buffers"));

    // --- the connection file and the settings ---
    bind_struct<proto::connection_info>(m, "connection_info")
        .def_static("from_json", &proto::connection_info_from_json, py::arg("text"))
        .def("to_json", [](const proto::connection_info& c) { return proto::to_json(c); });
    m.def("connection_dir", &proto::connection_dir);
    m.def("connection_file_for_job", &proto::connection_file_for_job, py::arg("job_id"));
    m.def("default_connection_file", &proto::default_connection_file);
    m.def("check_connection_file", &proto::check_private_file, py::arg("path"),
          "Raises ConnectionFileError unless the file and its directory are this user's own and "
          "not writable by others (protocol::check_private_file).");
    m.def("setting", &knob_value, py::arg("variable"), "A setting's value (validated; ValueError names the fix).");
    m.def("check_settings", &pcluster::config::check_config);
    py::list knob_table;
    for (const auto& k : pcluster::config::knobs)
        knob_table.append(py::make_tuple(std::string(k.variable), std::string(k.default_value), std::string(k.read_by),
                                         std::string(k.doc)));
    m.attr("settings") = knob_table;

    // --- replies and the connection ---
    py::class_<blob>(m, "blob", py::buffer_protocol()).def_buffer([](blob& b) {
        return py::buffer_info(b.bytes->data(), 1, py::format_descriptor<std::uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.bytes->size())}, {1});
    });

    py::class_<reply, std::shared_ptr<reply>>(m, "reply")
        .def_property_readonly("meta", [](const reply& r) { return r.meta; })
        .def_property_readonly("id", [](const reply& r) { return r.meta.id; })
        .def_property_readonly("engine", [](const reply& r) { return r.meta.engine; })
        .def_property_readonly("origin", [](const reply& r) { return r.meta.origin; })
        .def_property_readonly("kind", [](const reply& r) { return r.meta.kind; })
        .def_property_readonly("ok", [](const reply& r) { return r.meta.status == proto::reply_status::ok; })
        .def_property_readonly("ename", [](const reply& r) { return r.meta.ename; })
        .def_property_readonly("evalue", [](const reply& r) { return r.meta.evalue; })
        .def_property_readonly("traceback", [](const reply& r) { return r.meta.traceback; })
        .def_property_readonly("started", [](const reply& r) { return r.meta.started; })
        .def_property_readonly("completed", [](const reply& r) { return r.meta.completed; })
        .def_property_readonly("has_output", [](const reply& r) { return !r.meta.stdout_text.empty() || !r.meta.stderr_text.empty(); })
        .def_property_readonly("stdout", [](const reply& r) { return text_of(r.meta.stdout_text); })
        .def_property_readonly("stderr", [](const reply& r) { return text_of(r.meta.stderr_text); })
        .def_property_readonly("control", [](const reply& r) -> py::object {
            if (!r.control) return py::none();
            return py::cast(*r.control);
        })
        // bytes (pcluster._rich's pickle), b"" when the request showed no rich output
        .def_property_readonly("rich_output", [](const reply& r) { return py::bytes(r.meta.rich_output); })
        .def_property_readonly("execute_result", [](const reply& r) -> py::object {
            if (!r.meta.execute_result) return py::none();
            return py::str(*r.meta.execute_result);
        })
        .def("stored", [](const reply& r, std::uint32_t k) {
            // Buffer k of a fetch_results answer: one kept engine_reply frame, as its own reply
            // (copied out: a fetch is rare, and the copy owns its bytes like any reply).
            auto v = r.frame.bytes ? std::optional(r.frame.view()) : std::nullopt;
            if (!v || k >= v->nbufs()) throw py::index_error("no kept reply " + std::to_string(k) + " in this answer");
            auto bytes = std::make_shared<proto::byte_buffer>(std::max<std::uint64_t>(v->buf_len(k), 1));
            std::memcpy(bytes->data(), v->data() + v->buf_offset(k), v->buf_len(k));
            auto out = std::make_shared<reply>();
            out->frame.bytes = std::move(bytes);
            auto inner = out->frame.view();
            if (!proto::is(inner, proto::message_type::engine_reply)) throw proto::frame_error("a kept result is not an engine_reply");
            out->meta = proto::decode<proto::engine_reply>(inner);
            return std::shared_ptr<reply>(std::move(out));
        })
        .def("buffers", [](const reply& r) {
            if (!r.frame.bytes) return py::list();
            auto v = r.frame.view();
            std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
            for (std::uint32_t i = 0; i < v.nbufs(); ++i) ranges.emplace_back(v.buf_offset(i), v.buf_len(i));
            return views_of(py::cast(blob{r.frame.bytes}), ranges);
        });

    py::class_<connection> conn(m, "connection");
    conn.def(py::init([](const std::string& host, int port, const std::string& key, double timeout) {
                 py::gil_scoped_release nogil;
                 return std::make_unique<connection>(host, port, key, timeout);
             }),
             py::arg("host"), py::arg("port"), py::arg("key"), py::arg("timeout"))
        .def_property_readonly("client_no", &connection::client_no)
        .def_property_readonly("engines", &connection::engines)
        .def_property_readonly("job_id", &connection::job_id)
        .def_property_readonly("local", &connection::local);
    // send(msg, ...) for every request type; overloads are tried in order: the ones sent by
    // the thousand first.
    conn.def("send", &send_as<proto::task_request>).def("send", &send_as<proto::apply_request>);
    proto::for_each_message([&](auto tag) {
        using T = decltype(tag);
        if constexpr (requires(T t) { t.r; }) {
            if constexpr (!std::is_same_v<T, proto::task_request> && !std::is_same_v<T, proto::apply_request>)
                conn.def("send", &send_as<T>);
        }
    });
    // Waits in slices so Ctrl-C (a pending Python signal) interrupts a blocking wait at once.
    // Returns (replies, output chunks) once complete and taken, None otherwise (time-out,
    // connection closed, or another thread took it). `holder`, if given, gets the completion as
    // its `_taken` attribute before anything Python runs: a Ctrl-C that lands right after the
    // take then cannot lose it.
    conn.def(
            "wait_take",
            [](connection& c, std::uint64_t id, std::optional<double> timeout, py::object holder) -> py::object {
                const auto end = deadline_of(timeout);
                for (;;) {
                    const auto slice = std::min(end, proto::clock::now() + std::chrono::milliseconds(100));
                    std::optional<completion> o;
                    {
                        py::gil_scoped_release nogil;
                        o = c.wait_take(id, slice);
                    }
                    if (o) {
                        py::object out = completion_to_python(std::move(o));
                        if (!holder.is_none()) holder.attr("_taken") = out;
                        return out;
                    }
                    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
                    if (c.requests().closed() || !c.requests().pending(id) || proto::clock::now() >= end) return py::none();
                }
            },
            py::arg("id"), py::arg("timeout") = py::none(), py::arg("holder") = py::none())
        .def("take", [](connection& c, std::uint64_t id) { return completion_to_python(c.requests().take(id)); })
        .def("pending", [](connection& c, std::uint64_t id) { return c.requests().pending(id); })
        .def("abandon", [](connection& c, std::optional<std::uint64_t> id) { return c.requests().abandon(id); },
             py::arg("id") = py::none())
        .def(
            "next_completed",
            [](connection& c, double timeout) {
                py::gil_scoped_release nogil;
                return c.requests().next_completed(deadline_of(timeout));
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
        .def("take_output", [](connection& c, std::uint64_t id) { return output_list(c.requests().take_output(id)); })
        .def("take_events", [](connection& c) { return c.requests().take_events(); })
        // Registers request `id` (one this client numbered but does not send itself: a task the
        // controller resubmits for it) so its `replies` replies are filed.
        .def("expect", [](connection& c, std::uint64_t id, std::size_t replies) { c.requests().add(id, replies); })
        .def("release", &connection::release)
        .def_property_readonly("closed", [](connection& c) { return c.requests().closed(); })
        .def_property_readonly("close_reason", [](connection& c) { return c.requests().close_reason(); })
        .def("close", [](connection& c) {
            py::gil_scoped_release nogil;
            c.close();
        });
}
