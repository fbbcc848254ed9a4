#include "engine.hpp"

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <pybind11/embed.h>
#include <pybind11/stl.h>

#include <spdlog/spdlog.h>

#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>

#include <unistd.h>

#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/mpi_wire.hpp"

#ifndef PCLUSTER_PYTHON_EXECUTABLE
#define PCLUSTER_PYTHON_EXECUTABLE "/usr/bin/python3"
#endif

namespace py = pybind11;

namespace pcluster::engine {

namespace proto = pcluster::protocol;
namespace wire = pcluster::mpi_wire;

namespace detail {

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

// What the running request prints, when its client asked for it (route_flags::capture_output).
// Python's sys.stdout/sys.stderr write here (pcluster._kernel installs them). Once a request has
// run for `stream_after`, a thread of its own sends what accumulated every `stream_every` as
// protocol::output messages, so a client sees a long cell's prints while it runs, even while the
// cell sits in C code holding the GIL. finish() hands the rest to the reply.
//
// Ordering: a chunk is taken from the buffer and sent under send_mu_, and finish() takes
// send_mu_ first, so every output message of a request leaves before its reply.
class output_capture {
public:
    output_capture(int engine, MPI_Comm reply_comm) : engine_(engine), comm_(reply_comm) {
        stream_after_ = seconds_from_env("PCLUSTER_STREAM_AFTER", 0.5);
        stream_every_ = seconds_from_env("PCLUSTER_STREAM_EVERY", 0.1);
        // Sending from a second thread while the main thread uses MPI needs MPI_THREAD_MULTIPLE.
        int level = MPI_THREAD_SINGLE;
        MPI_Query_thread(&level);
        streaming_ = level == MPI_THREAD_MULTIPLE;
        thread_ = std::thread([this] { stream_loop(); });
    }
    ~output_capture() {
        {
            std::lock_guard lk(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }

    void begin(std::uint64_t id, bool capture) {
        std::lock_guard send(send_mu_);
        std::lock_guard lk(mu_);
        id_ = id;
        capturing_ = capture;
        started_ = clock::now();
        out_[0].clear();
        out_[1].clear();
        dropped_ = 0;
    }

    // False when no request captures: the caller writes to the real stream instead.
    bool write(int stream, std::string_view text) {
        std::lock_guard lk(mu_);
        if (!capturing_) return false;
        auto& b = out_[stream == 2 ? 1 : 0];
        if (b.size() + text.size() > max_buffered) {
            dropped_ += text.size();
            return true;
        }
        b.append(text);
        return true;
    }

    // Stops capturing; returns what was not streamed (stdout, stderr). `send` must hold
    // send_mu_ (see the class comment).
    std::pair<std::string, std::string> finish(std::unique_lock<std::mutex>& send) {
        (void)send;
        std::lock_guard lk(mu_);
        capturing_ = false;
        if (dropped_) {
            out_[1] += "\n[pcluster: " + std::to_string(dropped_) + " bytes of output dropped: more than " +
                       std::to_string(max_buffered >> 20) + " MiB were printed between two sends]\n";
            dropped_ = 0;
        }
        return {std::exchange(out_[0], {}), std::exchange(out_[1], {})};
    }

    std::mutex& send_mutex() { return send_mu_; }

private:
    using clock = std::chrono::steady_clock;
    static constexpr std::size_t max_buffered = std::size_t{64} << 20;
    static constexpr std::size_t max_chunk = std::size_t{1} << 20;

    static std::chrono::duration<double> seconds_from_env(const char* name, double dflt) {
        const char* v = std::getenv(name);
        return std::chrono::duration<double>(v ? std::atof(v) : dflt);
    }

    void stream_loop() {
        std::unique_lock lk(mu_);
        while (!stop_) {
            cv_.wait_for(lk, stream_every_);
            if (stop_) return;
            if (!streaming_ || !capturing_ || (out_[0].empty() && out_[1].empty()) ||
                clock::now() - started_ < stream_after_)
                continue;
            lk.unlock();
            send_chunk();
            lk.lock();
        }
    }

    void send_chunk() {
        std::lock_guard send(send_mu_);
        protocol::output o;
        {
            std::lock_guard lk(mu_);
            if (!capturing_) return;  // finish() came first: the reply carries it all
            o.id = id_;
            o.engine = engine_;
            for (int k = 0; k < 2; ++k) {
                auto& b = out_[k];
                std::size_t n = std::min(b.size(), max_chunk);
                // Never cut a UTF-8 character in two: back off to its first byte.
                while (n > 0 && n < b.size() && (static_cast<unsigned char>(b[n]) & 0xC0) == 0x80) --n;
                (k == 0 ? o.stdout_text : o.stderr_text).assign(b, 0, n);
                b.erase(0, n);
            }
        }
        const auto bytes = protocol::encode(o).flatten();
        if (MPI_Send(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, 0, wire::tag_output, comm_) != MPI_SUCCESS) {
            // The reply still carries what was not sent; stop streaming rather than end the engine.
            spdlog::error("engine {}: streaming output failed; output now comes with replies only", engine_);
            std::lock_guard lk(mu_);
            streaming_ = false;
        }
    }

    const int engine_;
    const MPI_Comm comm_;
    std::chrono::duration<double> stream_after_, stream_every_;
    std::mutex send_mu_;  // held while a chunk is taken and sent; see the class comment
    std::mutex mu_;
    std::condition_variable cv_;
    std::uint64_t id_ = 0;
    bool capturing_ = false;
    bool streaming_ = true;
    bool stop_ = false;
    clock::time_point started_{};
    std::string out_[2];
    std::size_t dropped_ = 0;
    std::thread thread_;
};

// The capture of this process's engine, for the embedded module below.
output_capture* current_capture = nullptr;

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


    engine(MPI_Comm world, int id, int n, py::module_ kernel) : id_(id), n_(n), kernel_(std::move(kernel)) {
        wire::check(MPI_Comm_dup(world, &bcomm_), "MPI_Comm_dup");
        wire::check(MPI_Comm_dup(world, &p2p_), "MPI_Comm_dup");
        wire::check(MPI_Comm_dup(world, &reply_), "MPI_Comm_dup");
        env_.resize(wire::envelope_size(n_));
        pbuf_.resize(wire::p_message_size);
        capture_.emplace(id_, reply_);
        current_capture = &*capture_;
    }
    ~engine() {
        current_capture = nullptr;
        capture_.reset();
        MPI_Comm_free(&bcomm_);
        MPI_Comm_free(&p2p_);
        MPI_Comm_free(&reply_);
    }

    void run() {
        post_b();
        post_p();
        wire::backoff idle;
        std::optional<py::gil_scoped_release> nogil{std::in_place};
        while (!stop_) {
            poll_both();
            if (b_ready_ && slot().p2p_before <= p_done_) {
                nogil.reset();
                run_b();
                nogil.emplace();
                ++b_done_;
                b_ready_ = false;
                if (!stop_) post_b();
                idle.reset();
            } else if (p_ready_ && phead_.bcast_before <= b_done_) {
                nogil.reset();
                run_p();
                nogil.emplace();
                ++p_done_;
                p_ready_ = false;
                post_p();
                idle.reset();
            } else {
                idle.idle();
            }
        }
        // The P receive posted last is never matched; withdraw it before the communicator goes.
        if (p_req_ != MPI_REQUEST_NULL) {
            MPI_Cancel(&p_req_);
            MPI_Wait(&p_req_, MPI_STATUS_IGNORE);
        }
    }

private:
    // One progress call for both channels: with oversubscription Open MPI yields the core inside
    // every idle progress call, so two separate tests would mean two context switches.
    void poll_both() {
        MPI_Request reqs[2] = {b_ready_ ? MPI_REQUEST_NULL : b_req_, p_ready_ ? MPI_REQUEST_NULL : p_req_};
        int idx[2], n = 0;
        wire::check(MPI_Testsome(2, reqs, &n, idx, MPI_STATUSES_IGNORE), "MPI_Testsome");
        for (int i = 0; i < n && n != MPI_UNDEFINED; ++i) {
            if (idx[i] == 0) {
                b_ready_ = true;
                b_req_ = MPI_REQUEST_NULL;
            } else {
                p_ready_ = true;
                p_req_ = MPI_REQUEST_NULL;
                std::memcpy(&phead_, pbuf_.data(), sizeof phead_);
            }
        }
    }
    const wire::envelope_head& head() const { return *reinterpret_cast<const wire::envelope_head*>(env_.data()); }
    const wire::envelope_slot& slot() const {
        return reinterpret_cast<const wire::envelope_slot*>(env_.data() + sizeof(wire::envelope_head))[id_];
    }
    void post_b() {
        wire::check(MPI_Ibcast(env_.data(), static_cast<int>(env_.size()), MPI_BYTE, 0, bcomm_, &b_req_), "MPI_Ibcast");
    }
    void post_p() {
        wire::check(MPI_Irecv(pbuf_.data(), static_cast<int>(pbuf_.size()), MPI_BYTE, 0, wire::tag_p_head, p2p_, &p_req_),
                    "MPI_Irecv");
    }

    // Waits with the GIL released so the user's own Python threads keep running.
    static void wait(std::vector<MPI_Request>& reqs) {
        py::gil_scoped_release nogil;
        wire::wait_all(reqs);
    }

    void run_b() {
        const auto h = head();
        const auto s = slot();
        py::bytearray blob = new_bytearray(h.blob_len);
        std::optional<py::bytearray> part;
        std::vector<MPI_Request> reqs;
        if (h.blob_len <= wire::inline_capacity(n_))
            std::memcpy(data_of(blob), env_.data() + wire::envelope_inline_offset(n_), h.blob_len);
        else
            wire::ibcast_bytes(data_of(blob), h.blob_len, bcomm_, reqs);
        if (h.has_parts) {
            part = new_bytearray(s.part_len);
            std::vector<std::uint64_t> lens(n_);
            const auto* slots = reinterpret_cast<const wire::envelope_slot*>(env_.data() + sizeof(wire::envelope_head));
            for (int e = 0; e < n_; ++e) lens[e] = slots[e].part_len;
            if (wire::parts_fit_scatterv(lens)) {
                MPI_Request r;
                wire::check(MPI_Iscatterv(nullptr, nullptr, nullptr, MPI_BYTE, data_of(*part), static_cast<int>(s.part_len),
                                          MPI_BYTE, 0, bcomm_, &r),
                            "MPI_Iscatterv");
                reqs.push_back(r);
            } else if (s.targeted) {
                wire::irecv_bytes(data_of(*part), s.part_len, 0, wire::tag_part, bcomm_, reqs);
            }
        }
        wait(reqs);
        if (!s.targeted) return;
        const reply_parts reply = handle(blob, part ? py::object(*part) : py::none());
        check_shutdown(blob);
        reply_to_controller(reply);
    }

    void reply_to_controller(const reply_parts& reply) {
        std::vector<MPI_Request> reqs;
        std::vector<std::uint64_t> lens;
        std::vector<char> flat;
        wire::send_reply(reply.spans, reply_, p2p_, reqs, lens, flat);
        wait(reqs);
    }

    void run_p() {
        py::bytearray blob = new_bytearray(phead_.blob_len);
        std::optional<py::bytearray> part;
        if (phead_.has_parts) part = new_bytearray(phead_.part_len);
        if (wire::p_inline(phead_.blob_len, phead_.part_len)) {
            const char* p = pbuf_.data() + sizeof phead_;
            std::memcpy(data_of(blob), p, phead_.blob_len);
            if (part) std::memcpy(data_of(*part), p + phead_.blob_len, phead_.part_len);
        } else {
            std::vector<MPI_Request> reqs;
            wire::irecv_bytes(data_of(blob), phead_.blob_len, 0, wire::tag_p_data, p2p_, reqs);
            if (part) wire::irecv_bytes(data_of(*part), phead_.part_len, 0, wire::tag_p_data, p2p_, reqs);
            wait(reqs);
        }
        const reply_parts reply = handle(blob, part ? py::object(*part) : py::none());
        reply_to_controller(reply);
    }

    void check_shutdown(const py::bytearray& blob) {
        proto::frame_prefix p;
        std::memcpy(&p, data_of(blob), sizeof p);
        if (p.type == static_cast<std::uint16_t>(proto::message_type::shutdown_request)) stop_ = true;
    }

    // The request boundary: pcluster._kernel.handle catches everything the user's code raises;
    // this catches what escapes the kernel itself, so no request ever kills the engine.
    reply_parts handle(const py::bytearray& frame, py::object part) {
        reply_parts out;
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
            proto::engine_reply rep;
            rep.id = id;
            rep.engine = id_;
            rep.status = proto::reply_status::error;
            rep.ename = "EngineInternalError";
            rep.evalue = e.what();
            reply_parts err;
            err.own = proto::encode(rep).flatten();
            err.spans.emplace_back(err.own.data(), err.own.size());
            return err;
        }
    }

