import CohortCore
import CohortPrivacy
import Foundation
import Testing

private typealias DDG = DistributedDiscreteGaussian

private func norm(_ x: [Double]) -> Double { x.reduce(0) { $0 + $1 * $1 }.squareRoot() }

private func norm(_ x: [Int64]) -> Double { x.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot() }

/// `x` scaled down to L2 norm at most `c`, in Double.
private func clipped(_ x: [Float], to c: Double) -> [Double] {
  let d = x.map(Double.init)
  let n = norm(d)
  return n > c ? d.map { $0 * c / n } : d
}

/// The sum mod 2^b of equal-length vectors of ring elements.
private func ringSum(_ vectors: [[UInt32]], bits: Int) -> [UInt32] {
  let mask: UInt32 = bits == 32 ? .max : (1 << bits) - 1
  var sum = [UInt32](repeating: 0, count: vectors[0].count)
  for v in vectors { for i in sum.indices { sum[i] = (sum[i] &+ v[i]) & mask } }
  return sum
}

@Suite struct DistributedDiscreteGaussianTests {
  @Test func parameterHelpers() {
    // Δ₂² = min{(c/γ + √d)², c²/γ² + d/4 + √(2 log(1/β))·(c/γ + √d/2)}: with c/γ = 100, d = 64
    // and √(2 log(1/β)) = 1 that is min{108², 10000 + 16 + 104}.
    let bound = DDG.roundedNormBound(clipNorm: 1, granularity: 0.01, beta: exp(-0.5), dimension: 64)
    #expect(abs(bound * bound - 10_120) < 1e-9)
    let worst = DDG.roundedNormBound(clipNorm: 1, granularity: 0.01, beta: 0, dimension: 64)
    #expect(abs(worst - 108) < 1e-12)
    // n devices at σ/√n each carry total variance σ².
    let local = DDG.localSigma(totalSigma: 3, devices: 50)
    #expect(abs(50 * local * local - 9) < 1e-12)
    // A wider ring for more devices, more noise or a finer lattice.
    let b = DDG.ringBits(devices: 20, clipNorm: 1, granularity: 1.0 / 256, totalSigma: 0.5, dimension: 50)
    #expect(b == 14, "b = \(b)")
    #expect(
      DDG.ringBits(devices: 200, clipNorm: 1, granularity: 1.0 / 256, totalSigma: 0.5, dimension: 50) > b)
    #expect(
      DDG.ringBits(devices: 20, clipNorm: 1, granularity: 1.0 / 1024, totalSigma: 0.5, dimension: 50) > b)
    #expect(DDG.ringBits(devices: 20, clipNorm: 1, granularity: 1.0 / 256, totalSigma: 50, dimension: 50) > b)
  }

  @Test func tauVanishesForWideNoiseAndRDPIsThenGaussian() {
    let codec = DDG(
      dimension: 50, clipNorm: 1, granularity: 1.0 / 256, localSigma: 0.1, beta: 1e-6, ringBits: 20,
      rotationSeed: 1)
    #expect(codec.tau(devices: 100) == 0)
    let scale = codec.l2Sensitivity / (10 * 0.1)
    #expect(abs(codec.rdp(order: 4, devices: 100) - 4 * scale * scale / 2) < 1e-12)
    // Narrow noise: the sum is not quite a discrete Gaussian and τ > 0 costs privacy.
    let narrow = DDG(
      dimension: 50, clipNorm: 1, granularity: 1, localSigma: 0.3, beta: 1e-6, ringBits: 20, rotationSeed: 1)
    #expect(narrow.tau(devices: 100) > 0)
    let narrowScale = narrow.l2Sensitivity / (10 * 0.3)
    #expect(narrow.rdp(order: 4, devices: 100) > 4 * narrowScale * narrowScale / 2)
  }

  /// With a tight bound (β = 1/2), plain randomized rounding sometimes exceeds it; conditional
  /// rounding never does.
  @Test func conditionalRoundingRespectsTheNormBound() {
    let seed: UInt64 = 0xDD_0001
    var random = RandomStream(seed: seed, purpose: "rounding")
    // Every coordinate ±10.5: rounding moves each by ±1/2, the worst case for the norm.
    let x = (0..<64).map { i in i % 3 == 0 ? -10.5 : 10.5 }
    let bound = DDG.roundedNormBound(clipNorm: norm(x), granularity: 1, beta: 0.5, dimension: 64)
    var exceeded = 0
    for _ in 0..<400 {
      let plain = DDG.conditionalRandomizedRounding(x, normBound: .infinity, maxAttempts: 1, random: &random)
      if norm(plain) > bound { exceeded += 1 }
      let conditional = DDG.conditionalRandomizedRounding(
        x, normBound: bound, maxAttempts: 100, random: &random)
      #expect(norm(conditional) <= bound, "seed \(seed)")
      #expect(zip(conditional, x).allSatisfy { abs(Double($0) - $1) < 1 }, "seed \(seed)")
    }
    #expect(exceeded > 0, "seed \(seed): the bound never bit, the test proves nothing")
    // When no attempt succeeds the vector is rounded toward zero, which never increases the norm.
    let fallback = DDG.conditionalRandomizedRounding(x, normBound: 0, maxAttempts: 3, random: &random)
    #expect(fallback == x.map { Int64($0.rounded(.towardZero)) })
  }

  /// The mean of many conditional roundings (with the usual small β) is the input, within 4.5
  /// standard errors (√(f(1 − f)/K) ≤ 1/(2√K)) in every coordinate.
  @Test func conditionalRoundingIsUnbiased() {
    let seed: UInt64 = 0xDD_0002
    var random = RandomStream(seed: seed, purpose: "rounding")
    let x = (0..<64).map { _ in random.normal() * 3 }
    let bound = DDG.roundedNormBound(clipNorm: norm(x), granularity: 1, beta: 1e-6, dimension: 64)
    let repeats = 2_000
    var totals = [Double](repeating: 0, count: x.count)
    for _ in 0..<repeats {
      let r = DDG.conditionalRandomizedRounding(x, normBound: bound, maxAttempts: 100, random: &random)
      #expect(norm(r) <= bound)
      for i in totals.indices { totals[i] += Double(r[i]) }
    }
    let tolerance = 4.5 * 0.5 / Double(repeats).squareRoot()
    let worst = zip(totals, x).map { abs($0 / Double(repeats) - $1) }.max() ?? 0
    #expect(worst < tolerance, "seed \(seed): worst coordinate bias \(worst)")
  }

  /// Without noise, one device's encoding decodes to its clipped update, within the rounding
  /// error: at most γ·√d' in L2 norm.
  @Test func noiselessRoundTripRestoresTheClippedUpdate() {
    let seed: UInt64 = 0xDD_0003
    var random = RandomStream(seed: seed, purpose: "round-trip")
    let codec = DDG(
      dimension: 100, clipNorm: 2, granularity: 1.0 / 512, localSigma: 0, beta: 1e-6, ringBits: 16,
      rotationSeed: seed)
    #expect(codec.paddedDimension == 128)
    for scale in [0.05, 1.0] {
      let x = (0..<100).map { _ in Float(random.normal() * scale) }
      let encoded = codec.encode(x, random: &random)
      #expect(encoded.count == 128 && encoded.allSatisfy { $0 < 1 << 16 })
      let decoded = codec.decodeSum(encoded)
      let error = norm(zip(decoded, clipped(x, to: 2)).map { $0 - $1 })
      #expect(error <= codec.granularity * 128.0.squareRoot(), "seed \(seed), scale \(scale): error \(error)")
    }
  }

  /// 20 devices encode, the ring sums, the server decodes: the result is the sum of the clipped
  /// updates plus noise whose variance per coordinate is the total σ², and the ring chosen by
  /// `ringBits` does not wrap (decoding it gives exactly what a 32-bit ring gives).
  @Test func twentyDevicesSumToTheClippedSumWithTheTotalNoise() {
    let seed: UInt64 = 0xDD_0004
    let devices = 20
    let dimension = 50
    let clipNorm = 1.0
    let granularity = 1.0 / 256
    let sigma = 0.5
    let bits = DDG.ringBits(
      devices: devices, clipNorm: clipNorm, granularity: granularity, totalSigma: sigma, dimension: dimension)
    #expect(bits < 32)
    func codec(bits: Int) -> DDG {
      DDG(
        dimension: dimension, clipNorm: clipNorm, granularity: granularity,
        localSigma: DDG.localSigma(totalSigma: sigma, devices: devices), beta: 1e-6, ringBits: bits,
        rotationSeed: seed)
    }
    let narrow = codec(bits: bits)
    let wide = codec(bits: 32)
    let tooNarrow = codec(bits: 8)
    var data = RandomStream(seed: seed, purpose: "updates")
    var errors: [Double] = []
    var wrapped = 0
    for trial in 0..<20 {
      // Updates sharing a direction, so their sum is long (norm ≈ 20) and the ring is tested.
      let shared = (0..<dimension).map { _ in data.normal() * 0.3 }
      let updates = (0..<devices).map { _ in
        (0..<dimension).map { j in Float(shared[j] + data.normal() * 0.1) }
      }
      var expected = [Double](repeating: 0, count: dimension)
      for u in updates { for (j, v) in clipped(u, to: clipNorm).enumerated() { expected[j] += v } }
      var sums: [[UInt32]] = [[], [], []]
      for (k, codec) in [narrow, wide, tooNarrow].enumerated() {
        let encodings = updates.enumerated().map { i, u in
          var random = RandomStream(seed: seed, purpose: "device-noise", round: trial, device: i)
          return codec.encode(u, random: &random)
        }
        sums[k] = ringSum(encodings, bits: codec.ringBits)
      }
      let decoded = narrow.decodeSum(sums[0])
      #expect(
        decoded == wide.decodeSum(sums[1]), "seed \(seed), trial \(trial): the \(bits)-bit ring wrapped")
      if tooNarrow.decodeSum(sums[2]) != decoded { wrapped += 1 }
      errors += zip(decoded, expected).map { $0 - $1 }
    }
    #expect(wrapped > 0, "seed \(seed): an 8-bit ring never wrapped, the no-wrap check proves nothing")
    let n = Double(errors.count)
    let mean = errors.reduce(0, +) / n
    let variance = errors.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / (n - 1)
    #expect(abs(mean) < 4 * sigma / n.squareRoot(), "seed \(seed): mean error \(mean)")
    // σ² plus at most n·γ²/4 of rounding, within 5 standard errors of a sample variance.
    let rounding = Double(devices) * granularity * granularity / 4
    let slack = 5 * sigma * sigma * (2 / n).squareRoot()
    #expect(
      variance > sigma * sigma - slack && variance < sigma * sigma + rounding + slack,
      "seed \(seed): error variance \(variance), expected \(sigma * sigma)")
  }
}
