import CSodium

/// Cryptographic randomness from libsodium (`randombytes_buf`), for what a served run must keep
/// unpredictable: its seeds when the operator gives none, and central DP noise (DESIGN,
/// principle 3). Simulations use seeded `RandomStream`s instead, so they reproduce.
public struct SecureRandom: RandomNumberGenerator, Sendable {
  /// Drawn in blocks, so a million normals do not make a million library calls.
  private var buffer = [UInt64](repeating: 0, count: 64)
  private var used = 64

  public init() {
    _ = Self.initialized
  }

  private static let initialized: Bool = sodium_init() >= 0

  public mutating func next() -> UInt64 {
    if used == buffer.count {
      buffer.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, $0.count) }
      used = 0
    }
    defer { used += 1 }
    return buffer[used]
  }

  /// One 64-bit value (a seed).
  public static func uint64() -> UInt64 {
    var random = SecureRandom()
    return random.next()
  }

  /// A standard normal pair by Box–Muller from two uniforms (the first in (0, 1]).
  public mutating func normalPair() -> (Double, Double) {
    RandomStream.boxMuller((Double(next() >> 11) + 1) * 0x1.0p-53, Double(next() >> 11) * 0x1.0p-53)
  }
}
