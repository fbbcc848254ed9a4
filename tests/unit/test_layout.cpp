// Where each target's bytes are (protocol/layout.hpp) and how the controller cuts requests for
// the MPI channels (pcluster/mpi/envelope.hpp): pure functions, checked without MPI.
#include <catch2/catch.hpp>

#include <cstring>

#include "pcluster/mpi/envelope.hpp"
#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/layout.hpp"

using namespace pcluster::protocol;
namespace wire = pcluster::mpi_wire;

namespace {
// A scatter-like request: one shared buffer, then part_bufs[k] buffers per target, each buffer
// filled with a letter of its own so ranges can be checked by content.
struct built {
    std::vector<char> bytes;
    route r;
};
built make_request(std::vector<std::int32_t> targets, std::vector<std::uint32_t> part_bufs, std::size_t buf_len = 5) {
    route r;
    r.id = request_id(1, 1);
    r.targets = std::move(targets);
    r.shared_bufs = 1;
    r.part_bufs = std::move(part_bufs);
    std::uint32_t n = r.shared_bufs;
    for (auto c : r.part_bufs) n += c;
    std::vector<std::string> data;
    for (std::uint32_t i = 0; i < n; ++i) data.emplace_back(buf_len, static_cast<char>('a' + i));
    std::vector<std::span<const char>> spans;
    for (auto& d : data) spans.emplace_back(d.data(), d.size());
    return {encode(scatter_request{r, "x", false}, spans).flatten(), r};
}
std::string at(const built& b, std::uint64_t off, std::uint64_t len) { return std::string(b.bytes.data() + off, len); }
}  // namespace

TEST_CASE("layout: common bytes, then each target's part in route order", "[layout]") {
    const auto b = make_request({3, 1}, {1, 2});
    const frame_view v(b.bytes.data(), b.bytes.size());
    const auto l = layout_of(v, b.r, 2);
    REQUIRE(l.has_parts);
    CHECK(l.common_len == v.buf_offset(1));  // up to the first part buffer
    CHECK(at(b, l.part_off[0], l.part_len[0]) == "bbbbb");
    CHECK(at(b, l.part_off[1], l.part_len[1]) == "cccccddddd");
    CHECK(part_buffers(b.r, 1).first == 2);
    CHECK(part_buffers(b.r, 1).count == 2);
    CHECK(target_index(b.r, 1) == 1);
    CHECK_THROWS_AS(target_index(b.r, 0), layout_error);
}

TEST_CASE("layout: a request without parts goes whole to every target", "[layout]") {
    route r;
    const auto bytes = encode(push_request{r}).flatten();
    const auto l = layout_of(frame_view(bytes.data(), bytes.size()), r, 4);
    CHECK_FALSE(l.has_parts);
    CHECK(l.common_len == bytes.size());
    CHECK(target_index(r, 3) == 3);  // no targets: every engine, engine k is index k
}

TEST_CASE("layout: a route that does not fit its frame or targets is refused", "[layout]") {
    auto b = make_request({0, 1}, {1, 1});
    const frame_view v(b.bytes.data(), b.bytes.size());
    CHECK_THROWS_WITH(layout_of(v, b.r, 3), Catch::Contains("2 parts for 3 targets"));
    route r = b.r;
    r.part_bufs = {1, 2};
    CHECK_THROWS_WITH(layout_of(v, r, 2), Catch::Contains("names 4 buffers, the frame has 3"));
    CHECK_THROWS_AS(part_buffers(b.r, 2), layout_error);
}

TEST_CASE("envelope: every engine learns its slot; small requests ride inline", "[envelope]") {
    const auto b = make_request({2, 0}, {1, 1}, 3);
    const auto l = layout_of(frame_view(b.bytes.data(), b.bytes.size()), b.r, 2);
    const std::vector<std::uint64_t> direct_sent = {4, 5, 6};
    const auto env = wire::build_envelope(3, l, {2, 0}, direct_sent, {b.bytes.data(), b.bytes.size()});
    const wire::envelope_layout el(3);
    CHECK(env.size() == el.size());
    CHECK(env.size() <= wire::envelope_budget);
    const wire::envelope_view ev(env, 3);
    CHECK(ev.head().common_len == l.common_len);
    CHECK(ev.head().has_parts == 1);
    CHECK(ev.slot(0).targeted == 1);
    CHECK(ev.slot(1).targeted == 0);
    CHECK(ev.slot(2).part_len == l.part_len[0]);
    CHECK(ev.slot(0).part_len == l.part_len[1]);
    CHECK(ev.slot(1).direct_before == 5);
    CHECK(ev.part_lens() == std::vector<std::uint64_t>{l.part_len[1], 0, l.part_len[0]});
    REQUIRE(el.carries_inline(l.common_len));
    CHECK(std::memcmp(ev.inline_bytes().data(), b.bytes.data(), l.common_len) == 0);
}

TEST_CASE("envelope: stays under the eager limit however many engines", "[envelope]") {
    for (int n : {1, 4, 63, 200, 1000}) {
        const wire::envelope_layout el(n);
        CHECK(el.size() >= el.inline_offset());
        if (el.inline_offset() < wire::envelope_budget) CHECK(el.size() == wire::envelope_budget);
        CHECK(el.carries_inline(0));
    }
    CHECK_FALSE(wire::envelope_layout(1000).carries_inline(1));  // no room left: sent by broadcast
}

TEST_CASE("scatter plan: counts and displacements by rank, relative to the first part", "[envelope]") {
    const auto b = make_request({2, 0}, {1, 1}, 7);
    const auto l = layout_of(frame_view(b.bytes.data(), b.bytes.size()), b.r, 2);
    wire::scatter_plan p;
    REQUIRE(wire::plan_scatter(4, l, {2, 0}, {1, 2, 3}, &p));
    CHECK(p.counts == std::vector<int>{0, 7, 0, 7});  // rank 0 (controller) gets nothing
    CHECK(p.base == l.part_off[0]);
    CHECK(p.displs[3] == 0);  // engine 2 = rank 3: the first part
    CHECK(p.displs[1] == 7);  // engine 0 = rank 1: the second
    // After engine 1 died the survivors' communicator is {controller, engine 0, engine 2}.
    REQUIRE(wire::plan_scatter(3, l, {2, 0}, {1, -1, 2}, &p));
    CHECK(p.counts == std::vector<int>{0, 7, 7});
    CHECK(p.displs[2] == 0);
    CHECK(p.displs[1] == 7);
    CHECK_FALSE(wire::parts_fit_scatter(std::vector<std::uint64_t>{std::uint64_t{1} << 31, 1}));
}

TEST_CASE("direct messages: head, common bytes and part in one message when small", "[envelope]") {
    const std::string common = "frame-bytes", part = "part";
    const wire::direct_head h{7, common.size(), part.size(), 1};
    CHECK(wire::direct_inline(common.size(), part.size()));
    CHECK_FALSE(wire::direct_inline(wire::direct_message_size, 0));
    const auto msg = wire::build_direct_message(h, common, part);
    wire::direct_head back;
    std::memcpy(&back, msg.data(), sizeof back);
    CHECK(back.collective_before == 7);
    CHECK(std::string(msg.data() + sizeof h, common.size()) == common);
    CHECK(std::string(msg.data() + sizeof h + common.size(), part.size()) == part);
}
