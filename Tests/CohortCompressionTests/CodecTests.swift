import CohortCompression
import CohortCore
import Testing

/// A vector of `count` normal draws from `seed`.
private func gaussian(_ count: Int, seed: UInt64, scale: Double = 1) -> [Float] {
  var rng = RandomStream(seed: seed, purpose: "test-vector")
  return (0..<count).map { _ in Float(rng.normal() * scale) }
}

private func dot(_ x: [Float], _ y: [Float]) -> Double {
  zip(x, y).reduce(0) { $0 + Double($1.0) * Double($1.1) }
}

private func squaredError(_ x: [Float], _ y: [Float]) -> Double {
  zip(x, y).reduce(0) { $0 + (Double($1.0) - Double($1.1)) * (Double($1.0) - Double($1.1)) }
}

@Suite struct RandomizedHadamardTests {
  @Test(arguments: [1, 3, 7, 100, 1000, 1025])
  func rotationIsOrthogonalAndInvertible(dimension: Int) {
    let seed = UInt64(dimension) &* 7919
    let rotation = RandomizedHadamard(dimension: dimension, seed: seed)
    #expect(rotation.paddedDimension >= dimension && rotation.paddedDimension < 2 * dimension + 1)
    #expect(rotation.paddedDimension & (rotation.paddedDimension - 1) == 0)
    let x = gaussian(dimension, seed: seed)
    let y = gaussian(dimension, seed: seed + 1)
    let rx = rotation.rotate(x)
    let ry = rotation.rotate(y)
    #expect(rx.count == rotation.paddedDimension, "seed \(seed)")
    // Norms and inner products are preserved (relative to the vectors' size).
    let scale = (dot(x, x) * dot(y, y)).squareRoot()
    #expect(abs(dot(rx, rx) - dot(x, x)) <= 1e-5 * dot(x, x), "seed \(seed)")
    #expect(abs(dot(rx, ry) - dot(x, y)) <= 1e-5 * scale, "seed \(seed)")
    // The inverse restores the input to float precision.
    let back = rotation.inverse(rx)
    #expect(back.count == dimension)
    let worst = zip(back, x).map { abs(Double($0) - Double($1)) }.max() ?? 0
    let largest = x.map { abs(Double($0)) }.max() ?? 0
    #expect(worst <= 1e-5 * Swift.max(largest, 1), "seed \(seed): worst error \(worst)")
  }

  @Test func sameSeedSameRotationDifferentSeedDifferentRotation() {
    let x = gaussian(50, seed: 3)
    let a = RandomizedHadamard(dimension: 50, seed: 11).rotate(x)
    let b = RandomizedHadamard(dimension: 50, seed: 11).rotate(x)
    let c = RandomizedHadamard(dimension: 50, seed: 12).rotate(x)
    #expect(a == b)
    #expect(a != c)
  }
}

@Suite struct StochasticQuantizerTests {
  /// The mean of 2,000 encodings, each with its own stream, lies within 4 standard errors of the
  /// input, coordinate by coordinate (with 37 coordinates, a false alarm has probability ≈ 0.2%;
  /// the seeds are fixed, so the test is deterministic).
  @Test(arguments: [1, 2, 4, 8])
  func stochasticRoundingIsUnbiased(bits: Int) throws {
    let seed: UInt64 = 0xC0DE + UInt64(bits)
    let quantizer = try StochasticQuantizer(bits: bits)
    let x = gaussian(37, seed: seed)
    let trials = 2000
    var sum = [Double](repeating: 0, count: x.count)
    var sumSquares = [Double](repeating: 0, count: x.count)
    for trial in 0..<trials {
      var rng = RandomStream(seed: seed, purpose: "quantize", round: trial)
      let decoded = quantizer.decode(quantizer.encode(x, rng: &rng))
      for i in x.indices {
        sum[i] += Double(decoded[i])
        sumSquares[i] += Double(decoded[i]) * Double(decoded[i])
      }
    }
    for i in x.indices {
      let mean = sum[i] / Double(trials)
      let variance = Swift.max(sumSquares[i] / Double(trials) - mean * mean, 0)
      let standardError = (variance / Double(trials)).squareRoot()
      // A value on a level (the min and max) has no variance: allow float rounding only.
      let tolerance = Swift.max(4 * standardError, 1e-5)
      #expect(
        abs(mean - Double(x[i])) <= tolerance,
        "seed \(seed), bits \(bits), index \(i): mean \(mean) vs \(x[i]), 4 SE = \(4 * standardError)")
    }
  }

  /// Suresh et al. (2017): on a spiky vector the per-vector range is dominated by the spike, so
  /// unrotated 1-bit quantization sends every small coordinate as 0 or the spike; after a random
  /// rotation the range is O(‖x‖·√(log d / d)) and the error falls by an order of magnitude.
  @Test func rotationCutsOneBitErrorOnSpikyVectors() throws {
    let seed: UInt64 = 2017
    let dimension = 1000
    var x = gaussian(dimension, seed: seed, scale: 0.01)
    x[17] = 10
    let quantizer = try StochasticQuantizer(bits: 1)
    let rotation = RandomizedHadamard(dimension: dimension, seed: seed)
    var plain = 0.0
    var rotated = 0.0
    let trials = 20
    for trial in 0..<trials {
      var rng = RandomStream(seed: seed, purpose: "quantize", round: trial)
      plain += squaredError(quantizer.decode(quantizer.encode(x, rng: &rng)), x)
      let r = quantizer.decode(quantizer.encode(rotation.rotate(x), rng: &rng))
      rotated += squaredError(rotation.inverse(r), x)
    }
    #expect(rotated * 5 < plain, "seed \(seed): rotated MSE \(rotated / 20) vs unrotated \(plain / 20)")
  }

  @Test func deterministicRoundingIsDeterministicAndNearest() throws {
    let quantizer = try StochasticQuantizer(bits: 3, rounding: .deterministic)
    let x = gaussian(64, seed: 5)
    var a = RandomStream(seed: 1)
    var b = RandomStream(seed: 2)
    let untouched = a
    let qa = quantizer.encode(x, rng: &a)
    let qb = quantizer.encode(x, rng: &b)
    #expect(qa == qb)
    #expect(a == untouched, "deterministic rounding draws nothing")
    let step = (qa.max - qa.min) / 7
    for (value, decoded) in zip(x, quantizer.decode(qa)) {
      #expect(abs(value - decoded) <= step / 2 + 1e-5)
    }
  }

  @Test func fixedRangeSendsNoHeaderAndClampsOutliers() throws {
    let quantizer = try StochasticQuantizer(bits: 8, bounds: .fixed(min: -1, max: 1))
    var rng = RandomStream(seed: 9)
    let q = quantizer.encode([-3, -1, 0.5, 1, 2], rng: &rng)
    #expect(q.wireBytes == 5)
    #expect(quantizer.decode(q).first == -1 && quantizer.decode(q).last == 1)
    let perVector = try StochasticQuantizer(bits: 4).encode([1, 2, 3], rng: &rng)
    #expect(perVector.wireBytes == 2 + 8)
  }

  @Test func constantVectorsRoundTripExactly() throws {
    let quantizer = try StochasticQuantizer(bits: 2)
    var rng = RandomStream(seed: 4)
    #expect(quantizer.decode(quantizer.encode([0.25, 0.25, 0.25], rng: &rng)) == [0.25, 0.25, 0.25])
    #expect(quantizer.decode(quantizer.encode([], rng: &rng)).isEmpty)
  }

  @Test(arguments: [0, -1, 17, 32])
  func invalidBitWidthsAreRefused(bits: Int) {
    #expect {
      _ = try StochasticQuantizer(bits: bits)
    } throws: { error in
      guard let error = error as? CohortError else { return false }
      return error.code == .invalidConfiguration && error.message.contains("\(bits)")
        && error.message.contains("1...16")
    }
  }

  @Test func invalidFixedRangesAreRefused() {
    #expect(throws: CohortError.self) { _ = try StochasticQuantizer(bits: 4, bounds: .fixed(min: 1, max: 1)) }
    #expect(throws: CohortError.self) {
      _ = try StochasticQuantizer(bits: 4, bounds: .fixed(min: 0, max: .infinity))
    }
  }
}

