#include "connection.hpp"

#include <cerrno>
#include <cstring>
#include <optional>
#include <system_error>

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pcluster/protocol/auth.hpp"
#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/config.hpp"
#include "pcluster/protocol/shm.hpp"

namespace pcluster::client {

namespace proto = pcluster::protocol;

namespace {
int connect_to(const std::string& host, int port, proto::clock::time_point deadline) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
        throw std::system_error(EHOSTUNREACH, std::generic_category(), "cannot resolve " + host + ": " + gai_strerror(rc));
    std::string last = "no address";
    for (addrinfo* a = res; a; a = a->ai_next) {
        int fd = ::socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) continue;
        int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - proto::clock::now()).count();
            pollfd p{fd, POLLOUT, 0};
            if (::poll(&p, 1, static_cast<int>(std::max<long long>(left, 0))) == 1) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                rc = err ? -1 : 0;
                errno = err ? err : ETIMEDOUT;
            } else {
                rc = -1;
                errno = ETIMEDOUT;
            }
        }
        if (rc == 0) {
            freeaddrinfo(res);
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            return fd;
        }
        last = std::strerror(errno);
        ::close(fd);
    }
    freeaddrinfo(res);
    throw std::system_error(ECONNREFUSED, std::generic_category(),
                            "cannot connect to " + host + ":" + std::to_string(port) + " (" + last + ")");
}
}  // namespace

connection::connection(const std::string& host, int port, const std::string& key_hex, double timeout_s) {
    linger_ = std::chrono::microseconds(config::integer(config::knob::send_linger_us));
    const auto deadline = proto::clock::now() + std::chrono::milliseconds(static_cast<long long>(timeout_s * 1000));
    const proto::digest key = proto::from_hex(key_hex);
    fd_ = connect_to(host, port, deadline);
    try {
        auto ch = proto::decode<proto::challenge>(proto::read_frame(fd_, deadline, 1 << 16).view());
        job_id_ = ch.job_id;
        proto::auth_request req;
        req.mac = proto::auth_mac(key, proto::client_label, ch.nonce);
        req.client_nonce = proto::random_bytes32();
        pool_ = std::make_unique<proto::shm_pool>(proto::client_shm_owner(), proto::shm_pool::limits{4, std::uint64_t{4} << 30});
        // Offer a probe file: if the bridge can read it, large frames may go by /dev/shm.
        std::optional<proto::shm_out> probe;
        struct unlink_probe {
            std::optional<proto::shm_out>& p;
            ~unlink_probe() {
                if (p) ::unlink(p->path.c_str());
            }
        } guard{probe};
        try {
            probe = proto::create_shm(pool_->owner(), 32);
            req.shm_token = proto::random_bytes32();
            std::memcpy(probe->map->data(), req.shm_token.data(), 32);
            probe->map.reset();
            req.shm_probe = probe->path;
        } catch (const std::exception&) {
        }
        proto::write_frame(fd_, proto::encode(req));
        auto rep = proto::decode<proto::auth_reply>(proto::read_frame(fd_, deadline, 1 << 24).view());
        if (!rep.ok) throw auth_error(rep.message);
        if (!proto::macs_equal(rep.mac, proto::auth_mac(key, proto::bridge_label, req.client_nonce)))
            throw auth_error("the job could not prove it holds the key");
        client_no_ = rep.client_no;
        engines_ = std::move(rep.engines);
        local_ = rep.shm_ok;
        if (local_) proto::remove_dead_client_segments();
    } catch (...) {
        ::close(fd_);
        fd_ = -1;
        throw;
    }
    reader_ = std::thread([this] { read_loop(); });
    writer_ = std::thread([this] { write_loop(); });
}

connection::~connection() { close(); }

namespace {
// Frames up to this size are copied into the writer's queue; larger ones are written by the
// sending thread from where they lie (copying them would cost more than the hand-off saves).
constexpr std::uint64_t queue_copy_limit = 64 << 10;
}  // namespace

