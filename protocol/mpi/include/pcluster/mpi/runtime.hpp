// Asking the MPI runtime for things MPI itself does not offer, through PMIx (Open MPI's mpirun
// and its daemons serve it). Open MPI 4.1 specific; everything degrades to "not done" elsewhere.
#pragma once

namespace pcluster::mpi_wire {

// Asks the runtime to end rank `world_rank` of this job, or every rank when -1. Needed under
// mpirun --enable-recovery: after a rank on another node died, mpirun otherwise waits forever for
// that node's daemon to report the rank's end, and a job whose controller died never ends
// (measured). Returns whether the request was made. Not under srun (SLURM ends steps itself).
bool ask_runtime_to_kill(int world_rank);

// A peer of this process died during the job: MPI_Finalize, which waits for every rank, must not
// be called then (it can hang); the process exits without it.
void mark_peer_died();
bool peer_died();

}  // namespace pcluster::mpi_wire
