// Keys and the HMAC-SHA256 challenge-response every client passes before the bridge reads a
// request (OpenSSL does the cryptography).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace pcluster::protocol {

using digest = std::array<std::uint8_t, 32>;

// 32 bytes from the OpenSSL CSPRNG; throws std::runtime_error if it cannot be seeded.
digest random_bytes32();
std::string to_hex(const digest& d);
// Throws std::invalid_argument unless `hex` is exactly 64 hex digits.
digest from_hex(std::string_view hex);

// HMAC-SHA256(key, label || nonce). The label keeps the client's and the bridge's proofs apart.
digest auth_mac(const digest& key, std::string_view label, const digest& nonce);
// Constant-time comparison.
bool macs_equal(const digest& a, const digest& b);

inline constexpr std::string_view client_label = "pcluster-client";
inline constexpr std::string_view bridge_label = "pcluster-bridge";

}  // namespace pcluster::protocol