void connection::send(std::uint64_t id, std::size_t replies, const proto::outgoing_frame& f, bool direct) {
    table_.add(id, replies);  // registered before a byte leaves: a reply never finds it unknown
    try {
        send_registered(id, replies, f, direct);
    } catch (...) {
        table_.remove(id);  // never sent: no reply will come for it
        throw;
    }
}

void connection::send_registered(std::uint64_t id, std::size_t replies, const proto::outgoing_frame& f, bool direct) {
    const std::uint64_t size = f.size();
    std::optional<proto::outgoing_frame> by_shm;
    if (local_ && size >= proto::shm_threshold) {
        // One copy into shared memory, outside the send lock, instead of two socket hops.
        std::optional<proto::shm_out> seg;
        try {
            seg = pool_->get(size);
        } catch (const std::exception&) {
            // /dev/shm full or missing: the socket path still works.
        }
        if (seg) {
            char* p = seg->map->data();
            std::memcpy(p, f.head.data(), f.head.size());
            p += f.head.size();
            for (const auto& b : f.bufs) {
                std::memcpy(p, b.data(), b.size());
                p += b.size();
            }
            by_shm = proto::encode(proto::shm_frame{id, seg->path, size, true});
            std::lock_guard lk(busy_mu_);
            busy_[id] = busy{std::move(*seg), replies};
        }
    }
    const proto::outgoing_frame& frame = by_shm ? *by_shm : f;
    std::unique_lock lk(send_mu_);
    if (!write_error_.empty()) throw std::system_error(ENOTCONN, std::generic_category(), write_error_);
    if (stop_writer_) throw std::system_error(ENOTCONN, std::generic_category(), "the client closed the connection");
    const bool small = frame.size() <= queue_copy_limit;
    if (small && (!direct || writing_ || !queue_.empty())) {
        const bool was_empty = queue_.empty();
        queue_.push_back(proto::outgoing_frame{frame.flatten(), {}, nullptr});
        if (direct) flush_now_ = true;  // a blocking call: its caller waits for the reply next
        // Wake the writer only when it has something new to decide: its first frame, a full
        // batch, or a blocking call behind the queue.
        if (!writing_ && (was_empty || direct || queue_.size() == 128)) writer_cv_.notify_one();
        return;
    }
    // Write here, after whatever is queued (frames leave in send order).
    idle_cv_.wait(lk, [&] { return !writing_; });
    const std::string err = write_queue(lk, proto::outgoing_frame{frame.head, frame.bufs, nullptr});
    if (!err.empty()) throw std::system_error(ENOTCONN, std::generic_category(), err);
}

std::string connection::write_queue(std::unique_lock<std::mutex>& lk, std::optional<proto::outgoing_frame> last) {
    writing_ = true;
    std::vector<proto::outgoing_frame> batch;
    batch.swap(queue_);
    lk.unlock();
    add_returns(batch);
    if (last) batch.push_back(std::move(*last));
    std::string err;
    try {
        proto::frame_writer w;
        for (auto& f : batch) w.push(std::move(f));
        batch.clear();
        while (!w.flush(fd_)) {
            pollfd p{fd_, POLLOUT, 0};
            ::poll(&p, 1, 1000);
        }
    } catch (const std::exception& e) {
        err = e.what();
    }
    lk.lock();
    writing_ = false;
    if (!err.empty() && write_error_.empty()) write_error_ = err;
    // Wake the writer only for work (a needless wake-up is a context switch per request).
    if (!queue_.empty()) writer_cv_.notify_one();
    idle_cv_.notify_all();
    return err;
}

