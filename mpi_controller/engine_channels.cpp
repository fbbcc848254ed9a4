#include "engine_channels.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include "pcluster/mpi/control.hpp"
#include "pcluster/mpi/envelope.hpp"
#include "pcluster/mpi/wire.hpp"
#include "pcluster/protocol/codec.hpp"

namespace pcluster::controller {

namespace proto = pcluster::protocol;
namespace wire = pcluster::mpi_wire;

engine_channels::engine_channels(const wire::job_comms& comms)
    : collective_(comms.collective), direct_(comms.direct), reply_(comms.reply), rebuild_comm_(comms.rebuild), bell_(comms.bell),
      n_(comms.n_engines()), alive_(static_cast<std::size_t>(n_), true), rank_of_(static_cast<std::size_t>(n_)),
      direct_sent_(static_cast<std::size_t>(n_), 0), awaited_(static_cast<std::size_t>(n_)) {
    for (int e = 0; e < n_; ++e) rank_of_[static_cast<std::size_t>(e)] = e + 1;
}

engine_channels::~engine_channels() {
    // A rebuild that never finishes (a member died during it) must not hold the process: it
    // exits without MPI_Finalize after a death anyway.
    if (rebuild_thread_.joinable()) {
        if (rebuild_->done.load()) rebuild_thread_.join();
        else rebuild_thread_.detach();
    }
}

awaited_reply engine_channels::awaited_of(const request& q, int engine, std::uint64_t seq) const {
    return {q.r.id, engine, (q.r.flags & proto::reply_by_shm) != 0, q.internal, q.shutdown(), q.task, seq};
}

void engine_channels::issue(const request& q) {
    const auto l = proto::layout_of(q.frame.view(), q.r, q.targets.size());
    const auto live = static_cast<std::size_t>(std::count(alive_.begin(), alive_.end(), true));
    const bool every_live_engine =
        q.targets.size() == live && std::all_of(q.targets.begin(), q.targets.end(), [&](int t) { return alive(t); });
    if (q.shutdown()) {
        shutdown_issued_ = true;
        shutdown_replies_left_ += static_cast<int>(std::count_if(q.targets.begin(), q.targets.end(), [&](int t) { return alive(t); }));
    }
    if (every_live_engine && collective_whole_) {
        issue_collective(q, l);
        // Every engine, targeted or not: one that only forwards the broadcast must poll too.
        if (bell_) bell_->ring_all();
    } else {
        for (std::size_t k = 0; k < q.targets.size(); ++k)
            if (alive(q.targets[k])) {
                issue_direct(q, l, k);
                if (bell_) bell_->ring(q.targets[k]);
            }
    }
}

bool engine_channels::quiet() const {
    return inflight_.empty() && std::all_of(awaited_.begin(), awaited_.end(), [](const auto& q) { return q.empty(); });
}

void engine_channels::ring_owed() {
    if (!bell_) return;
    for (int e = 0; e < n_; ++e)
        if (!awaited_[static_cast<std::size_t>(e)].empty()) bell_->ring(e);
}

void engine_channels::issue_direct(const request& q, const proto::request_layout& l, std::size_t k) {
    const int e = q.targets[k];
    const std::uint64_t part_len = l.has_parts ? l.part_len[k] : 0;
    const wire::direct_head h{collective_sent_, l.common_len, part_len, l.has_parts, epoch_};
    const char* frame = q.frame.bytes->data();
    inflight fl;
    fl.from = e;  // a send: abandoned, not waited for, if the engine dies
    if (wire::direct_inline(l.common_len, part_len)) {
        auto msg = std::make_shared<std::vector<char>>(wire::build_direct_message(
            h, {frame, l.common_len}, l.has_parts ? std::span<const char>(frame + l.part_off[k], part_len) : std::span<const char>()));
        wire::isend_bytes(msg->data(), msg->size(), e + 1, wire::tag_direct_head, direct_, fl.reqs);
        fl.keep = msg;
    } else {
        auto head = std::make_shared<wire::direct_head>(h);
        wire::isend_bytes(head.get(), sizeof h, e + 1, wire::tag_direct_head, direct_, fl.reqs);
        wire::isend_bytes(frame, l.common_len, e + 1, wire::tag_direct_data, direct_, fl.reqs);
        if (l.has_parts) wire::isend_bytes(frame + l.part_off[k], part_len, e + 1, wire::tag_direct_data, direct_, fl.reqs);
        fl.keep = std::make_shared<std::pair<std::shared_ptr<wire::direct_head>, std::shared_ptr<proto::byte_buffer>>>(
            head, q.frame.bytes);
    }
    ++direct_sent_[static_cast<std::size_t>(e)];
    awaited_[static_cast<std::size_t>(e)].push_back(awaited_of(q, e));
    inflight_.push_back(std::move(fl));
}

void engine_channels::issue_collective(const request& q, const proto::request_layout& l) {
    char* frame = q.frame.bytes->data();
    struct held {
        std::vector<char> envelope;
        wire::scatter_plan plan;
        std::shared_ptr<proto::byte_buffer> frame;
    };
    auto h = std::make_shared<held>();
    h->frame = q.frame.bytes;
    h->envelope = wire::build_envelope(n_, l, q.targets, direct_sent_, {frame, l.common_len});
    const std::uint64_t seq = ++collective_sent_;
    inflight fl;
    fl.from = -2;  // collective: abandoned if an engine dies (the tree may run through it)
    wire::ibcast_bytes(h->envelope.data(), h->envelope.size(), collective_, fl.reqs);
    if (!wire::envelope_layout(n_).carries_inline(l.common_len)) wire::ibcast_bytes(frame, l.common_len, collective_, fl.reqs);
    if (l.has_parts) {
        int size = 0;
        MPI_Comm_size(collective_, &size);
        // MPI may read counts and displacements until the scatter completes: `h` keeps them.
        if (wire::plan_scatter(size, l, q.targets, rank_of_, &h->plan)) {
            MPI_Request r;
            wire::check(MPI_Iscatterv(frame + h->plan.base, h->plan.counts.data(), h->plan.displs.data(), MPI_BYTE, nullptr,
                                      0, MPI_BYTE, 0, collective_, &r),
                        "MPI_Iscatterv");
            fl.reqs.push_back(r);
        } else {
            for (std::size_t k = 0; k < q.targets.size(); ++k)
                wire::isend_bytes(frame + l.part_off[k], l.part_len[k], rank_of_[static_cast<std::size_t>(q.targets[k])],
                                  wire::tag_collective_part, collective_, fl.reqs);
        }
    }
    for (int e : q.targets) awaited_[static_cast<std::size_t>(e)].push_back(awaited_of(q, e, seq));
    fl.keep = h;
    inflight_.push_back(std::move(fl));
}

bool engine_channels::progress() {
    bool any = false;
    if (rebuild_ && rebuild_->done.load(std::memory_order_acquire)) {
        finish_rebuild();
        any = true;
    } else if (rebuild_ && !stuck_reported_ && std::chrono::steady_clock::now() - rebuild_->began > std::chrono::seconds(10)) {
        stuck_reported_ = true;
        spdlog::error("the survivors' communicator of epoch {} is not built after 10 s (an engine died during the "
                      "build, or one is stuck): requests for every engine go point to point from now on, and "
                      "pcluster.engine.comm is not rebuilt",
                      rebuild_->epoch);
    }
    for (auto it = inflight_.begin(); it != inflight_.end();) {
        if (wire::test_all(it->reqs)) {
            auto then = std::move(it->then);
            it = inflight_.erase(it);
            if (then) then();
            any = true;
        } else {
            ++it;
        }
    }
    return any;
}

void engine_channels::receive_pieces(int src, const std::vector<std::uint64_t>& lens, reply_landing to, const awaited_reply& a) {
    inflight fl;
    fl.from = src - 1;
    fl.awaited = a;
    char* dest = to.dest;
    for (auto l : lens) {
        wire::irecv_bytes(dest, l, src, wire::tag_reply_piece, direct_, fl.reqs);
        dest += l;
    }
    fl.then = std::move(to.then);
    inflight_.push_back(std::move(fl));
}

// Replies come point to point from each engine in the order it ran its requests, which is the
// order they were issued to it: awaited_[engine] says whose reply each one is.
bool engine_channels::receive(const std::function<reply_landing(std::uint64_t, const awaited_reply&)>& land,
                              const std::function<void(std::shared_ptr<proto::byte_buffer>)>& on_output,
                              const std::function<void(int, std::uint64_t, std::uint64_t)>& on_epoch) {
    bool any = false;
    for (;;) {
        int flag = 0;
        MPI_Message msg;
        MPI_Status st;
        wire::check(MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, reply_, &flag, &msg, &st), "MPI_Improbe");
        if (!flag) return any;
        any = true;
        const int engine = st.MPI_SOURCE - 1;
        if (st.MPI_TAG == wire::tag_output || st.MPI_TAG == wire::tag_control) {
            int count = 0;
            MPI_Get_count(&st, MPI_BYTE, &count);
            auto bytes = std::make_shared<proto::byte_buffer>(static_cast<std::uint64_t>(std::max(count, 1)));
            wire::check(MPI_Mrecv(bytes->data(), count, MPI_BYTE, &msg, MPI_STATUS_IGNORE), "MPI_Mrecv");
            if (st.MPI_TAG == wire::tag_control) {
                wire::control_msg m;
                if (count == sizeof m) {
                    std::memcpy(&m, bytes->data(), sizeof m);
                    if (m.kind == wire::control_kind::epoch_done) on_epoch(engine, m.a, m.b);
                }
                continue;
            }
            // What a long request printed so far: straight on. It was sent before the request's
            // reply, so it also reaches the client before it.
            try {
                if (!proto::is(proto::frame_view(bytes->data(), static_cast<std::size_t>(count)), proto::message_type::output))
                    throw proto::frame_error("not an output frame");
            } catch (const std::exception& e) {
                spdlog::error("engine {} sent a bad output frame: {}", engine, e.what());
                continue;
            }
            on_output(std::move(bytes));
            continue;
        }
        auto& q = awaited_[static_cast<std::size_t>(engine)];
        awaited_reply a;
        if (q.empty()) {
            spdlog::error("engine {} sent a reply nobody awaits; dropped", engine);
            a.internal = true;
        } else {
            a = q.front();
            q.pop_front();
        }
        if (a.shutdown) --shutdown_replies_left_;
        if (st.MPI_TAG == wire::tag_reply_sizes) {
            int n = 0;
            MPI_Get_count(&st, MPI_UINT64_T, &n);
            std::vector<std::uint64_t> lens(static_cast<std::size_t>(n));
            wire::check(MPI_Mrecv(lens.data(), n, MPI_UINT64_T, &msg, MPI_STATUS_IGNORE), "MPI_Mrecv");
            std::uint64_t len = 0;
            for (auto l : lens) len += l;
            receive_pieces(st.MPI_SOURCE, lens, land(len, a), a);
            continue;
        }
        int count = 0;
        MPI_Get_count(&st, MPI_BYTE, &count);
        auto to = land(static_cast<std::uint64_t>(count), a);
        inflight fl;
        MPI_Request r;
        wire::check(MPI_Imrecv(to.dest, count, MPI_BYTE, &msg, &r), "MPI_Imrecv");
        fl.reqs.push_back(r);  // a matched message: completes whatever happens to its sender
        fl.then = std::move(to.then);
        inflight_.push_back(std::move(fl));
    }
}

