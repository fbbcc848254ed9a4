#include "requests.hpp"

#include <cstring>
#include <set>

#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/layout.hpp"
#include "pcluster/protocol/shm.hpp"

namespace pcluster::controller {

namespace proto = pcluster::protocol;

namespace {
void resolve_targets(request& q, const std::vector<bool>& alive, const std::vector<int>& deaths) {
    const int n_engines = static_cast<int>(alive.size());
    std::set<int> seen;
    for (auto t : q.r.targets) {
        if (t < 0 || t >= n_engines)
            throw refusal(proto::error_kind::no_such_engine, "engine id " + std::to_string(t) +
                                                                 " out of range: the job has engines 0.." +
                                                                 std::to_string(n_engines - 1));
        if (!seen.insert(t).second)
            throw refusal(proto::error_kind::bad_request, "engine id " + std::to_string(t) + " given twice");
        q.targets.push_back(t);
    }
    if (q.task) {
        if (!q.r.part_bufs.empty()) throw refusal(proto::error_kind::bad_request, "a task has no parts");
        return;  // no targets: any engine (listing all of them would queue it on each)
    }
    if (q.targets.empty()) {
        std::vector<bool> known(alive);
        for (std::size_t k = q.r.deaths_seen; k < deaths.size(); ++k) known[static_cast<std::size_t>(deaths[k])] = true;
        for (int e = 0; e < n_engines; ++e)
            if (known[static_cast<std::size_t>(e)]) q.targets.push_back(e);
    }
    if (q.shutdown() && !q.r.targets.empty())
        throw refusal(proto::error_kind::bad_request, "shutdown must target every engine");
}
}  // namespace

request check_request(proto::received_frame f, const std::vector<bool>& alive, const std::vector<int>& deaths) {
    request q;
    try {
        if (proto::is(f.view(), proto::message_type::shm_frame)) {
            const auto ref = proto::decode<proto::shm_frame>(f.view());
            q.r.id = ref.id;
            f.bytes = proto::take_shm(ref);
            if (proto::decode_route(f.view()).id != ref.id)
                throw refusal(proto::error_kind::bad_request, "shared-memory frame holds another request than it names");
        }
        const auto view = f.view();
        q.r = proto::decode_route(view);
        q.type = view.type();
        q.task = q.type == static_cast<std::uint16_t>(proto::message_type::task_request);
        if (q.type != static_cast<std::uint16_t>(proto::message_type::control_request)) {
            resolve_targets(q, alive, deaths);
            proto::layout_of(view, q.r, q.targets.empty() ? 1 : q.targets.size());
        }
    } catch (refusal& e) {
        e.id = q.r.id;
        throw;
    } catch (const std::exception& e) {  // frame, layout and shared-memory errors
        refusal r(proto::error_kind::bad_request, e.what());
        r.id = q.r.id;
        throw r;
    }
    q.frame = std::move(f);
    return q;
}

request internal_request(proto::outgoing_frame out, std::vector<int> targets) {
    const auto flat = out.flatten();
    auto bytes = std::make_shared<proto::byte_buffer>(flat.size());
    std::memcpy(bytes->data(), flat.data(), flat.size());
    request q;
    q.frame.bytes = std::move(bytes);
    q.type = proto::frame_view(q.frame.bytes->data(), q.frame.bytes->size()).type();
    q.targets = std::move(targets);
    q.internal = true;
    return q;
}

}  // namespace pcluster::controller
