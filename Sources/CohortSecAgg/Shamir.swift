/// One device's share of a secret: the evaluations, at x = `index`, of one random polynomial per
/// 7-byte chunk of the secret.
public struct ShamirShare: Sendable, Hashable {
  /// The x-coordinate, ≥ 1: the holder's 1-based position in the round. Never 0, since the value
  /// at 0 is the secret itself.
  public var index: UInt32
  /// One field element (< `Shamir.prime`) per chunk of the secret.
  public var values: [UInt64]

  public init(index: UInt32, values: [UInt64]) {
    self.index = index
    self.values = values
  }

  /// 4 bytes index (LE) + 8 bytes (LE) per value: a fixed-width form to encrypt and send.
  public var bytes: [UInt8] {
    var out = [UInt8]()
    out.reserveCapacity(4 + 8 * values.count)
    for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: index >> (8 * UInt32(i)))) }
    for v in values {
      for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
    }
    return out
  }

  /// Parses `bytes`; nil on a wrong length, index 0 or any value that is not a field element, so a
  /// malformed share is refused here rather than silently reduced into a wrong secret.
  public init?(bytes: [UInt8], chunks: Int) {
    guard chunks >= 0, chunks <= bytes.count / 8, bytes.count == 4 + 8 * chunks else { return nil }
    var index: UInt32 = 0
    for i in 0..<4 { index |= UInt32(bytes[i]) << (8 * UInt32(i)) }
    guard index != 0 else { return nil }
    var values = [UInt64]()
    values.reserveCapacity(chunks)
    for c in 0..<chunks {
      var v: UInt64 = 0
      for i in 0..<8 { v |= UInt64(bytes[4 + 8 * c + i]) << (8 * UInt64(i)) }
      guard v < Shamir.prime else { return nil }
      values.append(v)
    }
    self.init(index: index, values: values)
  }
}

/// Why a reconstruction was refused.
public struct ShamirError: Error, Sendable, Equatable, CustomStringConvertible {
  public var message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}

/// Shamir secret sharing over the prime field p = 2^61 − 1.
///
/// A Mersenne prime makes reduction a shift and an add, and 61 bits hold a 7-byte chunk, so a
/// 32-byte key becomes 5 field elements (the last holding 4 bytes). Each chunk gets its own random
/// polynomial of degree t − 1 whose constant term is the chunk; a share is the polynomials'
/// values at the holder's index. Any t shares determine the polynomials (Lagrange interpolation at
/// 0); t − 1 shares are consistent with every possible secret, so they reveal nothing.
public enum Shamir {
  public static let prime: UInt64 = (1 << 61) - 1

  /// Bytes per chunk: the largest whole number of bytes below 61 bits.
  static let chunkBytes = 7

  /// Field elements per share for a secret of `secretLength` bytes.
  public static func chunkCount(secretLength: Int) -> Int {
    (secretLength + chunkBytes - 1) / chunkBytes
  }

  /// Shares of `secret` at x = each of `indices` (distinct, ≥ 1); any `threshold` of them
  /// reconstruct it, fewer reveal nothing.
  ///
  /// Coefficients come from `randomness`, chunk by chunk (t − 1 per chunk, lowest degree first),
  /// each uniform in [0, p) by rejection on the low 61 bits of `next()`, so a seeded stream
  /// replays the same shares. The coefficients are zeroed before returning.
  public static func split(
    secret: [UInt8], threshold: Int, indices: [UInt32], randomness: inout SecretStream
  ) -> [ShamirShare] {
    precondition(threshold >= 1 && threshold <= indices.count, "need 1 ≤ threshold ≤ number of shares")
    precondition(indices.allSatisfy { $0 >= 1 }, "share indices start at 1")
    precondition(Set(indices).count == indices.count, "share indices must be distinct")
    let chunks = chunkCount(secretLength: secret.count)
    var values = [[UInt64]](repeating: [UInt64](repeating: 0, count: chunks), count: indices.count)
    var coefficients = [UInt64](repeating: 0, count: threshold)
    for c in 0..<chunks {
      coefficients[0] = chunk(c, of: secret)
      for j in 1..<threshold { coefficients[j] = randomElement(&randomness) }
      for (s, index) in indices.enumerated() {
        let x = UInt64(index)
        var acc: UInt64 = 0
        for j in stride(from: threshold - 1, through: 0, by: -1) {
          acc = MersenneField.add(MersenneField.mul(acc, x), coefficients[j])
        }
        values[s][c] = acc
      }
    }
    SecAggCrypto.zero(&coefficients)
    return zip(indices, values).map { ShamirShare(index: $0, values: $1) }
  }