engine_channels::death_effects engine_channels::engine_died(int e, const std::vector<bool>& alive, bool rebuild) {
    death_effects fx;
    alive_ = alive;
    alive_[static_cast<std::size_t>(e)] = false;
    auto& mine = awaited_[static_cast<std::size_t>(e)];
    fx.lost.assign(mine.begin(), mine.end());
    mine.clear();
    for (auto it = inflight_.begin(); it != inflight_.end();) {
        if (it->from == e && it->awaited) {
            // Pieces of a large reply it was sending: they never come.
            for (auto& r : it->reqs) {
                MPI_Cancel(&r);
                MPI_Wait(&r, MPI_STATUS_IGNORE);
            }
            fx.lost.push_back(*it->awaited);
        } else if (it->from != e && it->from != -2) {
            ++it;
            continue;
        }
        // Sends to it, and every collective on the old communicator (the broadcast tree may
        // run through it): they may never complete, and MPI may still use their memory.
        abandoned_.push_back(it->keep);
        it = inflight_.erase(it);
    }
    for (const auto& a : fx.lost)
        if (a.shutdown) --shutdown_replies_left_;
    epoch_issued_.push_back(collective_sent_);
    fx.epoch = ++epoch_;
    fx.collectives_issued = collective_sent_;
    collective_whole_ = false;
    // The survivors' collective communicator: built once every survivor answered (see the
    // handshake in the header); until then, and for good if no build can finish, requests for
    // every engine go direct. A build under way now includes the dead engine: it is dropped
    // when it ends, or never ends.
    rebuild_wanted_ = rebuild;
    wanted_since_ = std::chrono::steady_clock::now();
    return fx;
}

