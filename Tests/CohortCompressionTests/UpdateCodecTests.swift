import CohortCompression
import CohortCore
import Testing

/// A vector of `count` normal draws from `seed`.
private func gaussian(_ count: Int, seed: UInt64, scale: Double = 1) -> [Float] {
  var rng = RandomStream(seed: seed, purpose: "codec-test-vector")
  return (0..<count).map { _ in Float(rng.normal() * scale) }
}

private func dot(_ x: [Float], _ y: [Float]) -> Double {
  zip(x, y).reduce(0) { $0 + Double($1.0) * Double($1.1) }
}

@Suite struct BlockHadamardTests {
  @Test func blocksFollowTheBinaryDecomposition() {
    #expect(BlockHadamard.blocks(of: 610) == [512, 64, 32, 2])
    #expect(BlockHadamard.blocks(of: 1024) == [1024])
    #expect(BlockHadamard.blocks(of: 1) == [1])
    #expect(BlockHadamard.blocks(of: 0) == [])
    #expect(BlockHadamard.blocks(of: 7850) == [4096, 2048, 1024, 512, 128, 32, 8, 2])
  }

  @Test(arguments: [1, 2, 3, 7, 100, 610, 1000, 1023, 1025, 7850])
  func rotationIsOrthogonalAndInvertible(dimension: Int) {
    let seed = UInt64(dimension) &* 104_729
    let rotation = BlockHadamard(dimension: dimension, seed: seed)
    let x = gaussian(dimension, seed: seed)
    let y = gaussian(dimension, seed: seed + 1)
    let rx = rotation.rotate(x)
    let ry = rotation.rotate(y)
    #expect(rx.count == dimension, "seed \(seed): no padding")
    let scale = (dot(x, x) * dot(y, y)).squareRoot()
    #expect(abs(dot(rx, rx) - dot(x, x)) <= 1e-5 * dot(x, x), "seed \(seed)")
    #expect(abs(dot(rx, ry) - dot(x, y)) <= 1e-5 * scale, "seed \(seed)")
    let back = rotation.inverse(rx)
    let worst = zip(back, x).map { abs(Double($0) - Double($1)) }.max() ?? 0
    let largest = x.map { abs(Double($0)) }.max() ?? 0
    #expect(worst <= 1e-5 * Swift.max(largest, 1), "seed \(seed): worst error \(worst)")
    // Rotating a basis vector inside the largest block spreads it over that whole block.
    if dimension >= 64 {
      var e = [Float](repeating: 0, count: dimension)
      e[0] = 1
      let spread = rotation.rotate(e).prefix(rotation.blocks[0]).map { abs($0) }
      #expect(spread.allSatisfy { abs($0 - spread[0]) < 1e-6 }, "seed \(seed)")
    }
  }
}

@Suite struct UpdateCodecTests {
  func codec(_ plan: CompressionPlan, _ dimension: Int = 610) throws -> UpdateCodec {
    try UpdateCodec(plan: plan, dimension: dimension)
  }

  @Test func noneIsTheIdentityAtFourBytesAValue() throws {
    let c = try codec(CompressionPlan())
    let x = gaussian(610, seed: 1)
    var stream = RandomStream(seed: 1, purpose: "codec")
    let e = c.encode(x, stream: &stream)
    #expect(c.decode(e) == x && e.wireBytes == 2440 && c.uncompressedBytes == 2440)
  }