  /// Reconstructs a `secretLength`-byte secret from the first `threshold` of `shares` (any more
  /// are only checked for duplicate indices).
  ///
  /// Throws when there are fewer than `threshold` shares, two shares with the same index (a
  /// protocol error upstream, so refused rather than guessed around), index 0, a chunk count
  /// that does not fit `secretLength`, or a reconstructed chunk wider than its bytes. The last is
  /// how wrong shares usually show: a random field element fits 7 bytes with probability 2^−5,
  /// the 4-byte last chunk of a 32-byte secret with probability 2^−29.
  public static func reconstruct(
    _ shares: [ShamirShare], threshold: Int, secretLength: Int
  ) throws(ShamirError) -> [UInt8] {
    guard threshold >= 1 else { throw ShamirError("the threshold must be at least 1") }
    var seen = Set<UInt32>()
    seen.reserveCapacity(shares.count)
    for share in shares {
      guard share.index != 0 else { throw ShamirError("a share has index 0") }
      guard seen.insert(share.index).inserted else {
        throw ShamirError("two shares have index \(share.index)")
      }
    }
    guard shares.count >= threshold else {
      throw ShamirError("\(shares.count) shares, fewer than the threshold \(threshold)")
    }
    let used = Array(shares.prefix(threshold))
    return try reconstruct(
      used, coefficients: lagrangeAtZero(used.map(\.index)), secretLength: secretLength)
  }

  /// Lagrange coefficients at x = 0 for the given distinct indices (≥ 1): result[i] is the
  /// coefficient for indices[i].
  ///
  /// A server unmasking many devices from the same set of survivors computes these once and
  /// reconstructs each secret in O(t). λ_i = N / (x_i · Π_{j≠i}(x_j − x_i)) with N = Π x_j, so the
  /// O(t²) products need only one field inversion (batch inversion).
  public static func lagrangeAtZero(_ indices: [UInt32]) -> [UInt64] {
    precondition(indices.allSatisfy { $0 >= 1 }, "share indices start at 1")
    precondition(Set(indices).count == indices.count, "share indices must be distinct")
    let xs = indices.map { UInt64($0) }
    var numerator: UInt64 = 1
    for x in xs { numerator = MersenneField.mul(numerator, x) }
    var denominators = [UInt64](repeating: 0, count: xs.count)
    for i in xs.indices {
      var d = xs[i]
      for j in xs.indices where j != i { d = MersenneField.mul(d, MersenneField.sub(xs[j], xs[i])) }
      denominators[i] = d
    }
    return MersenneField.batchInverse(denominators).map { MersenneField.mul(numerator, $0) }
  }

