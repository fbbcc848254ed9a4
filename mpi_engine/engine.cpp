#include "engine.hpp"

#include <pybind11/embed.h>
#include <pybind11/stl.h>

#include <spdlog/spdlog.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <optional>

#include <pthread.h>
#include <unistd.h>

#include "output_capture.hpp"
#include "watch.hpp"
#include "pcluster/mpi/envelope.hpp"
#include "pcluster/mpi/idle.hpp"
#include "pcluster/mpi/job_comms.hpp"
#include "pcluster/mpi/runtime.hpp"
#include "pcluster/mpi/wire.hpp"
#include "pcluster/protocol/codec.hpp"

#ifndef PCLUSTER_PYTHON_EXECUTABLE
#define PCLUSTER_PYTHON_EXECUTABLE "/usr/bin/python3"
#endif

namespace py = pybind11;

namespace pcluster::engine {

namespace proto = pcluster::protocol;
namespace wire = pcluster::mpi_wire;

namespace {

// The interpreter, configured so that sys.executable is the interpreter we were built against
// (otherwise it is whatever `python3` comes first on PATH, and subprocesses would use that).
py::scoped_interpreter make_interpreter() {
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.parse_argv = 0;
    PyStatus st = PyConfig_SetBytesString(&config, &config.executable, PCLUSTER_PYTHON_EXECUTABLE);
    if (PyStatus_Exception(st)) throw std::runtime_error("cannot set sys.executable");
    return py::scoped_interpreter(&config, 0, nullptr, false);
}

// Makes a build-tree run work without installing: <bin>/../python holds the package there.
void add_build_tree_path() {
    std::error_code ec;
    auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec) return;
    auto dir = exe.parent_path().parent_path() / "python";
    if (std::filesystem::exists(dir / "pcluster" / "__init__.py"))
        py::module_::import("sys").attr("path").attr("insert")(0, dir.string());
}

py::bytearray new_bytearray(std::uint64_t n) {
    PyObject* o = PyByteArray_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n));
    if (!o) throw py::error_already_set();
    return py::reinterpret_steal<py::bytearray>(o);
}

char* data_of(const py::bytearray& b) { return PyByteArray_AsString(b.ptr()); }

std::string hostname() {
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    return host;
}

// The engine loop: receives requests on both channels, runs each in Python
// (pcluster._kernel.handle) in the controller's issue order, and replies point to point.
class engine {
public:
    // A reply frame as the kernel left it: head, pickle stream, out-of-band buffers, still owned
    // by their Python objects (so a large result is sent from where it lies, not copied).
    // Destroy with the GIL held.
    struct reply_parts {
        py::list keep;
        std::vector<py::buffer_info> infos;
        std::vector<char> own;
        std::vector<std::span<const char>> spans;
    };

    engine(const wire::job_comms& comms, py::module_ kernel)
        : id_(comms.world.rank() - 1), n_(comms.n_engines()), kernel_(std::move(kernel)),
          collective_(comms.collective), direct_(comms.direct), reply_(comms.reply), envelope_(wire::envelope_layout(n_).size()),
          direct_buf_(wire::direct_message_size), capture_(id_, reply_), watch_(comms, pthread_self()), bell_(comms.bell) {
        current_capture = &capture_;
        // Every thread of ours exists now, with the interrupt signal blocked (launcher's main):
        // only this one, which runs Python, takes it.
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, watch::interrupt_signal());
        pthread_sigmask(SIG_UNBLOCK, &s, nullptr);
    }
    ~engine() {
        current_capture = nullptr;
        py::gil_scoped_acquire gil;
        graveyard_.clear();
    }

    void run() {
        post_collective();
        post_direct();
        wire::backoff idle;
        std::optional<py::gil_scoped_release> nogil{std::in_place};
        while (!stop_) {
            if (watch_.epoch() != epoch_) {
                nogil.reset();
                switch_epoch();
                nogil.emplace();
            }
            if (collective_ == MPI_COMM_NULL && watch_.built() == epoch_) {
                nogil.reset();
                take_communicators();
                nogil.emplace();
            }
            poll_both();
            // Each channel's next request runs once every request issued before it on the other
            // channel has run: that replays the controller's issue order. A direct request issued
            // after a death waits until this engine is in that epoch too.
            if (collective_ready_ && slot().direct_before <= direct_done_) {
                nogil.reset();
                const bool completed = run_collective();
                nogil.emplace();
                if (completed) {  // else a peer died under it: the epoch switch comes next
                    ++collective_done_;
                    collective_ready_ = false;
                    if (!stop_) post_collective();
                }
                idle.reset();
            } else if (direct_ready_ && dhead_.collective_before <= collective_done_ && dhead_.epoch <= epoch_) {
                nogil.reset();
                run_direct();
                nogil.emplace();
                ++direct_done_;
                direct_ready_ = false;
                post_direct();
                idle.reset();
            } else if (bell_ && idle.dozing()) {
                // Idle for a while: sleep in the kernel until the controller rings (or 1 s).
                bell_->sleep(id_, std::chrono::milliseconds(1000), [&] {
                    poll_both();
                    return !runnable() && watch_.epoch() == epoch_ && !(collective_ == MPI_COMM_NULL && watch_.built() == epoch_);
                });
            } else {
                idle.idle();
            }
        }
        // The direct receive posted last is never matched; withdraw it before the communicator goes.
        if (direct_req_ != MPI_REQUEST_NULL) {
            MPI_Cancel(&direct_req_);
            MPI_Wait(&direct_req_, MPI_STATUS_IGNORE);
        }
    }

