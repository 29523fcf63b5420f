public import CohortCore

/// Fixed-point encoding of an update into the ring Z/2^b, the input of secure aggregation.
///
/// Secure aggregation adds vectors of integers mod 2^b (the masks cancel only there), so each
/// device turns its weighted update into signed integer codes of `encodingBits` bits and appends
/// its weight as one more coordinate; the server decodes the sum of every device's codes into
/// Σ wᵢ·Δᵢ and Σ wᵢ, and divides. Codes are signed, stored in two's complement mod 2^b, and the
/// ring is `ringBits` wide so that up to `maxSummands` sums cannot wrap
/// (`SecureAggregationPlan.ringBits(devices:)` chooses it from the cohort size).
///
/// Rounding is stochastic (floor(x) + Bernoulli(frac(x))), so each code is an unbiased estimate of
/// the scaled value and the decoded sum is an unbiased estimate of the sum of the clamped inputs,
/// with an error below one quantisation step per summand (Bonawitz et al., CCS 2017, §3;
/// Kairouz et al., ICML 2021, on fixed-point encoding before modular summation).
public struct FixedPointRingEncoding: Sendable, Hashable {
  /// Coordinates of weight·update are clamped to [−clip, clip].
  public var clip: Float
  /// Bits of the signed code: codes lie in [−(2^(e−1) − 1), 2^(e−1) − 1].
  public var encodingBits: Int
  /// Bits of the ring, at most 32: codes are taken mod 2^b and stored as `UInt32`.
  public var ringBits: Int

  /// The accepted code widths.
  public static let encodingBitWidths = 2...24

  /// `clip` must be positive and finite, `encodingBits` in 2...24 and `ringBits` in
  /// encodingBits...32 (`SecureAggregationPlan` validates the plan's values before they get here).
  public init(clip: Float, encodingBits: Int, ringBits: Int) {
    precondition(clip.isFinite && clip > 0, "clip must be positive and finite, not \(clip)")
    precondition(
      Self.encodingBitWidths.contains(encodingBits), "encodingBits must be in 2...24, not \(encodingBits)")
    precondition(
      (encodingBits...32).contains(ringBits), "ringBits must be in \(encodingBits)...32, not \(ringBits)")
    self.clip = clip
    self.encodingBits = encodingBits
    self.ringBits = ringBits
  }

  /// The largest code: 2^(e−1) − 1.
  var largestCode: Int64 { (Int64(1) << (encodingBits - 1)) - 1 }

  /// Codes per unit of update: (2^(e−1) − 1) / clip.
  public var scale: Float { Float(largestCode) / clip }

  /// 2^b − 1: the ring's elements are the `UInt32` values up to this.
  var ringMask: UInt32 { ringBits == 32 ? .max : (UInt32(1) << ringBits) - 1 }

  /// The largest number of summed encodings that cannot wrap the ring:
  /// ⌊(2^(b−1) − 1) / (2^(e−1) − 1)⌋.
  public var maxSummands: Int { Int(((Int64(1) << (ringBits - 1)) - 1) / largestCode) }

  /// Encodes weight·update followed by the weight itself as one extra coordinate.
  ///
  /// Each coordinate of weight·update is clamped to [−clip, clip] (NaN counts as 0: the ring has
  /// no code for it), scaled by `scale` and rounded stochastically; the weight, in [0, 1], is
  /// encoded with scale 2^(e−1) − 1 (as if clip were 1). `random` gives one uniform draw per
  /// output element, in order, whatever the values. The output has update.count + 1 elements,
  /// each in [0, 2^b).
  public func encode(_ update: [Float], weight: Float, random: inout RandomStream) -> [UInt32] {
    precondition(weight >= 0 && weight <= 1, "the weight must be in [0, 1], not \(weight)")
    let top = Double(largestCode)
    let bound = Double(clip)
    let perUnit = top / bound
    let w = Double(weight)
    let mask = ringMask
    var out = [UInt32](repeating: 0, count: update.count + 1)
    // Scaled value → stochastically rounded code mod 2^b. Computed in Double so 24-bit codes keep
    // their fractional part; the final clamp guards against the product landing a hair above top.
    func code(_ scaled: Double) -> UInt32 {
      let floor = scaled.rounded(.down)
      let up: Double = random.uniform() < scaled - floor ? 1 : 0
      let c = Swift.min(Swift.max(Int64(floor + up), -largestCode), largestCode)
      return UInt32(truncatingIfNeeded: c) & mask
    }
    update.withUnsafeBufferPointer { input in
      out.withUnsafeMutableBufferPointer { o in
        for i in 0..<input.count {
          let v = w * Double(input[i])
          let clamped = v.isNaN ? 0 : Swift.min(Swift.max(v, -bound), bound)
          o[i] = code(clamped * perUnit)
        }
        o[input.count] = code(w * top)
      }
    }
    return out
  }

  /// Decodes a sum (mod 2^b) of encodings: the summed weighted update (length sum.count − 1) and
  /// the summed weight. Each element is read as a signed b-bit integer, so negative sums decode
  /// as negative; a sum of more than `maxSummands` encodings may have wrapped.
  public func decodeSum(_ sum: [UInt32]) -> (weightedSum: [Float], totalWeight: Double) {
    precondition(!sum.isEmpty, "a sum of encodings has at least the weight coordinate")
    let top = Double(largestCode)
    let perCode = Double(clip) / top
    let mask = UInt64(ringMask)
    let half = Int64(1) << (ringBits - 1)
    let modulus = Int64(1) << ringBits
    func signed(_ x: UInt32) -> Int64 {
      let v = Int64(UInt64(x) & mask)
      return v >= half ? v - modulus : v
    }
    var weighted = [Float](repeating: 0, count: sum.count - 1)
    sum.withUnsafeBufferPointer { s in
      weighted.withUnsafeMutableBufferPointer { o in
        for i in 0..<o.count { o[i] = Float(Double(signed(s[i])) * perCode) }
      }
    }
    return (weighted, Double(signed(sum[sum.count - 1])) / top)
  }
}
