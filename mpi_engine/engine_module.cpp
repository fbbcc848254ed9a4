// _pcluster_engine: what pcluster._kernel (Python) needs from the engine's C++ side - output
// capture, interrupts, last words. Outside an engine (docs, tests of the kernel) every function
// does nothing.
#include <pybind11/embed.h>

#include "output_capture.hpp"
#include "pcluster/mpi/control.hpp"
#include "watch.hpp"

namespace py = pybind11;
using pcluster::engine::current_capture;
using pcluster::engine::current_watch;

PYBIND11_EMBEDDED_MODULE(_pcluster_engine, m) {
    m.def("begin", [](std::uint64_t id, bool capture) {
        if (current_capture) current_capture->begin(id, capture);
        if (current_watch) current_watch->running(id);
    });
    m.def("write", [](int stream, std::string_view text) { return current_capture && current_capture->write(stream, text); });
    // (stdout, stderr) not yet streamed, or None when both are empty (most requests: no
    // strings to make). Ends the request for the watch too: interrupts no longer apply.
    m.def("finish", []() -> py::object {
        if (current_watch) current_watch->running(0);
        auto* c = current_capture;
        if (!c) return py::none();
        std::unique_lock send(c->send_mutex(), std::try_to_lock);
        std::pair<std::string, std::string> out;
        if (send.owns_lock()) {
            out = c->finish(send);
        } else {
            py::gil_scoped_release nogil;  // the streaming thread is sending a chunk: wait for it
            send.lock();
            out = c->finish(send);
        }
        if (out.first.empty() && out.second.empty()) return py::none();
        auto text = [](const std::string& b) {  // what user code wrote was str: decodes, but never raise here
            return py::reinterpret_steal<py::object>(
                PyUnicode_DecodeUTF8(b.data(), static_cast<Py_ssize_t>(b.size()), "replace"));
        };
        return py::make_tuple(text(out.first), text(out.second));
    });
    // Whether the pending interrupt is for request `id` (consumed if so): the Python handler of
    // the interrupt signal raises KeyboardInterrupt only then, so a late signal cannot hit the
    // next request.
    m.def("take_interrupt", [](std::uint64_t id) { return current_watch && current_watch->take_interrupt(id); });
    m.def("interrupt_signal", [] { return pcluster::engine::watch::interrupt_signal(); });
    // The engine is about to exit with `code` (os._exit): tell the controller how it died.
    m.def("last_words", [](int code) {
        if (!current_watch) return;
        py::gil_scoped_release nogil;
        current_watch->last_words(pcluster::mpi_wire::death_exit, static_cast<std::uint64_t>(code & 0xff),
                                  std::chrono::milliseconds(500));
    });
}
