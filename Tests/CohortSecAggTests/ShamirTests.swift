import Testing

@testable import CohortSecAgg

@Suite struct ShamirTests {
  /// A deterministic stream for test `seed`.
  private func stream(_ seed: UInt8) -> SecretStream {
    SecretStream(key: [UInt8](repeating: seed, count: 32))
  }

  private func randomSecret(_ rng: inout SecretStream, length: Int = 32) -> [UInt8] {
    (0..<length).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
  }

  @Test func fieldArithmetic() {
    let p = Shamir.prime
    #expect(MersenneField.mul(p - 1, p - 1) == 1)
    #expect(MersenneField.mul(1 << 60, 2) == 1)
    #expect(MersenneField.add(p - 1, 1) == 0)
    #expect(MersenneField.sub(0, 1) == p - 1)
    var rng = stream(9)
    for _ in 0..<200 {
      let a = (rng.next() & p) % p
      guard a != 0 else { continue }
      #expect(MersenneField.mul(a, MersenneField.inverse(a)) == 1, "a = \(a)")
    }
    let values: [UInt64] = [1, 2, 3, p - 1, 12345]
    #expect(MersenneField.batchInverse(values) == values.map(MersenneField.inverse))
  }

  @Test func chunkCounts() {
    #expect(Shamir.chunkCount(secretLength: 0) == 0)
    #expect(Shamir.chunkCount(secretLength: 7) == 1)
    #expect(Shamir.chunkCount(secretLength: 8) == 2)
    #expect(Shamir.chunkCount(secretLength: 32) == 5)
  }

  @Test(arguments: [(1, 1), (1, 5), (2, 2), (3, 5), (5, 5), (7, 20), (20, 20), (34, 100)])
  func roundTrip(threshold: Int, count: Int) throws {
    for seed in UInt8(1)...3 {
      var rng = stream(seed)
      let secret = randomSecret(&rng)
      let shares = Shamir.split(
        secret: secret, threshold: threshold, indices: (1...count).map { UInt32($0) }, randomness: &rng)
      #expect(shares.count == count)
      #expect(shares.allSatisfy { $0.values.count == 5 && $0.values.allSatisfy { $0 < Shamir.prime } })
      let back = try Shamir.reconstruct(shares, threshold: threshold, secretLength: 32)
      #expect(back == secret, "seed \(seed), t \(threshold), n \(count)")
    }
  }