  /// With a per-vector range each rotated coordinate is off by at most one step (stochastic) or
  /// half a step (deterministic), step = (max − min)/(2^b − 1); the rotation is orthogonal, so the
  /// L2 error of the decoded update is at most √d times that. A fixed range gives the same bound
  /// with step = 2r/(2^b − 1) when no value is clamped.
  @Test(arguments: [1, 2, 4, 8, 12, 16])
  func roundTripErrorIsWithinTheQuantizationStep(bits: Int) throws {
    let seed: UInt64 = 0xB175 &+ UInt64(bits)
    let x = gaussian(610, seed: seed, scale: 0.01)
    for rotation in CompressionPlan.Rotation.allCases {
      for rounding in CompressionPlan.Rounding.allCases {
        for range: Double? in [nil, 0.2] {
          let c = try codec(.quantization(bits: bits, rotation: rotation, range: range, rounding: rounding))
          var stream = RandomStream(seed: seed, purpose: "codec", round: 1, device: 2)
          let e = c.encode(x, stream: &stream)
          guard case .quantized(let q) = e.payload else {
            Issue.record("seed \(seed): quantization gave \(e.payload)")
            continue
          }
          let step = Double(q.max - q.min) / Double((1 << bits) - 1)
          let perCoordinate = (rounding == .stochastic ? 1 : 0.5) * step
          let decoded = c.decode(e)
          let error = zip(decoded, x).reduce(0.0) { $0 + pow2(Double($1.0) - Double($1.1)) }.squareRoot()
          let bound = perCoordinate * Double(x.count).squareRoot() * 1.0001 + 1e-6
          #expect(
            error <= bound,
            "seed \(seed), \(bits) bits, \(rotation), \(rounding), range \(String(describing: range)): \(error) > \(bound)"
          )
          #expect(e.wireBytes == 1 + (610 * bits + 7) / 8 + (range == nil ? 8 : 0), "seed \(seed)")
        }
      }
    }
  }

  @Test func eightBitRotatedIsAtLeast3Point9TimesSmallerOn610Values() throws {
    let c = try codec(.quantization(bits: 8))
    var stream = RandomStream(seed: 42, purpose: "codec", round: 1, device: 0)
    let e = c.encode(gaussian(610, seed: 42), stream: &stream)
    // The bit width, the range and 610 packed bytes.
    #expect(e.wireBytes == 619)
    #expect(Double(c.uncompressedBytes) / Double(e.wireBytes) >= 3.9, "seed 42: \(e.wireBytes) bytes")
  }

  @Test func rotationLowersTheErrorOnASpikyVector() throws {
    let seed: UInt64 = 77
    var x = gaussian(610, seed: seed, scale: 0.001)
    x[3] = 1
    x[400] = -0.8
    func error(_ rotation: CompressionPlan.Rotation) throws -> Double {
      let c = try codec(.quantization(bits: 2, rotation: rotation))
      var total = 0.0
      for trial in 0..<20 {
        var stream = RandomStream(seed: seed, purpose: "codec", round: trial)
        total += zip(c.decode(c.encode(x, stream: &stream)), x).reduce(0.0) {
          $0 + pow2(Double($1.0) - Double($1.1))
        }
      }
      return total
    }
    let rotated = try error(.hadamard)
    let plain = try error(.none)
    #expect(rotated < plain / 2, "seed \(seed): rotated \(rotated), unrotated \(plain)")
  }

  @Test func sameStreamSameEncoding() throws {
    let c = try codec(.quantization(bits: 4))
    let x = gaussian(610, seed: 5)
    var a = RandomStream(seed: 5, purpose: "codec", round: 3, device: 9)
    var b = RandomStream(seed: 5, purpose: "codec", round: 3, device: 9)
    var other = RandomStream(seed: 5, purpose: "codec", round: 3, device: 10)
    #expect(c.encode(x, stream: &a) == c.encode(x, stream: &b))
    var again = RandomStream(seed: 5, purpose: "codec", round: 3, device: 9)
    #expect(c.encode(x, stream: &again) != c.encode(x, stream: &other))
  }

  @Test func sparsifiersKeepTheirFractionAndCountTheirBytes() throws {
    let x = gaussian(610, seed: 9)
    var stream = RandomStream(seed: 9, purpose: "codec")
    let top = try codec(CompressionPlan(kind: .topK, fraction: 0.1))
    let t = top.encode(x, stream: &stream)
    #expect(t.wireBytes == 4 + 61 * 8, "seed 9: the count, values and indices travel")
    let kept = top.decode(t)
    let threshold = kept.filter { $0 != 0 }.map { abs($0) }.min() ?? 0
    #expect(kept.filter { $0 != 0 }.count == 61)
    #expect(zip(kept, x).allSatisfy { $0.0 == 0 ? abs($0.1) <= threshold : $0.0 == $0.1 }, "seed 9")

    let mask = try codec(CompressionPlan(kind: .randomMask, fraction: 0.25))
    let m = mask.encode(x, stream: &stream)
    #expect(m.wireBytes == 4 + 153 * 4, "seed 9: only the count and values travel")
    let decoded = mask.decode(m)
    let scale = Float(610.0 / 153.0)
    #expect(decoded.filter { $0 != 0 }.count == 153)
    #expect(zip(decoded, x).allSatisfy { $0.0 == 0 || abs($0.0 - $0.1 * scale) <= 1e-5 * abs($0.1 * scale) })
  }
}

private func pow2(_ v: Double) -> Double { v * v }

/// The binary form of encoded updates: every codec's update survives the round trip bit for bit
/// at its declared size, and hostile bytes are refused with a reason, never a trap.
@Suite struct UpdateWireTests {
  static let plans: [CompressionPlan] = [
    CompressionPlan(), .quantization(bits: 8), .quantization(bits: 3, rotation: .none),
    .quantization(bits: 4, range: 0.5, rounding: .deterministic), CompressionPlan(kind: .topK, fraction: 0.1),
    CompressionPlan(kind: .randomMask, fraction: 0.25),
  ]