@Suite struct BitPackingTests {
  @Test(arguments: 1...16)
  func packingRoundTripsAndIsTight(bits: Int) {
    let seed = UInt64(bits) &* 31
    var rng = RandomStream(seed: seed)
    for count in [0, 1, 3, 7, 9, 101, 1001] {
      let levels = (0..<count).map { _ in UInt16(rng.int(below: 1 << bits)) }
      let packed = BitPacking.pack(levels, bits: bits)
      #expect(packed.count == (count * bits + 7) / 8, "seed \(seed), bits \(bits), count \(count)")
      #expect(
        BitPacking.unpack(packed, bits: bits, count: count) == levels,
        "seed \(seed), bits \(bits), count \(count)")
    }
    // The extremes survive: all zeros and all ones.
    let ones = [UInt16](repeating: UInt16((1 << bits) - 1), count: 13)
    #expect(BitPacking.unpack(BitPacking.pack(ones, bits: bits), bits: bits, count: 13) == ones)
  }

  @Test func quantizedWireBytesCountPackedLevels() throws {
    var rng = RandomStream(seed: 8)
    let q = try StochasticQuantizer(bits: 3).encode(gaussian(11, seed: 8), rng: &rng)
    #expect(q.packedLevels.count == 5)
    #expect(q.wireBytes == 5 + 8)
  }
}

@Suite struct L2ClippingTests {
  @Test func clipsToTheBoundAndReportsTheNormBefore() {
    for seed: UInt64 in 1...50 {
      var v = gaussian(97, seed: seed, scale: 3)
      let original = v
      let bound = 0.1 * Double(seed)
      let before = L2Clipping.clip(&v, to: bound)
      #expect(abs(before - L2Clipping.l2Norm(original)) < 1e-9 * before, "seed \(seed)")
      let after = L2Clipping.l2Norm(v)
      #expect(after <= bound, "seed \(seed): \(after) > \(bound)")
      #expect(after >= bound * (1 - 1e-5), "seed \(seed)")
    }
    var small: [Float] = [0.3, 0.4]
    #expect(abs(L2Clipping.clip(&small, to: 1) - 0.5) < 1e-6)
    #expect(small == [0.3, 0.4])
  }
}

/// Found by fuzzing: values whose level is not a number used to trap the conversion to a level.
@Test func quantizingNaNOrAnOverflowingRangeGivesLevelZero() throws {
  var rng = RandomStream(seed: 1)
  for rounding in [StochasticQuantizer.Rounding.stochastic, .deterministic] {
    let quantizer = try StochasticQuantizer(bits: 4, rounding: rounding)
    #expect(quantizer.encode([.nan, 1, 2], rng: &rng).levels[0] == 0)
    let wide = quantizer.encode([-.greatestFiniteMagnitude, 0, .greatestFiniteMagnitude], rng: &rng)
    #expect(wide.levels.count == 3)
  }
}