  /// Reconstructs with coefficients from `lagrangeAtZero`: shares[i] must be the share at the index
  /// `coefficients[i]` was computed for (not checked: the coefficients do not carry indices).
  public static func reconstruct(
    _ shares: [ShamirShare], coefficients: [UInt64], secretLength: Int
  ) throws(ShamirError) -> [UInt8] {
    guard secretLength >= 0 else { throw ShamirError("negative secret length") }
    guard !shares.isEmpty else { throw ShamirError("no shares") }
    guard shares.count == coefficients.count else {
      throw ShamirError("\(shares.count) shares but \(coefficients.count) coefficients")
    }
    guard coefficients.allSatisfy({ $0 < prime }) else {
      throw ShamirError("a coefficient is not a field element")
    }
    let chunks = chunkCount(secretLength: secretLength)
    for share in shares {
      guard share.values.count == chunks else {
        throw ShamirError(
          "share \(share.index) has \(share.values.count) chunks, expected \(chunks) for \(secretLength) bytes"
        )
      }
      guard share.values.allSatisfy({ $0 < prime }) else {
        throw ShamirError("share \(share.index) holds a value that is not a field element")
      }
    }
    var out = [UInt8]()
    out.reserveCapacity(secretLength)
    for c in 0..<chunks {
      var acc: UInt64 = 0
      for i in shares.indices {
        acc = MersenneField.add(acc, MersenneField.mul(coefficients[i], shares[i].values[c]))
      }
      let width = min(chunkBytes, secretLength - c * chunkBytes)
      guard acc >> UInt64(8 * width) == 0 else {
        SecAggCrypto.zero(&out)
        throw ShamirError("chunk \(c) does not fit \(width) bytes: the shares are inconsistent")
      }
      for b in 0..<width { out.append(UInt8(truncatingIfNeeded: acc >> UInt64(8 * b))) }
    }
    return out
  }

  /// Chunk `c` of `secret` as a little-endian integer (< 2^56, so a field element).
  private static func chunk(_ c: Int, of secret: [UInt8]) -> UInt64 {
    var v: UInt64 = 0
    let start = c * chunkBytes
    for i in start..<min(start + chunkBytes, secret.count) {
      v |= UInt64(secret[i]) << UInt64(8 * (i - start))
    }
    return v
  }

  /// Uniform in [0, p): the low 61 bits are uniform in [0, 2^61), and only p itself is rejected.
  private static func randomElement(_ randomness: inout SecretStream) -> UInt64 {
    while true {
      let v = randomness.next() & prime
      if v < prime { return v }
    }
  }
}

/// Arithmetic in GF(2^61 − 1). Operands are reduced (< p).
enum MersenneField {
  static let p = Shamir.prime

  @inline(__always) static func add(_ a: UInt64, _ b: UInt64) -> UInt64 {
    let s = a &+ b
    return s >= p ? s &- p : s
  }

  @inline(__always) static func sub(_ a: UInt64, _ b: UInt64) -> UInt64 {
    a >= b ? a &- b : a &+ (p &- b)
  }

  /// 2^61 ≡ 1 (mod p), so the 122-bit product folds as low 61 bits + the rest.
  @inline(__always) static func mul(_ a: UInt64, _ b: UInt64) -> UInt64 {
    let (hi, lo) = a.multipliedFullWidth(by: b)
    // The first fold is < 2^62; the second is ≤ p.
    var r = (lo & p) &+ ((hi << 3) | (lo >> 61))
    r = (r & p) &+ (r >> 61)
    return r == p ? 0 : r
  }

  static func pow(_ base: UInt64, _ exponent: UInt64) -> UInt64 {
    var result: UInt64 = 1
    var b = base
    var e = exponent
    while e > 0 {
      if e & 1 == 1 { result = mul(result, b) }
      b = mul(b, b)
      e >>= 1
    }
    return result
  }

  /// Fermat: a^(p−2) = a^(−1) for a ≠ 0.
  static func inverse(_ a: UInt64) -> UInt64 {
    precondition(a != 0, "0 has no inverse")
    return pow(a, p - 2)
  }

  /// Inverses of all (non-zero) `values` with one field inversion (Montgomery's trick).
  static func batchInverse(_ values: [UInt64]) -> [UInt64] {
    guard !values.isEmpty else { return [] }
    var prefix = [UInt64](repeating: 1, count: values.count)
    var running: UInt64 = 1
    for i in values.indices {
      prefix[i] = running
      running = mul(running, values[i])
    }
    var inv = inverse(running)
    var out = [UInt64](repeating: 0, count: values.count)
    for i in values.indices.reversed() {
      out[i] = mul(inv, prefix[i])
      inv = mul(inv, values[i])
    }
    return out
  }
}