  func encoded(_ plan: CompressionPlan, seed: UInt64 = 21) throws -> (UpdateCodec, EncodedUpdate) {
    let codec = try UpdateCodec(plan: plan, dimension: 610)
    var stream = RandomStream(seed: seed, purpose: "codec", round: 1, device: 3)
    return (codec, codec.encode(gaussian(610, seed: seed, scale: 0.1), seed: seed &* 31, stream: &stream))
  }

  @Test(arguments: plans)
  func everyCodecRoundTripsAtItsWireSize(plan: CompressionPlan) throws {
    let (codec, e) = try encoded(plan)
    let bytes = e.wireForm
    #expect(bytes.count == e.wireBytes && bytes.count == codec.wireBytes, "seed 21, \(plan.kind)")
    #expect(e.wireKind == codec.wireKind)
    let back = try codec.update(fromWire: bytes, kind: e.wireKind, seed: e.seed)
    #expect(back == e, "seed 21, \(plan.kind)")
    #expect(codec.decode(back) == codec.decode(e), "seed 21, \(plan.kind)")
  }

  /// Refuses `bytes` for `plan`'s codec, with a message containing `reason`.
  func expectRefused(
    _ plan: CompressionPlan, _ bytes: [UInt8], kind: EncodedUpdate.WireKind? = nil, _ reason: String
  )
    throws
  {
    let codec = try UpdateCodec(plan: plan, dimension: 610)
    do {
      _ = try codec.update(fromWire: bytes, kind: kind ?? codec.wireKind, seed: 1)
      Issue.record("\(plan.kind): accepted \(bytes.count) hostile bytes (expected \(reason))")
    } catch {
      #expect(error.code == .invalidData && error.message.contains(reason), "\(plan.kind): \(error.message)")
    }
  }

  @Test(arguments: plans)
  func wrongLengthsAreRefused(plan: CompressionPlan) throws {
    let (_, e) = try encoded(plan)
    let bytes = e.wireForm
    try expectRefused(plan, Array(bytes.dropLast()), "bytes")
    try expectRefused(plan, bytes + [0], "bytes")
    try expectRefused(plan, [], "bytes")
  }

  @Test func anotherLayoutIsRefused() throws {
    let (_, e) = try encoded(.quantization(bits: 8))
    try expectRefused(.quantization(bits: 8), e.wireForm, kind: .sparse, "encoded as")
  }

  @Test(arguments: [0, 7, 9, 17, 255])
  func aBitWidthOtherThanThePlansIsRefused(bits: Int) throws {
    let (_, e) = try encoded(.quantization(bits: 8))
    var bytes = e.wireForm
    bytes[0] = UInt8(bits)
    try expectRefused(.quantization(bits: 8), bytes, "bit width")
  }

  @Test func aRangeThatIsNotAFiniteIntervalIsRefused() throws {
    let (_, e) = try encoded(.quantization(bits: 8))
    for (low, high) in [(Float.nan, 1), (0, Float.infinity), (1, -1)] as [(Float, Float)] {
      var bytes = e.wireForm
      withUnsafeBytes(of: low.bitPattern.littleEndian) { bytes.replaceSubrange(1..<5, with: $0) }
      withUnsafeBytes(of: high.bitPattern.littleEndian) { bytes.replaceSubrange(5..<9, with: $0) }
      try expectRefused(.quantization(bits: 8), bytes, "range")
    }
  }

  @Test func nonZeroPaddingBitsAreRefused() throws {
    // 610 levels of 3 bits end 6 bits into their last byte.
    let (_, e) = try encoded(.quantization(bits: 3, rotation: .none))
    var bytes = e.wireForm
    bytes[bytes.count - 1] |= 0x80
    try expectRefused(.quantization(bits: 3, rotation: .none), bytes, "padding")
  }

  @Test func sparseCountsAndIndicesAreChecked() throws {
    let plan = CompressionPlan(kind: .topK, fraction: 0.1)
    let (_, e) = try encoded(plan)
    let good = e.wireForm
    func uint32(_ v: UInt32, at offset: Int) -> [UInt8] {
      var bytes = good
      withUnsafeBytes(of: v.littleEndian) { bytes.replaceSubrange(offset..<offset + 4, with: $0) }
      return bytes
    }
    try expectRefused(plan, uint32(62, at: 0), "keeps 62 values")
    try expectRefused(plan, uint32(UInt32.max, at: 0), "keeps")
    // The first index is at offset 4, the last at 4 + 60·4.
    try expectRefused(plan, uint32(610, at: 4 + 60 * 4), "index 610 is out of range")
    try expectRefused(plan, uint32(UInt32.max, at: 4), "out of range")
    try expectRefused(plan, uint32(0, at: 8), "ascending")
  }
}