// Batches whatever the senders queued into one writev. Non-blocking calls come in bursts (a
// loop of apply_async): the first queued frame waits up to `linger` for company, unless the
// batch is already large or someone waits on a result (kick_writer), so a burst costs a few
// system calls and wake-ups instead of two per request.
void connection::write_loop() {
    const auto linger = linger_;
    constexpr std::size_t batch_frames = 128;
    std::unique_lock lk(send_mu_);
    for (;;) {
        writer_cv_.wait(lk, [&] { return stop_writer_ || (!queue_.empty() && !writing_); });
        if (stop_writer_ && queue_.empty()) return;
        if (!flush_now_ && !stop_writer_ && queue_.size() < batch_frames)
            writer_cv_.wait_for(lk, linger, [&] { return stop_writer_ || flush_now_ || queue_.size() >= batch_frames; });
        flush_now_ = false;
        if (writing_ || queue_.empty()) continue;
        write_queue(lk, std::nullopt);  // a failure is kept in write_error_ for the senders
    }
}

void connection::kick_writer() {
    std::lock_guard lk(send_mu_);
    if (!queue_.empty() && !flush_now_) {
        flush_now_ = true;
        writer_cv_.notify_one();
    }
}

void connection::add_returns(std::vector<proto::outgoing_frame>& frames) {
    proto::shm_return ret;
    {
        std::lock_guard lk(returns_->mu);
        ret.paths.swap(returns_->paths);
    }
    if (!ret.paths.empty()) frames.insert(frames.begin(), proto::encode(ret));
}

void connection::read_loop() {
    std::string why;
    try {
        proto::frame_reader reader;
        // A reply this client cannot take (over a limit, malformed) fails its request only.
        reader.set_skip_bad(true);
        bool ended = false;
        while (!ended) {
            const auto end = proto::drain_frames(
                reader, fd_, 1 << 30,
                [&](proto::received_frame f) {
                    const auto v = f.view();
                    if (proto::is(v, proto::message_type::job_ended)) {
                        try {
                            why = "the job ended: " + proto::decode<proto::job_ended>(v).reason;
                        } catch (const std::exception&) {
                            why = "the job ended";
                        }
                        ended = true;
                        return false;
                    }
                    file(std::move(f));
                    return true;
                },
                [&](const proto::bad_frame& b) {
                    lost(b.type, b.id, "a " + std::string(proto::type_name(b.type)) + " of " + std::to_string(b.size) +
                                           " bytes could not be taken: " + b.error);
                    return true;
                });
            if (end == proto::drain_end::closed) {
                // A job that ends says so (job_ended) before its bridge closes.
                why = "connection to the job lost: its bridge closed the connection without a word (the bridge was "
                      "killed or crashed, and the job ends with it; or it refused what this client sent: see the "
                      "job's log)";
                ended = true;
            }
        }
    } catch (const std::exception& e) {
        why = std::string("connection to the job lost: ") + e.what();
    }
    table_.close(why);
}

void connection::lost(std::uint16_t type, std::optional<std::uint64_t> id, const std::string& why) {
    // Streamed output and news carry no reply to fail: they are dropped.
    if (!id || type == static_cast<std::uint16_t>(proto::message_type::output)) return;
    auto r = std::make_shared<reply>();
    // One target's reply, not a refusal: the request's other replies may still come.
    r->meta = proto::error_reply(*id, proto::reply_origin::client, proto::no_engine, proto::error_kind::reply_lost,
                                 "this client could not receive a reply: " + why);
    release_one(*id, false);
    table_.file_reply(std::move(r));
}