  @Test func otherLengthsRoundTrip() throws {
    var rng = stream(4)
    for length in [0, 1, 6, 7, 8, 13, 14, 15, 64] {
      let secret = randomSecret(&rng, length: length)
      let shares = Shamir.split(secret: secret, threshold: 3, indices: [4, 9, 2, 7], randomness: &rng)
      #expect(
        try Shamir.reconstruct(shares, threshold: 3, secretLength: length) == secret, "length \(length)")
    }
  }

  @Test func splitReplaysFromItsSeed() {
    var a = stream(5)
    var b = stream(5)
    let secret = [UInt8](repeating: 0xAB, count: 32)
    let indices: [UInt32] = [1, 2, 3, 4]
    #expect(
      Shamir.split(secret: secret, threshold: 3, indices: indices, randomness: &a)
        == Shamir.split(secret: secret, threshold: 3, indices: indices, randomness: &b))
  }

  @Test func anyThresholdSubsetReconstructs() throws {
    for seed in UInt8(10)...14 {
      var rng = stream(seed)
      let n = 12
      let t = 5
      let secret = randomSecret(&rng)
      let shares = Shamir.split(
        secret: secret, threshold: t, indices: (1...n).map { UInt32($0) }, randomness: &rng)
      for _ in 0..<10 {
        var pool = shares
        var subset = [ShamirShare]()
        for _ in 0..<t { subset.append(pool.remove(at: Int(rng.next() % UInt64(pool.count)))) }
        #expect(
          try Shamir.reconstruct(subset, threshold: t, secretLength: 32) == secret,
          "seed \(seed), subset \(subset.map(\.index))")
      }
    }
  }

  @Test func fewerThanThresholdSharesDoNotReconstruct() throws {
    for seed in UInt8(20)...24 {
      var rng = stream(seed)
      let t = 4
      let secret = randomSecret(&rng)
      let shares = Shamir.split(
        secret: secret, threshold: t, indices: (1...8).map { UInt32($0) }, randomness: &rng)
      let few = Array(shuffled(shares, &rng).prefix(t - 1))
      // Interpolating t − 1 points gives a polynomial of lower degree: almost surely not the
      // secret; usually a chunk does not even fit its bytes.
      let wrong = try? Shamir.reconstruct(few, threshold: t - 1, secretLength: 32)
      #expect(wrong != secret, "seed \(seed)")
      #expect(throws: ShamirError.self, "seed \(seed)") {
        try Shamir.reconstruct(few, threshold: t, secretLength: 32)
      }
    }
  }

  @Test func reconstructRefusesBadInput() throws {
    var rng = stream(30)
    let secret = randomSecret(&rng)
    let shares = Shamir.split(secret: secret, threshold: 2, indices: [1, 2, 3], randomness: &rng)
    #expect(throws: ShamirError.self) {
      try Shamir.reconstruct([shares[0], shares[0], shares[1]], threshold: 2, secretLength: 32)
    }
    #expect(throws: ShamirError.self) { try Shamir.reconstruct(shares, threshold: 2, secretLength: 40) }
    #expect(throws: ShamirError.self) { try Shamir.reconstruct(shares, threshold: 0, secretLength: 32) }
    var zeroIndex = shares[1]
    zeroIndex.index = 0
    #expect(throws: ShamirError.self) {
      try Shamir.reconstruct([shares[0], zeroIndex], threshold: 2, secretLength: 32)
    }
    // A tampered share gives a chunk that does not fit its bytes (here, certainly: the last chunk
    // of the secret is 4 bytes and the error is spread over the field).
    var tampered = shares[1]
    tampered.values[4] = MersenneField.add(tampered.values[4], 1 << 40)
    #expect(throws: ShamirError.self) {
      try Shamir.reconstruct([shares[0], tampered], threshold: 2, secretLength: 32)
    }
  }

  @Test func shareBytesRoundTripAndRejectMalformed() {
    var rng = stream(40)
    let shares = Shamir.split(
      secret: randomSecret(&rng), threshold: 3, indices: [1, 77, 70_000], randomness: &rng)
    for share in shares {
      let bytes = share.bytes
      #expect(bytes.count == 4 + 8 * 5)
      #expect(ShamirShare(bytes: bytes, chunks: 5) == share)
      #expect(ShamirShare(bytes: bytes, chunks: 4) == nil)
      #expect(ShamirShare(bytes: Array(bytes.dropLast()), chunks: 5) == nil)
      #expect(ShamirShare(bytes: bytes + [0], chunks: 5) == nil)
      #expect(ShamirShare(bytes: bytes, chunks: -1) == nil)
    }
    #expect(ShamirShare(bytes: [1, 0, 0, 0], chunks: 0) == ShamirShare(index: 1, values: []))
    #expect(ShamirShare(bytes: [0, 0, 0, 0], chunks: 0) == nil)
    let notAnElement = ShamirShare(index: 3, values: [Shamir.prime]).bytes
    #expect(ShamirShare(bytes: notAnElement, chunks: 1) == nil)
    #expect(ShamirShare(bytes: ShamirShare(index: 3, values: [Shamir.prime - 1]).bytes, chunks: 1) != nil)
  }

  @Test func precomputedCoefficientsMatchThePlainPath() throws {
    var rng = stream(50)
    let t = 40
    let indices = (1...60).map { UInt32($0 * 3) }
    let survivors = Array(shuffled(indices, &rng).prefix(t))
    let coefficients = Shamir.lagrangeAtZero(survivors)
    #expect(coefficients.count == t)
    // Coefficients at 0 sum to 1: they interpolate the constant polynomial 1.
    #expect(coefficients.reduce(0, MersenneField.add) == 1)
    for _ in 0..<20 {
      let secret = randomSecret(&rng)
      let shares = Shamir.split(secret: secret, threshold: t, indices: indices, randomness: &rng)
      let byIndex = Dictionary(uniqueKeysWithValues: shares.map { ($0.index, $0) })
      let chosen = survivors.map { byIndex[$0]! }
      let fast = try Shamir.reconstruct(chosen, coefficients: coefficients, secretLength: 32)
      #expect(fast == secret)
      #expect(try Shamir.reconstruct(chosen, threshold: t, secretLength: 32) == fast)
    }
    #expect(throws: ShamirError.self) {
      try Shamir.reconstruct([], coefficients: [], secretLength: 32)
    }
  }

  @Test func largeThreshold() throws {
    var rng = stream(60)
    let t = 500
    let secret = randomSecret(&rng)
    let shares = Shamir.split(
      secret: secret, threshold: t, indices: (1...600).map { UInt32($0) }, randomness: &rng)
    let back = try Shamir.reconstruct(Array(shares.suffix(t)), threshold: t, secretLength: 32)
    #expect(back == secret)
  }
}

/// A test-only shuffle driven by a seeded stream (modulo bias does not matter here).
func shuffled<T>(_ array: [T], _ rng: inout SecretStream) -> [T] {
  var out = array
  for i in stride(from: out.count - 1, to: 0, by: -1) { out.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
  return out
}
