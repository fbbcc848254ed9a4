#include "pcluster/mpi/doorbell.hpp"

#include <cerrno>
#include <climits>
#include <cstring>
#include <system_error>

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "pcluster/protocol/auth.hpp"

namespace pcluster::mpi_wire {

namespace {
std::size_t page_size(int n) { return 64 + 64 * static_cast<std::size_t>(n); }
}  // namespace

doorbell::doorbell(std::string name, void* map, std::size_t size, int n)
    : name_(std::move(name)), map_(map), size_(size), n_(n), head_(static_cast<header*>(map)),
      slots_(reinterpret_cast<slot*>(static_cast<char*>(map) + 64)) {}

std::unique_ptr<doorbell> doorbell::create(int n) {
    const std::string name = "/pcluster-bell-" + protocol::to_hex(protocol::random_bytes32()).substr(0, 24);
    const int fd = ::shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return nullptr;
    const std::size_t size = page_size(n);
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
        ::close(fd);
        ::shm_unlink(name.c_str());
        return nullptr;
    }
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) {
        ::shm_unlink(name.c_str());
        return nullptr;
    }
    std::memset(p, 0, size);  // a fresh page is zero anyway; the atomics start at 0
    return std::unique_ptr<doorbell>(new doorbell(name, p, size, n));
}

std::unique_ptr<doorbell> doorbell::attach(const std::string& name, int n) {
    const int fd = ::shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) return nullptr;
    struct stat st {};
    const std::size_t size = page_size(n);
    if (::fstat(fd, &st) != 0 || st.st_uid != ::geteuid() || static_cast<std::size_t>(st.st_size) < size) {
        ::close(fd);
        return nullptr;
    }
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) return nullptr;
    return std::unique_ptr<doorbell>(new doorbell(name, p, size, n));
}

doorbell::~doorbell() { ::munmap(map_, size_); }

void doorbell::unlink() { ::shm_unlink(name_.c_str()); }

// Shared futexes (no FUTEX_PRIVATE_FLAG): the word lives in a page several processes map.
void doorbell::wait(std::atomic<std::uint32_t>& word, std::uint32_t seen, std::chrono::milliseconds timeout) {
    timespec ts{static_cast<time_t>(timeout.count() / 1000), static_cast<long>(timeout.count() % 1000) * 1'000'000};
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT, seen, &ts, nullptr, 0);
    // EINTR (a signal), EAGAIN (rung already), ETIMEDOUT: all just mean "look again".
}

void doorbell::wake(std::atomic<std::uint32_t>& word) {
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

void doorbell::ring_slot(slot& s) {
    if (!s.sleeping.load(std::memory_order_acquire)) return;
    s.seq.fetch_add(1, std::memory_order_release);
    wake(s.seq);
}

void doorbell::ring(int engine) {
    std::atomic_thread_fence(std::memory_order_seq_cst);  // the work posted before is visible first
    if (head_->sleepers.load(std::memory_order_acquire) == 0) return;
    ring_slot(slots_[engine]);
}

void doorbell::ring_all() {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (head_->sleepers.load(std::memory_order_acquire) == 0) return;
    for (int e = 0; e < n_; ++e) ring_slot(slots_[e]);
}

}  // namespace pcluster::mpi_wire
