#include "pcluster/mpi/runtime.hpp"

#include <atomic>
#include <cstdlib>
#include <mutex>

#ifdef PCLUSTER_HAVE_PMIX
#include <pmix.h>
#endif

namespace pcluster::mpi_wire {

namespace {
std::atomic<bool> died{false};
}  // namespace

void mark_peer_died() { died.store(true); }
bool peer_died() { return died.load(); }

#ifdef PCLUSTER_HAVE_PMIX
namespace {
extern "C" void job_control_done(pmix_status_t, pmix_info_t*, size_t, void*, pmix_release_cbfunc_t release, void* data) {
    if (release) release(data);
}
}  // namespace

bool ask_runtime_to_kill(int world_rank) {
    if (!std::getenv("OMPI_MCA_orte_hnp_uri")) return false;  // not under mpirun (srun, singleton)
    static std::mutex mu;
    static bool ready = false;
    static pmix_proc_t me;
    std::lock_guard lk(mu);
    if (!ready) {
        if (PMIx_Init(&me, nullptr, 0) != PMIX_SUCCESS) return false;
        ready = true;
    }
    pmix_proc_t target;
    PMIX_LOAD_PROCID(&target, me.nspace, world_rank < 0 ? PMIX_RANK_WILDCARD : static_cast<pmix_rank_t>(world_rank));
    pmix_info_t kill;
    PMIX_INFO_LOAD(&kill, PMIX_JOB_CTRL_KILL, nullptr, PMIX_BOOL);
    return PMIx_Job_control_nb(&target, 1, &kill, 1, job_control_done, nullptr) == PMIX_SUCCESS;
}
#else
bool ask_runtime_to_kill(int) { return false; }
#endif

}  // namespace pcluster::mpi_wire
