#include "pcluster/protocol/shm.hpp"

#include <cerrno>
#include <filesystem>
#include <system_error>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>

#include "pcluster/protocol/auth.hpp"

namespace pcluster::protocol {

std::shared_ptr<byte_buffer> byte_buffer::adopt_mapping(char* map, std::size_t n) {
    auto b = std::make_shared<byte_buffer>();
    b->map_ = map;
    b->size_ = n;
    return b;
}

byte_buffer::~byte_buffer() {
    if (map_) ::munmap(map_, size_ ? size_ : 1);
    if (on_release_) on_release_();
}

namespace {
[[noreturn]] void fail(const std::string& what) { throw std::system_error(errno, std::generic_category(), what); }
}  // namespace

shm_out create_shm(const std::string& owner, std::uint64_t size) {
    const std::string path = std::string(shm_dir) + "/" + shm_prefix + owner + "-" + to_hex(random_bytes32()).substr(0, 24);
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) fail("cannot create " + path);
    // fallocate reserves the pages now: running out of /dev/shm is an error here, not a SIGBUS later.
    if (size && ::posix_fallocate(fd, 0, static_cast<off_t>(size)) != 0) {
        ::close(fd);
        ::unlink(path.c_str());
        errno = ENOSPC;
        fail("cannot reserve " + std::to_string(size) + " bytes in " + shm_dir);
    }
    void* p = ::mmap(nullptr, size ? size : 1, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    struct stat st {};
    ::fstat(fd, &st);
    ::close(fd);
    if (p == MAP_FAILED) {
        ::unlink(path.c_str());
        fail("cannot map " + path);
    }
    return {path, byte_buffer::adopt_mapping(static_cast<char*>(p), size), static_cast<std::uint64_t>(st.st_ino)};
}

bool shm_intact(const shm_out& s) {
    struct stat st {};
    return ::lstat(s.path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_ino) == s.ino &&
           st.st_uid == ::geteuid() && static_cast<std::uint64_t>(st.st_size) >= s.map->size();
}

bool probe_matches(const std::string& path, const std::array<std::uint8_t, 32>& token) {
    if (!valid_shm_path(path)) return false;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return false;
    struct stat st {};
    std::array<std::uint8_t, 32> got{};
    const bool ok = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid() &&
                    ::read(fd, got.data(), got.size()) == static_cast<ssize_t>(got.size()) && got == token;
    ::close(fd);
    return ok;
}

bool valid_shm_path(const std::string& path) {
    const std::string head = std::string(shm_dir) + "/" + shm_prefix;
    if (path.size() <= head.size() || path.size() > 200 || path.compare(0, head.size(), head) != 0) return false;
    for (char c : path.substr(head.size()))
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-')) return false;
    return true;
}

std::shared_ptr<byte_buffer> take_shm(const shm_frame& ref) {
    if (!valid_shm_path(ref.path)) throw frame_error("shared-memory frame path " + ref.path + " is not one pcluster makes");
    int fd = ::open(ref.path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) fail("cannot open shared-memory frame " + ref.path);
    if (!ref.keep) ::unlink(ref.path.c_str());
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid() ||
        static_cast<std::uint64_t>(st.st_size) < ref.size) {
        ::close(fd);
        throw frame_error("shared-memory frame " + ref.path + " is not a regular file of at least " +
                          std::to_string(ref.size) + " bytes owned by this user");
    }
    // Shared, not private: a private writable mapping copies every page it writes. Not populated:
    // the pages exist already, and read faults map them 16 at a time (fault-around), cheaper than
    // populating the whole mapping for writing - and pages never touched cost nothing.
    void* p = ::mmap(nullptr, ref.size ? ref.size : 1, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) fail("cannot map " + ref.path);
    return byte_buffer::adopt_mapping(static_cast<char*>(p), ref.size);
}

namespace {
// Calls f(path) for every entry of /dev/shm whose name starts with `head`; stops when f says so.
template <class F>
void for_each_shm(const std::string& head, F&& f) {
    std::error_code ec;
    for (auto& e : std::filesystem::directory_iterator(shm_dir, ec))
        if (e.path().filename().string().compare(0, head.size(), head) == 0 && !f(e.path())) return;
}
}  // namespace

void remove_shm_leftovers(const std::string& owner) {
    for_each_shm(std::string(shm_prefix) + owner + "-", [](const std::filesystem::path& p) {
        std::error_code ec;
        std::filesystem::remove(p, ec);
        return true;
    });
}

bool has_shm_leftovers(const std::string& owner) {
    bool found = false;
    for_each_shm(std::string(shm_prefix) + owner + "-", [&](const std::filesystem::path&) { return !(found = true); });
    return found;
}

std::string client_shm_owner() { return "c" + std::to_string(::getpid()) + "x" + to_hex(random_bytes32()).substr(0, 8); }

void remove_dead_client_segments() {
    const std::string head = std::string(shm_prefix) + "c";
    for_each_shm(head, [&](const std::filesystem::path& p) {
        const std::string name = p.filename().string();
        const auto x = name.find('x', head.size());
        if (x == std::string::npos) return true;
        const long pid = std::atol(name.substr(head.size(), x - head.size()).c_str());
        std::error_code ec;
        if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) std::filesystem::remove(p, ec);
        return true;
    });
}

shm_out shm_pool::get(std::uint64_t size) {
    for (;;) {
        std::lock_guard lk(mu_);
        auto best = free_.end();
        for (auto it = free_.begin(); it != free_.end(); ++it) {
            const auto have = it->map->size();
            if (have >= size && have <= 2 * size + (std::uint64_t{1} << 20) &&
                (best == free_.end() || have < best->map->size()))
                best = it;
        }
        if (best == free_.end()) break;
        shm_out s = std::move(*best);
        free_.erase(best);
        // Removed (or replaced) behind our back: its mapping lives on here but nobody else could
        // open it. Forget it and look again.
        if (s.ino && !shm_intact(s)) continue;
        return s;
    }
    constexpr std::uint64_t mib = std::uint64_t{1} << 20;
    return create_shm(owner_, (size + mib - 1) / mib * mib);
}

void shm_pool::put(shm_out s) {
    std::lock_guard lk(mu_);
    free_.push_back(std::move(s));
    std::uint64_t total = 0;
    for (auto& f : free_) total += f.map->size();
    while (!free_.empty() && (free_.size() > limits_.segments || total > limits_.bytes)) {
        total -= free_.front().map->size();
        ::unlink(free_.front().path.c_str());
        free_.pop_front();
    }
}

void shm_pool::clear() {
    std::lock_guard lk(mu_);
    for (auto& f : free_) ::unlink(f.path.c_str());
    free_.clear();
}

}  // namespace pcluster::protocol
