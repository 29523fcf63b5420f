import CohortCompression
import CohortCore
import Testing

/// `count` normal draws with standard deviation `scale` from `seed`.
private func normals(_ count: Int, seed: UInt64, scale: Double) -> [Float] {
  var rng = RandomStream(seed: seed, purpose: "ring-test-vector")
  return (0..<count).map { _ in Float(rng.normal() * scale) }
}

/// The elementwise sum of encodings mod 2^bits, as the secure aggregation server gets it.
private func ringSum(_ encodings: [[UInt32]], bits: Int) -> [UInt32] {
  let mask: UInt32 = bits == 32 ? .max : (1 << bits) - 1
  var sum = [UInt32](repeating: 0, count: encodings[0].count)
  for e in encodings {
    for i in e.indices { sum[i] = (sum[i] &+ e[i]) & mask }
  }
  return sum
}

/// What the encoding should stand for: weight·x clamped to [−clip, clip].
private func clamped(_ x: [Float], weight: Float, clip: Float) -> [Double] {
  x.map { Swift.min(Swift.max(Double(weight) * Double($0), -Double(clip)), Double(clip)) }
}

@Suite struct FixedPointRingEncodingTests {
  @Test(arguments: [(2, 3), (8, 9), (12, 32), (16, 20), (24, 25), (24, 32)])
  func oneVectorRoundTripsWithinOneStep(encodingBits: Int, ringBits: Int) {
    let seed = UInt64(encodingBits * 100 + ringBits)
    let encoding = FixedPointRingEncoding(clip: 0.5, encodingBits: encodingBits, ringBits: ringBits)
    #expect(encoding.scale == Float((1 << (encodingBits - 1)) - 1) / 0.5)
    var x = normals(200, seed: seed, scale: 0.4)
    x[0] = 3  // clamped to clip
    x[1] = -3
    let weight: Float = 0.75
    var rng = RandomStream(seed: seed, purpose: "ring-encode")
    let codes = encoding.encode(x, weight: weight, random: &rng)
    #expect(codes.count == x.count + 1)
    let limit = ringBits == 32 ? UInt64(UInt32.max) : (UInt64(1) << ringBits) - 1
    #expect(codes.allSatisfy { UInt64($0) <= limit }, "seed \(seed)")
    let (decoded, totalWeight) = encoding.decodeSum(codes)
    let step = 1 / Double(encoding.scale)
    let expected = clamped(x, weight: weight, clip: 0.5)
    #expect(decoded.count == x.count)
    for i in x.indices {
      #expect(
        abs(Double(decoded[i]) - expected[i]) <= step * (1 + 1e-6),
        "seed \(seed), e \(encodingBits), index \(i): \(decoded[i]) vs \(expected[i]), step \(step)")
    }
    #expect(abs(decoded[0] - 0.5) <= Float(step) && abs(decoded[1] + 0.5) <= Float(step), "seed \(seed)")
    let weightStep = 1 / Double((1 << (encodingBits - 1)) - 1)
    #expect(abs(totalWeight - 0.75) <= weightStep, "seed \(seed): weight \(totalWeight)")
  }

  @Test func encodingIsDeterministicGivenTheStream() {
    let encoding = FixedPointRingEncoding(clip: 1, encodingBits: 8, ringBits: 16)
    let x = normals(50, seed: 7, scale: 0.5)
    var a = RandomStream(seed: 7, purpose: "ring-encode")
    var b = RandomStream(seed: 7, purpose: "ring-encode")
    #expect(encoding.encode(x, weight: 0.5, random: &a) == encoding.encode(x, weight: 0.5, random: &b))
  }

  /// The mean of 2,000 decodings, each with its own stream, lies within 4 standard errors of the
  /// clamped weighted input, coordinate by coordinate, and so does the weight coordinate (coarse
  /// codes make the rounding matter; the seeds are fixed, so the test is deterministic).
  @Test(arguments: [3, 6])
  func stochasticRoundingIsUnbiased(encodingBits: Int) {
    let seed: UInt64 = 0x5EC0 + UInt64(encodingBits)
    let encoding = FixedPointRingEncoding(clip: 1, encodingBits: encodingBits, ringBits: encodingBits + 1)
    let x = normals(31, seed: seed, scale: 0.6)
    let weight: Float = 0.6
    let expected = clamped(x, weight: weight, clip: 1) + [Double(weight)]
    let trials = 2000
    var sum = [Double](repeating: 0, count: expected.count)
    var sumSquares = [Double](repeating: 0, count: expected.count)
    for trial in 0..<trials {
      var rng = RandomStream(seed: seed, purpose: "ring-encode", round: trial)
      let (decoded, w) = encoding.decodeSum(encoding.encode(x, weight: weight, random: &rng))
      let values = decoded.map(Double.init) + [w]
      for i in values.indices {
        sum[i] += values[i]
        sumSquares[i] += values[i] * values[i]
      }
    }
    for i in expected.indices {
      let mean = sum[i] / Double(trials)
      let variance = Swift.max(sumSquares[i] / Double(trials) - mean * mean, 0)
      let standardError = (variance / Double(trials)).squareRoot()
      // A value exactly on a code (e.g. ±clip) has no variance: allow float rounding only.
      let tolerance = Swift.max(4 * standardError, 1e-6)
      #expect(
        abs(mean - expected[i]) <= tolerance,
        "seed \(seed), e \(encodingBits), index \(i): mean \(mean) vs \(expected[i]), 4 SE = \(4 * standardError)"
      )
    }
  }

  @Test(arguments: [UInt64(1), 2, 3])
  func sumOfEncodingsDecodesToTheSumOfClampedInputs(seed: UInt64) {
    let devices = 50
    let encodingBits = 12
    // 12 + ⌈log2 50⌉ = 18 bits, as SecureAggregationPlan.ringBits chooses.
    let ringBits = SecureAggregationPlan(encodingBits: encodingBits).ringBits(devices: devices)
    #expect(ringBits == 18)
    let encoding = FixedPointRingEncoding(clip: 0.25, encodingBits: encodingBits, ringBits: ringBits)
    #expect(encoding.maxSummands >= devices)
    var weights = RandomStream(seed: seed, purpose: "ring-weights")
    var encodings: [[UInt32]] = []
    var expected = [Double](repeating: 0, count: 40)
    var expectedWeight = 0.0
    for device in 0..<devices {
      let x = normals(40, seed: seed &* 1000 &+ UInt64(device), scale: 0.3)
      let w = Float(1 + weights.int(below: 1000)) / 1000
      var rng = RandomStream(seed: seed, purpose: "ring-encode", device: device)
      encodings.append(encoding.encode(x, weight: w, random: &rng))
      for (i, v) in clamped(x, weight: w, clip: 0.25).enumerated() { expected[i] += v }
      expectedWeight += Double(w)
    }
    let (decoded, totalWeight) = encoding.decodeSum(ringSum(encodings, bits: ringBits))
    let tolerance = Double(devices) / Double(encoding.scale)
    for i in expected.indices {
      #expect(
        abs(Double(decoded[i]) - expected[i]) <= tolerance,
        "seed \(seed), index \(i): \(decoded[i]) vs \(expected[i]), \(devices) steps = \(tolerance)")
    }
    #expect(
      abs(totalWeight - expectedWeight) <= Double(devices) / Double((1 << (encodingBits - 1)) - 1),
      "seed \(seed): weight \(totalWeight) vs \(expectedWeight)")
  }

  @Test func negativeSumsDecodeAsNegative() {
    let seed: UInt64 = 11
    let encoding = FixedPointRingEncoding(clip: 1, encodingBits: 10, ringBits: 14)
    var encodings: [[UInt32]] = []
    var expected = [Double](repeating: 0, count: 20)
    for device in 0..<10 {
      // Every coordinate negative, some beyond −clip.
      let x = normals(20, seed: seed + UInt64(device), scale: 0.8).map { -abs($0) - 0.01 }
      var rng = RandomStream(seed: seed, purpose: "ring-encode", device: device)
      encodings.append(encoding.encode(x, weight: 1, random: &rng))
      for (i, v) in clamped(x, weight: 1, clip: 1).enumerated() { expected[i] += v }
    }
    let (decoded, totalWeight) = encoding.decodeSum(ringSum(encodings, bits: 14))
    for i in expected.indices {
      #expect(decoded[i] < 0, "seed \(seed), index \(i): \(decoded[i])")
      #expect(
        abs(Double(decoded[i]) - expected[i]) <= 10 / Double(encoding.scale),
        "seed \(seed), index \(i): \(decoded[i]) vs \(expected[i])")
    }
    #expect(totalWeight == 10, "seed \(seed)")
  }

  @Test(arguments: [(2, 3), (8, 12), (16, 17), (16, 32), (24, 25), (24, 32)])
  func maxSummandsIsTheBoundAndExtremesDoNotWrap(encodingBits: Int, ringBits: Int) {
    let encoding = FixedPointRingEncoding(clip: 0.5, encodingBits: encodingBits, ringBits: ringBits)
    let top = (1 << (encodingBits - 1)) - 1
    #expect(encoding.maxSummands == ((1 << (ringBits - 1)) - 1) / top)
    let n = encoding.maxSummands
    guard n <= 1 << 16 else {
      // Too many to sum one by one; the arithmetic bound above is the check.
      return
    }
    var rng = RandomStream(seed: UInt64(encodingBits * 100 + ringBits), purpose: "ring-extremes")
    // ±clip at weight 1 sit exactly on the largest codes, so no rounding: the sums are exact.
    let high = encoding.encode([0.5, -0.5, 9, -9], weight: 1, random: &rng)
    let at = ringSum([[UInt32]](repeating: high, count: n), bits: ringBits)
    let (decoded, weight) = encoding.decodeSum(at)
    let limit = Float(n) * 0.5
    #expect(decoded == [limit, -limit, limit, -limit], "e \(encodingBits), b \(ringBits), n \(n)")
    #expect(weight == Double(n), "e \(encodingBits), b \(ringBits)")
    // One more summand takes the positive sum past 2^(b−1) − 1, where it wraps: the bound is tight.
    let past = ringSum([[UInt32]](repeating: high, count: n + 1), bits: ringBits)
    let (wrapped, _) = encoding.decodeSum(past)
    #expect(wrapped[0] < 0, "e \(encodingBits), b \(ringBits): \(wrapped)")
  }

  @Test func nanCountsAsZeroAndEmptyUpdatesCarryTheWeight() {
    let encoding = FixedPointRingEncoding(clip: 1, encodingBits: 8, ringBits: 9)
    var rng = RandomStream(seed: 3)
    let (decoded, weight) = encoding.decodeSum(encoding.encode([.nan, .infinity], weight: 1, random: &rng))
    #expect(decoded == [0, 1])
    #expect(weight == 1)
    let (none, w) = encoding.decodeSum(encoding.encode([], weight: 1, random: &rng))
    #expect(none.isEmpty && w == 1)
  }
}
