// The client core's threads under ThreadSanitizer, against a real job: the connection's reader
// and writer threads, senders on several threads (blocking and non-blocking, small frames and
// shared-memory ones), a result thread draining completions (as pcluster.Client's does), and
// waiters counting replies - everything the Python client does concurrently, without Python.
//   tsan_client CONNECTION_FILE   (run by tsan_client_test.py; exit 0 and "TSAN CLIENT OK")
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <unordered_set>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "connection.hpp"
#include "pcluster/protocol/codec.hpp"
#include "pcluster/protocol/connection_file.hpp"

using namespace pcluster;
namespace proto = pcluster::protocol;

namespace {
std::atomic<std::uint32_t> seq{0};
std::atomic<int> failures{0}, done_blocking{0}, done_async{0};

void fail(const std::string& why) {
    std::fprintf(stderr, "tsan_client: %s\n", why.c_str());
    ++failures;
}

bool ok(const std::vector<client::reply_ptr>& replies) {
    for (const auto& r : replies)
        if (r->meta.status != proto::reply_status::ok) {
            fail("request failed: " + r->meta.ename + ": " + r->meta.evalue);
            return false;
        }
    return !replies.empty();
}
}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    std::ifstream in(argv[1]);
    std::stringstream text;
    text << in.rdbuf();
    const auto info = proto::connection_info_from_json(text.str());
    client::connection conn(info.ip, static_cast<int>(info.port), info.key, 10);
    const int engines = static_cast<int>(conn.engines().size());
    const std::uint32_t flags = (conn.local() ? proto::reply_by_shm : 0u) | proto::capture_output;
    auto request = [&](int engine, std::string code, bool silent) {
        proto::execute_request er;
        er.r.id = proto::request_id(conn.client_no(), ++seq);
        er.r.targets = {engine};
        er.r.flags = flags;
        er.code = std::move(code);
        er.silent = silent;
        return er;
    };
    constexpr int per_thread = 150;
    constexpr int async_threads = 2, blocking_threads = 2;
    std::atomic<int> async_sent{0};

    // The result thread: completions nobody waits on, as Client._results_loop takes them. A
    // blocking call whose reply came before it waited is among them: its caller learns it here.
    std::atomic<bool> stop{false};
    std::mutex mu;
    std::condition_variable cv;
    std::unordered_set<std::uint64_t> blocking_ids, taken_here;
    std::thread results([&] {
        while (!stop) {
            for (auto id : conn.requests().next_completed(proto::clock::now() + std::chrono::milliseconds(100))) {
                auto c = conn.requests().take(id);
                if (!c) continue;
                const bool good = ok(c->replies);
                conn.release(id);
                std::lock_guard lk(mu);
                if (blocking_ids.count(id)) {
                    if (good) taken_here.insert(id);
                    cv.notify_all();
                } else if (good) {
                    ++done_async;
                }
            }
            (void)conn.requests().take_events();
        }
    });
    std::vector<std::thread> senders;
    for (int t = 0; t < async_threads; ++t)
        senders.emplace_back([&, t] {
            for (int i = 0; i < per_thread; ++i) {
                // Every tenth one carries 2 MiB: by shared memory when the job is local.
                const bool big = i % 10 == 0;
                auto er = request((t + i) % engines, big ? "#" + std::string(2 << 20, 'b') : "print('x' * 10)", true);
                try {
                    conn.send(er.r.id, 1, proto::encode(er), false);
                    ++async_sent;
                } catch (const std::exception& e) {
                    fail(e.what());
                }
            }
        });
    for (int t = 0; t < blocking_threads; ++t)
        senders.emplace_back([&, t] {
            for (int i = 0; i < per_thread; ++i) {
                // Some replies are large (an execute result of 2 MB): lent segments come back.
                const bool big = i % 15 == 0;
                auto er = request((t + i) % engines, big ? "'r' * 2_000_000" : "1 + 1", false);
                const auto id = er.r.id;
                {
                    std::lock_guard lk(mu);
                    blocking_ids.insert(id);
                }
                try {
                    conn.send(id, 1, proto::encode(er), true);
                    // A second thread counts the same request's replies while this one takes it.
                    std::thread counter([&] { (void)conn.wait_count(id, 1, proto::clock::now() + std::chrono::seconds(30)); });
                    auto c = conn.wait_take(id, proto::clock::now() + std::chrono::seconds(60));
                    counter.join();
                    if (c) {
                        if (ok(c->replies)) ++done_blocking;
                        conn.release(id);
                    } else {
                        // Completed before this thread waited: the result thread took it.
                        std::unique_lock lk(mu);
                        if (cv.wait_for(lk, std::chrono::seconds(60), [&] { return taken_here.count(id) > 0; }))
                            ++done_blocking;
                        else
                            fail("no reply within 60 s");
                    }
                } catch (const std::exception& e) {
                    fail(e.what());
                }
            }
        });
    for (auto& t : senders) t.join();
    const auto deadline = proto::clock::now() + std::chrono::seconds(120);
    while (done_async < async_sent && failures == 0 && proto::clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    stop = true;
    results.join();
    conn.close();
    std::printf("blocking %d/%d, non-blocking %d/%d, failures %d\n", done_blocking.load(), blocking_threads * per_thread,
                done_async.load(), async_threads * per_thread, failures.load());
    if (failures || done_blocking != blocking_threads * per_thread || done_async != async_threads * per_thread) return 1;
    std::printf("TSAN CLIENT OK\n");
    return 0;
}