void connection::file(proto::received_frame f) {
    auto v = f.view();
    const std::uint16_t type = v.type();
    std::optional<std::uint64_t> id = proto::peek_id(v);
    try {
        if (proto::is(v, proto::message_type::output)) {
            table_.file_output(proto::decode<proto::output>(v));
            return;
        }
        if (proto::is(v, proto::message_type::engine_event)) {
            table_.file_event(proto::decode<proto::engine_event>(v));
            return;
        }
        auto r = std::make_shared<reply>();
        if (proto::is(v, proto::message_type::control_reply)) {
            r->control = proto::decode<proto::control_reply>(v);
            r->meta.id = r->control->id;
            r->meta.origin = proto::reply_origin::controller;
            if (v.nbufs()) r->frame = std::move(f);  // kept results (fetch_results): reply::stored
            table_.file_reply(std::move(r));
            return;
        }
        if (proto::is(v, proto::message_type::shm_frame)) {
            const auto ref = proto::decode<proto::shm_frame>(v);
            id = ref.id;
            try {
                f.bytes = proto::take_shm(ref);
            } catch (const std::exception& e) {
                // That reply is lost to us; the request fails, the connection lives on. It counts as
                // one target's reply, not a refusal: the other targets may still be served from this
                // request's segment, which must not be reused before them.
                return lost(type, id, std::string("cannot map the reply in shared memory: ") + e.what());
            }
            if (ref.keep) {
                // The job lends this segment: give it back once nothing here uses it.
                std::weak_ptr<returns> q = returns_;
                f.bytes->on_release([q, path = ref.path] {
                    if (auto rs = q.lock()) {
                        std::lock_guard lk(rs->mu);
                        rs->paths.push_back(path);
                    }
                });
            }
            v = f.view();
            if (!proto::is(v, proto::message_type::engine_reply))
                throw proto::frame_error(std::string("a shared-memory reply holds a ") + proto::type_name(v.type()));
        }
        r->meta = proto::decode<proto::engine_reply>(v);
        if (id && r->meta.id != *id) throw proto::frame_error("a shared-memory reply holds another request's reply");
        r->frame = std::move(f);
        const bool refused = r->meta.origin == proto::reply_origin::refused;
        // A refused request's segment may be what was wrong with it (gone, not ours): never reuse it.
        release_one(r->meta.id, refused, refused);
        table_.file_reply(std::move(r));
    } catch (const std::exception& e) {
        lost(type, id, e.what());
    }
}

void connection::release_one(std::uint64_t id, bool all, bool discard) {
    // Every target has replied (or the request was refused): no engine reads the request's
    // segment any more, so it may carry the next one.
    std::lock_guard lk(busy_mu_);
    auto it = busy_.find(id);
    if (it == busy_.end() || (!all && --it->second.remaining > 0)) return;
    if (discard) ::unlink(it->second.seg.path.c_str());
    else pool_->put(std::move(it->second.seg));
    busy_.erase(it);
}

std::optional<completion> connection::wait_take(std::uint64_t id, proto::clock::time_point deadline) {
    kick_writer();
    return table_.wait_take(id, deadline);
}

std::vector<reply_ptr> connection::wait_count(std::uint64_t id, std::size_t n, proto::clock::time_point deadline) {
    kick_writer();
    return table_.wait_count(id, n, deadline);
}

void connection::release(std::uint64_t id) { release_one(id, true); }

void connection::close() {
    // Once, whichever thread comes first (a user thread and atexit may both call it); the others
    // wait until it is done.
    std::lock_guard once(close_mu_);
    if (close_done_) return;
    table_.close("the client closed the connection");
    {
        // Frames already queued still go out (a non-blocking call returned; its request must
        // not vanish), then the writer stops.
        std::unique_lock lk(send_mu_);
        flush_now_ = true;
        writer_cv_.notify_one();
        idle_cv_.wait_for(lk, std::chrono::seconds(5), [&] { return (queue_.empty() && !writing_) || !write_error_.empty(); });
        stop_writer_ = true;
        writer_cv_.notify_one();
    }
    // Shut down before joining: a writer stuck on a peer that stopped reading fails at once.
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
    if (writer_.joinable()) writer_.join();
    if (reader_.joinable()) reader_.join();
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    {
        std::lock_guard lk(busy_mu_);
        busy_.clear();
    }
    if (pool_) {
        pool_->clear();
        proto::remove_shm_leftovers(pool_->owner());
    }
    close_done_ = true;
}

}  // namespace pcluster::client
