// _pcluster_engine: what pcluster._kernel (Python) needs from the engine's C++ side - output
// capture, interrupts, last words. Outside an engine (docs, tests of the kernel) every function
// does nothing.
#include <pybind11/embed.h>
#include <pybind11/stl.h>

#include "output_capture.hpp"
#include "pcluster/mpi/control.hpp"
#include "pcluster/protocol/config.hpp"
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
    // pcluster.engine.comm after a death: the survivors' communicator of the newest epoch, as
    // (Fortran handle, engine ids), once built. Bounded: the handshake may wait for a silent
    // death on another host to be noticed (PCLUSTER_DEAD_AFTER_S) before the build begins.
    m.def("survivors_comm", []() -> py::object {
        if (!current_watch) throw std::runtime_error("pcluster.engine.comm exists on engines only");
        const double dead_after = pcluster::config::number(pcluster::config::knob::dead_after_s);
        const auto limit = std::chrono::milliseconds(static_cast<long long>(1000 * (dead_after + 10)));
        std::optional<pcluster::engine::epoch_change> c;
        {
            py::gil_scoped_release nogil;  // the user's other Python threads keep running
            c = current_watch->newest_built(limit);
        }
        if (!c)
            throw std::runtime_error(
                "pcluster.engine.comm: an engine died and the survivors' communicator was not built within " +
                std::to_string(limit.count() / 1000) +
                " s: most likely another engine died while it was being built, and MPI cannot build one after that "
                "(see docs/faults.md). Requests from the client keep working; restart the job to use comm again.");
        return py::make_tuple(MPI_Comm_c2f(c->engines), py::cast(c->alive));
    });
    m.def("interrupt_signal", [] { return pcluster::engine::watch::interrupt_signal(); });
    // The engine is about to exit with `code` (os._exit): tell the controller how it died.
    m.def("last_words", [](int code) {
        if (!current_watch) return;
        py::gil_scoped_release nogil;
        current_watch->last_words(pcluster::mpi_wire::death_exit, static_cast<std::uint64_t>(code & 0xff),
                                  std::chrono::milliseconds(500));
    });
}