    int id_, n_;
    py::module_ kernel_;
    MPI_Comm bcomm_, p2p_, reply_;
    std::vector<char> env_;
    std::vector<char> pbuf_;  // a P head, and the request itself when small (wire::p_inline)
    MPI_Request b_req_ = MPI_REQUEST_NULL, p_req_ = MPI_REQUEST_NULL;
    wire::p_head phead_{};
    std::optional<output_capture> capture_;
    bool b_ready_ = false, p_ready_ = false, stop_ = false;
    std::uint64_t b_done_ = 0, p_done_ = 0;
};

}  // namespace detail

// The engine's side of output capture, for pcluster._kernel (which also runs where no engine
// is: then nothing is captured).
PYBIND11_EMBEDDED_MODULE(_pcluster_engine, m) {
    m.def("begin", [](std::uint64_t id, bool capture) {
        if (detail::current_capture) detail::current_capture->begin(id, capture);
    });
    m.def("write", [](int stream, std::string_view text) {
        return detail::current_capture && detail::current_capture->write(stream, text);
    });
    // (stdout, stderr) not yet streamed, or None when both are empty (most requests: no
    // strings to make).
    m.def("finish", []() -> py::object {
        auto* c = detail::current_capture;
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
            return py::reinterpret_steal<py::object>(PyUnicode_DecodeUTF8(b.data(), static_cast<Py_ssize_t>(b.size()), "replace"));
        };
        return py::make_tuple(text(out.first), text(out.second));
    });
}

int run(MPI_Comm world) {
    namespace mpi = boost::mpi;
    mpi::communicator comm(world, mpi::comm_attach);
    const int id = comm.rank() - 1, n = comm.size() - 1;
    MPI_Comm engines;
    wire::check(MPI_Comm_split(world, 1, comm.rank(), &engines), "MPI_Comm_split");

    auto guard = detail::make_interpreter();
    int status = 0;
    std::string fatal;
    py::module_ kernel;
    try {
        detail::add_build_tree_path();
        kernel = py::module_::import("pcluster._kernel");
        kernel.attr("start")(id, n, MPI_Comm_c2f(engines));
    } catch (const std::exception& e) {
        fatal = e.what();
    }
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    mpi::gather(comm, std::to_string(getpid()) + " " + host, 0);
    {
        detail::engine eng(world, id, n, kernel);
        if (!fatal.empty()) {
            // Without its kernel an engine cannot serve; abort the job with the reason rather
            // than leave the controller waiting forever.
            spdlog::critical("engine {}: cannot start Python kernel: {}", id, fatal);
            MPI_Abort(world, 3);
        }
        eng.run();
    }
    MPI_Comm_free(&engines);
    return status;
}

}  // namespace pcluster::engine