private:
    bool runnable() const {
        return (collective_ready_ && slot().direct_before <= direct_done_) ||
               (direct_ready_ && dhead_.collective_before <= collective_done_ && dhead_.epoch <= epoch_);
    }

    // One progress call for both channels: with oversubscription Open MPI yields the core inside
    // every idle progress call, so two separate tests would mean two context switches.
    void poll_both() {
        MPI_Request reqs[2] = {collective_ready_ ? MPI_REQUEST_NULL : collective_req_,
                               direct_ready_ ? MPI_REQUEST_NULL : direct_req_};
        int idx[2], n = 0;
        wire::check(MPI_Testsome(2, reqs, &n, idx, MPI_STATUSES_IGNORE), "MPI_Testsome");
        for (int i = 0; i < n && n != MPI_UNDEFINED; ++i) {
            if (idx[i] == 0) {
                collective_ready_ = true;
                collective_req_ = MPI_REQUEST_NULL;
                // Every engine takes part in a collective request, and one that forwards the
                // broadcast may be what the others wait for: wake the sleepers (cheap if none).
                if (bell_) bell_->ring_all();
            } else {
                direct_ready_ = true;
                direct_req_ = MPI_REQUEST_NULL;
                std::memcpy(&dhead_, direct_buf_.data(), sizeof dhead_);
            }
        }
    }
    wire::envelope_view envelope() const { return {envelope_, n_}; }
    wire::envelope_slot slot() const { return envelope().slot(id_); }
    void post_collective() {
        wire::check(MPI_Ibcast(envelope_.data(), static_cast<int>(envelope_.size()), MPI_BYTE, 0, collective_, &collective_req_),
                    "MPI_Ibcast");
    }
    void post_direct() {
        wire::check(MPI_Irecv(direct_buf_.data(), static_cast<int>(direct_buf_.size()), MPI_BYTE, 0, wire::tag_direct_head,
                              direct_, &direct_req_),
                    "MPI_Irecv");
    }

    // Waits with the GIL released so the user's own Python threads keep running.
    static void wait(std::vector<MPI_Request>& reqs) {
        py::gil_scoped_release nogil;
        wire::wait_all(reqs);
    }

    // A collective transfer stops at a peer's death: the broadcast tree may run through it.
    struct collective_lost {};
    void wait_collective(std::vector<MPI_Request>& reqs) {
        py::gil_scoped_release nogil;
        wire::backoff b;
        while (!wire::test_all(reqs)) {
            if (watch_.epoch() != epoch_) throw collective_lost{};
            b.idle(true);
        }
    }

    // Another engine died: the controller issued `collectives_issued` collective requests on the
    // old communicators; those this engine has not completed never reach it (it tells the
    // controller which, on the reply channel, after its earlier replies). Direct requests of the
    // new epoch run from now on; collective ones come once the survivors' communicators are
    // built (take_communicators), which may be never (engine_channels.hpp). Buffers MPI may
    // still write into are kept for good.
    void switch_epoch() {
        const std::uint64_t e = watch_.epoch();
        wire::mark_peer_died();  // MPI_Finalize would wait for the dead rank: this process exits without it
        const auto c = watch_.change(e);
        if (!c) throw std::runtime_error("epoch " + std::to_string(e) + " was announced without its change");
        graveyard_envelopes_.push_back(std::move(envelope_));  // an abandoned receive may still land there
        envelope_.assign(wire::envelope_layout(n_).size(), 0);
        collective_req_ = MPI_REQUEST_NULL;
        collective_ready_ = false;
        collective_ = MPI_COMM_NULL;
        const std::uint64_t done = collective_done_;
        collective_done_ = std::max(collective_done_, c->collectives_issued);
        epoch_ = e;
        wire::control_msg report{wire::control_kind::epoch_done, id_, done, e};
        std::vector<MPI_Request> reqs;
        wire::isend_bytes(&report, sizeof report, 0, wire::tag_control, reply_, reqs);
        wire::wait_all(reqs);
        kernel_.attr("rebind")(py::none(), c->alive);  // the GIL is held here
        spdlog::debug("engine {}: epoch {}: {} collective requests done, {} issued before it; {} engines left", id_, e, done,
                      c->collectives_issued, c->alive.size());
    }

    // The survivors' communicators of the current epoch are built: collective requests resume.
    void take_communicators() {
        const auto c = watch_.change(epoch_);
        collective_ = c->collective;
        kernel_.attr("rebind")(MPI_Comm_c2f(c->engines), c->alive);  // the GIL is held here
        post_collective();
        spdlog::debug("engine {}: epoch {}: communicators of the {} survivors built", id_, epoch_, c->alive.size());
    }

    // Every engine takes part in every collective request's broadcast and scatter; only the
    // targets run it.
    // False when the request could not be received (a peer died under its broadcast).
    bool run_collective() {
        const auto env = envelope();
        const auto h = env.head();
        const auto s = env.slot(id_);
        py::bytearray common = new_bytearray(h.common_len);
        std::optional<py::bytearray> part;
        std::vector<MPI_Request> reqs;
        if (wire::envelope_layout(n_).carries_inline(h.common_len))
            std::memcpy(data_of(common), env.inline_bytes().data(), h.common_len);
        else
            wire::ibcast_bytes(data_of(common), h.common_len, collective_, reqs);
        if (h.has_parts) {
            part = new_bytearray(s.part_len);
            if (wire::parts_fit_scatter(env.part_lens())) {
                MPI_Request r;
                wire::check(MPI_Iscatterv(nullptr, nullptr, nullptr, MPI_BYTE, data_of(*part), static_cast<int>(s.part_len),
                                          MPI_BYTE, 0, collective_, &r),
                            "MPI_Iscatterv");
                reqs.push_back(r);
            } else if (s.targeted) {
                wire::irecv_bytes(data_of(*part), s.part_len, 0, wire::tag_collective_part, collective_, reqs);
            }
        }
        try {
            wait_collective(reqs);
        } catch (const collective_lost&) {
            // Never completes: MPI may still write into these; keep them. The controller learns
            // at the epoch switch that this request did not reach us.
            graveyard_.push_back(common);
            if (part) graveyard_.push_back(*part);
            return false;
        }
        if (!s.targeted) return true;
        const reply_parts reply = handle(common, part ? py::object(*part) : py::none());
        stop_ = is_shutdown(common);
        send(reply);
        return true;
    }

    void run_direct() {
        py::bytearray common = new_bytearray(dhead_.common_len);
        std::optional<py::bytearray> part;
        if (dhead_.has_parts) part = new_bytearray(dhead_.part_len);
        if (wire::direct_inline(dhead_.common_len, dhead_.part_len)) {
            const char* p = direct_buf_.data() + sizeof dhead_;
            std::memcpy(data_of(common), p, dhead_.common_len);
            if (part) std::memcpy(data_of(*part), p + dhead_.common_len, dhead_.part_len);
        } else {
            std::vector<MPI_Request> reqs;
            wire::irecv_bytes(data_of(common), dhead_.common_len, 0, wire::tag_direct_data, direct_, reqs);
            if (part) wire::irecv_bytes(data_of(*part), dhead_.part_len, 0, wire::tag_direct_data, direct_, reqs);
            wait(reqs);
        }
        const reply_parts reply = handle(common, part ? py::object(*part) : py::none());
        stop_ = is_shutdown(common);  // after a death the shutdown may come direct
        send(reply);
    }

    void send(const reply_parts& reply) {
        std::vector<MPI_Request> reqs;
        std::vector<std::uint64_t> lens;
        std::vector<char> flat;
        wire::send_reply(reply.spans, reply_, direct_, reqs, lens, flat);
        wait(reqs);
    }

    static bool is_shutdown(const py::bytearray& frame) {
        proto::frame_prefix p;
        std::memcpy(&p, data_of(frame), sizeof p);
        return p.type == static_cast<std::uint16_t>(proto::message_type::shutdown_request);
    }

    // The request boundary: pcluster._kernel.handle catches everything the user's code raises;
    // this catches what escapes the kernel itself, so no request ever kills the engine.
    reply_parts handle(const py::bytearray& frame, py::object part) {
        reply_parts out;
        if (watch_.any_aborted()) {  // view.abort: a request aborted before it started is not run
            try {
                const auto id = proto::decode_route(proto::frame_view(data_of(frame), PyByteArray_Size(frame.ptr()))).id;
                if (watch_.take_aborted(id)) {
                    out.own = proto::encode(proto::error_reply(id, proto::reply_origin::engine, id_, proto::error_kind::task_aborted,
                                                               "aborted (view.abort) before it started on this engine"))
                                  .flatten();
                    out.spans.emplace_back(out.own.data(), out.own.size());
                    return out;
                }
            } catch (const std::exception&) {
            }
        }
        try {
            out.keep = kernel_.attr("handle")(frame, part);
            for (auto b : out.keep) {
                out.infos.push_back(py::reinterpret_borrow<py::buffer>(b).request());
                const auto& i = out.infos.back();
                out.spans.emplace_back(static_cast<const char*>(i.ptr), static_cast<std::size_t>(i.size * i.itemsize));
            }
            return out;
        } catch (const std::exception& e) {
            std::uint64_t id = 0;
            try {
                id = proto::decode_route(proto::frame_view(data_of(frame), PyByteArray_Size(frame.ptr()))).id;
            } catch (...) {
            }
            reply_parts err;
            err.own = proto::encode(proto::error_reply(id, proto::reply_origin::engine, id_, proto::error_kind::engine_internal,
                                                       e.what()))
                          .flatten();
            err.spans.emplace_back(err.own.data(), err.own.size());
            return err;
        }
    }

    int id_, n_;
    py::module_ kernel_;
    MPI_Comm collective_, direct_, reply_;
    std::vector<char> envelope_;
    std::vector<char> direct_buf_;  // a direct head, and the request itself when small (wire::direct_inline)
    MPI_Request collective_req_ = MPI_REQUEST_NULL, direct_req_ = MPI_REQUEST_NULL;
    wire::direct_head dhead_{};
    output_capture capture_;
    watch watch_;
    std::shared_ptr<wire::doorbell> bell_;  // null: not on the controller's host
    bool collective_ready_ = false, direct_ready_ = false, stop_ = false;
    std::uint64_t collective_done_ = 0, direct_done_ = 0;
    std::uint64_t epoch_ = 0;  // deaths seen: which collective communicator is current
    std::vector<py::object> graveyard_;                 // buffers of abandoned receives
    std::vector<std::vector<char>> graveyard_envelopes_;
};

}  // namespace

int run(MPI_Comm world) {
    auto guard = make_interpreter();
    std::string fatal;
    py::module_ kernel;
    const auto comms = wire::open_job(
        world,
        [&](const boost::mpi::communicator& engines) {
            try {
                add_build_tree_path();
                kernel = py::module_::import("pcluster._kernel");
                kernel.attr("start")(engines.rank(), engines.size(), MPI_Comm_c2f(engines));
            } catch (const std::exception& e) {
                fatal = e.what();
            }
            return proto::engine_info{engines.rank(), hostname(), getpid()};
        },
        nullptr);
    if (!fatal.empty()) {
        // Without its kernel an engine cannot serve; abort the job with the reason rather than
        // leave the controller waiting forever.
        spdlog::critical("engine {}: cannot start Python kernel: {}", comms.world.rank() - 1, fatal);
        MPI_Abort(world, 3);
    }
    install_fatal_signal_handlers();  // after MPI_Init: Open MPI's own handlers come next in line
    engine(comms, kernel).run();
    return 0;
}

}  // namespace pcluster::engine
