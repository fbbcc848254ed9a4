#include "pcluster/protocol/auth.hpp"

#include <stdexcept>

#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

namespace pcluster::protocol {

digest random_bytes32() {
    digest d;
    if (RAND_bytes(d.data(), static_cast<int>(d.size())) != 1)
        throw std::runtime_error("OpenSSL RAND_bytes failed: no secure random source");
    return d;
}

std::string to_hex(const digest& d) {
    static const char* digits = "0123456789abcdef";
    std::string s;
    s.reserve(64);
    for (auto b : d) {
        s.push_back(digits[b >> 4]);
        s.push_back(digits[b & 15]);
    }
    return s;
}

digest from_hex(std::string_view hex) {
    if (hex.size() != 64) throw std::invalid_argument("key must be 64 hex digits");
    auto val = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        throw std::invalid_argument("key must be 64 hex digits");
    };
    digest d;
    for (std::size_t i = 0; i < 32; ++i) d[i] = static_cast<std::uint8_t>(val(hex[2 * i]) * 16 + val(hex[2 * i + 1]));
    return d;
}

digest auth_mac(const digest& key, std::string_view label, const digest& nonce) {
    std::string msg(label);
    msg.append(reinterpret_cast<const char*>(nonce.data()), nonce.size());
    digest out;
    unsigned int len = 0;
    if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
              reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out.data(), &len) ||
        len != out.size())
        throw std::runtime_error("OpenSSL HMAC-SHA256 failed");
    return out;
}

bool macs_equal(const digest& a, const digest& b) {
    return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace pcluster::protocol
