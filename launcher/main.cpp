// `pcluster`: one MPI program for the whole job. Rank 0 is the controller (and starts the
// bridge), ranks 1..N-1 are engines. Run it as `mpirun -n N pcluster [options]`.
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <unistd.h>
#include <csignal>

#include "controller.hpp"
#include "engine.hpp"
#include "pcluster/mpi/idle.hpp"
#include "pcluster/mpi/runtime.hpp"
#include "pcluster/protocol/config.hpp"

#ifndef PCLUSTER_PYTHON_EXECUTABLE
#define PCLUSTER_PYTHON_EXECUTABLE "/usr/bin/python3"
#endif

namespace {

// Subcommands that manage jobs rather than being one (submit, jobs, attach, cancel, run): they
// need no MPI, so they are handed to the Python CLI (pcluster.cli) before MPI is touched.
constexpr const char* subcommands[] = {"submit", "jobs", "attach", "cancel", "run"};

[[noreturn]] void run_python_cli(int argc, char** argv) {
    // A build tree's package (<bin>/../python) comes first; an installed one is on Python's path.
    std::error_code ec;
    const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    const auto pkg = exe.parent_path().parent_path() / "python";
    if (!ec && std::filesystem::exists(pkg / "pcluster" / "__init__.py")) {
        const char* old = std::getenv("PYTHONPATH");
        const std::string path = pkg.string() + (old && *old ? std::string(":") + old : std::string());
        setenv("PYTHONPATH", path.c_str(), 1);
    }
    if (!ec) setenv("PCLUSTER_EXE", exe.c_str(), 0);
    std::vector<char*> args = {const_cast<char*>(PCLUSTER_PYTHON_EXECUTABLE), const_cast<char*>("-m"),
                               const_cast<char*>("pcluster.cli")};
    for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
    args.push_back(nullptr);
    execv(PCLUSTER_PYTHON_EXECUTABLE, args.data());
    std::fprintf(stderr, "pcluster: cannot run %s for `pcluster %s`: %s\n", PCLUSTER_PYTHON_EXECUTABLE, argv[1],
                 std::strerror(errno));
    std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc > 1)
        for (const char* cmd : subcommands)
            if (std::strcmp(argv[1], cmd) == 0) run_python_cli(argc, argv);
    pcluster::controller::options opt;
    CLI::App app{"pcluster: interactive parallel Python over MPI.\n"
                 "Start with `mpirun --enable-recovery -n N pcluster`: rank 0 becomes the controller, ranks 1..N-1\n"
                 "Python engines (--enable-recovery keeps the job when an engine dies; srun does so by itself);\n"
                 "clients attach through the connection file with pcluster.Client().\n"
                 "Managing jobs (no MPI needed): pcluster submit | jobs | attach | cancel | run  (each with --help)."};
    app.add_option("-f,--connection-file", opt.connection_file,
                   "where to write the connection file (default: $PCLUSTER_CONNECTION_FILE, else in a SLURM job "
                   "<dir>/slurm-<job id>.json, else <dir>/connection.json; <dir>: $PCLUSTER_CONNECTION_DIR or ~/.pcluster)");
    app.add_option("--ip", opt.ip,
                   "address the bridge listens on (default: 127.0.0.1; in a SLURM job submitted from another host, the address that host reaches; 0.0.0.0 for all interfaces)");
    app.add_option("--port", opt.port, "TCP port for clients (default: a free port)")->check(CLI::Range(0, 65535));
    app.add_option("--max-frame-gib", opt.max_frame_gib, "the largest request a client may send, in GiB (default 16)")
        ->check(CLI::Range(0.001, 1024.0));
    app.add_option("--log-level", opt.log_level, "trace, debug, info, warn, error")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
    app.footer(pcluster::config::describe());
    // Parse before MPI_Init so --help and bad options need no MPI job at all; the same for bad
    // settings: every rank refuses them at once, naming the variable.
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    try {
        pcluster::config::check_config();
    } catch (const pcluster::config::config_error& e) {
        std::fprintf(stderr, "pcluster: %s\n", e.what());
        return 2;
    }
    spdlog::set_level(spdlog::level::from_str(opt.log_level));
    spdlog::set_pattern("pcluster %l: %v");

    pcluster::mpi_wire::keep_freed_memory();
    // The engines' interrupt signal goes to the thread that runs Python only: blocked here, before
    // MPI and our own threads start (they inherit the mask), unblocked by the engine loop.
    sigset_t interrupt;
    sigemptyset(&interrupt);
    sigaddset(&interrupt, SIGRTMIN + static_cast<int>(pcluster::config::integer(pcluster::config::knob::interrupt_signal)));
    pthread_sigmask(SIG_BLOCK, &interrupt, nullptr);
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size < 2) {
        std::fprintf(stderr,
                     "pcluster: needs at least 2 MPI ranks (rank 0 is the controller, the others are engines).\n"
                     "          Start it with e.g. `mpirun -n 5 pcluster` for 4 engines.\n");
        MPI_Finalize();
        return 2;
    }
    if (provided < MPI_THREAD_MULTIPLE && rank == 0)
        spdlog::warn("the MPI library gives thread level {} rather than MPI_THREAD_MULTIPLE", provided);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);

    int status = 0;
    try {
        if (rank == 0) {
            std::error_code ec;
            auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
            opt.bridge_path = (exe.parent_path() / "pcluster-bridge").string();
            status = pcluster::controller::run(MPI_COMM_WORLD, opt);
        } else {
            status = pcluster::engine::run(MPI_COMM_WORLD);
        }
    } catch (const std::exception& e) {
        // An uncaught error on any rank ends the whole job with a reason, not a hang.
        spdlog::critical("rank {}: {}", rank, e.what());
        MPI_Abort(MPI_COMM_WORLD, 4);
    }
    if (pcluster::mpi_wire::peer_died()) {
        // MPI_Finalize waits for every rank, a dead one included (it can hang): leave without it.
        std::fflush(nullptr);
        // Under mpirun, after deaths on other hosts its daemons may never report every rank ended
        // (seen: two SIGKILLed engines on the other host, the third exited after the shutdown,
        // and mpirun waited forever): the controller, last to finish, asks it to end the job.
        // The engines answered the shutdown already; a moment for them to exit on their own.
        if (rank == 0) {
            std::this_thread::sleep_for(std::chrono::milliseconds(300));
            if (pcluster::mpi_wire::ask_runtime_to_kill(-1)) std::this_thread::sleep_for(std::chrono::milliseconds(500));
        }
        ::_exit(status);
    }
    MPI_Finalize();
    return status;
}
