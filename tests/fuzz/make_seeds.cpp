// Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/{frame,messages,login}) from the
// real codec: every message, filled and empty, as a frame, as a meta, as a login. Run by hand
// when the messages change: make_seeds tests/fuzz/corpus
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "pcluster/protocol/codec.hpp"
#include "fuzz_support.hpp"

using namespace pcluster::protocol;
using pcluster::fuzz::filled;
namespace fs = std::filesystem;

namespace {
fs::path root;
int counter = 0;

void write(const std::string& dir, const std::string& name, const std::string& bytes) {
    fs::create_directories(root / dir);
    std::ofstream(root / dir / (std::to_string(counter++) + "-" + name), std::ios::binary) << bytes;
}

std::string flat(const outgoing_frame& f) {
    const auto v = f.flatten();
    return std::string(v.begin(), v.end());
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: make_seeds DIR\n");
        return 2;
    }
    root = argv[1];
    std::uint8_t index = 0;
    std::string stream;
    for_each_message([&](auto tag) {
        using T = decltype(tag);
        const std::string name = type_name(static_cast<std::uint16_t>(type_of<T>::value));
        for (const T& m : {T{}, filled<T>()}) {
            const std::string meta = encode_meta(m);
            write("messages", name, std::string(1, static_cast<char>(index)) + meta);
            const std::string buf = "payload-bytes";
            const auto f = encode(m, {std::span<const char>(buf.data(), buf.size())});
            write("frame", name, std::string(1, '\x01') + flat(f));
            write("frame", name + "-chunked", std::string(1, '\x0b') + flat(encode(m)));
            stream += flat(encode(m));
        }
        ++index;
    });
    write("frame", "stream", std::string(1, '\x00') + stream);
    write("frame", "stream-skip", std::string(1, '\x03') + stream);
    // A frame over the limit between two good ones (skipped when asked).
    {
        std::string over = flat(encode(job_ended{"x"}));
        frame_prefix p;
        std::memcpy(&p, over.data(), prefix_size);
        p.meta_len = max_meta_len + 1;
        p.body_len = max_meta_len + 1;
        std::string pre(reinterpret_cast<const char*>(&p), prefix_size);
        write("frame", "oversize-meta", std::string(1, '\x01') + flat(encode(job_ended{"a"})) + pre + std::string(64, 'z'));
    }
    // Logins: a stranger's frame, a right-looking one, a probe path.
    auth_request req;
    req.shm_probe = "/dev/shm/pcluster-c123x0a1b2c3d-00112233445566778899aabb";
    write("login", "auth_request", std::string(1, '\x00') + flat(encode(req)));
    write("login", "auth_request-chunked", std::string(1, '\x06') + flat(encode(req)));
    write("login", "probe", std::string(1, static_cast<char>(1 | (56 << 1))) + req.shm_probe + std::string(32, 't'));
    write("login", "challenge", std::string(1, '\x00') + flat(encode(challenge{})));
    std::printf("SEEDS OK: %d files in %s\n", counter, argv[1]);
    return 0;
}