std::optional<std::uint64_t> engine_channels::rebuild_wanted() const {
    if (!rebuild_wanted_ || rebuild_) return std::nullopt;
    return epoch_;
}

int engine_channels::start_rebuild() {
    auto job = std::make_shared<rebuild_job>();
    job->epoch = epoch_;
    job->began = std::chrono::steady_clock::now();
    job->ranks = {0};
    for (int x = 0; x < n_; ++x)
        if (alive_[static_cast<std::size_t>(x)]) job->ranks.push_back(x + 1);
    rebuild_wanted_ = false;
    rebuild_ = job;
    rebuild_thread_ = std::thread([job, parent = rebuild_comm_] {
        MPI_Group wg, g;
        MPI_Comm_group(parent, &wg);
        MPI_Group_incl(wg, static_cast<int>(job->ranks.size()), job->ranks.data(), &g);
        MPI_Comm c = MPI_COMM_NULL;
        if (MPI_Comm_create_group(parent, g, 100 + static_cast<int>(job->epoch), &c) != MPI_SUCCESS)
            spdlog::error("cannot build the survivors' communicator; requests for all engines stay point to point");
        MPI_Group_free(&wg);
        MPI_Group_free(&g);
        job->comm = c;
        job->done.store(true, std::memory_order_release);
    });
    return static_cast<int>(job->ranks.size()) - 1;
}

bool engine_channels::rebuilding(std::chrono::steady_clock::duration within) const {
    const auto now = std::chrono::steady_clock::now();
    if (rebuild_) return now - rebuild_->began < within;
    return rebuild_wanted_ && now - wanted_since_ < within;
}

void engine_channels::finish_rebuild() {
    rebuild_thread_.join();
    const auto job = std::move(rebuild_);
    rebuild_.reset();
    if (job->comm == MPI_COMM_NULL) return;
    // Built for an epoch that another death ended meanwhile: it contains a dead engine (never
    // freed: the survivors may still hold it). The newest epoch's handshake goes on.
    if (job->epoch != epoch_) {
        spdlog::debug("the communicator of epoch {} came after epoch {} began; not used", job->epoch, epoch_);
        return;
    }
    collective_ = job->comm;  // the old one is never freed: abandoned operations may still use it
    std::fill(rank_of_.begin(), rank_of_.end(), -1);
    for (std::size_t r = 1; r < job->ranks.size(); ++r) rank_of_[static_cast<std::size_t>(job->ranks[r] - 1)] = static_cast<int>(r);
    collective_whole_ = true;
    spdlog::debug("collective requests resume on the {} survivors' communicator", job->ranks.size() - 1);
}

std::vector<awaited_reply> engine_channels::epoch_reached(int e, std::uint64_t done, std::uint64_t epoch) {
    std::vector<awaited_reply> lost;
    if (epoch == 0 || epoch > epoch_issued_.size()) return lost;
    const std::uint64_t issued = epoch_issued_[epoch - 1];
    auto& q = awaited_[static_cast<std::size_t>(e)];
    for (auto it = q.begin(); it != q.end();) {
        if (it->collective_seq > done && it->collective_seq <= issued) {
            if (it->shutdown) --shutdown_replies_left_;
            lost.push_back(*it);
            it = q.erase(it);
        } else {
            ++it;
        }
    }
    return lost;
}

}  // namespace pcluster::controller
