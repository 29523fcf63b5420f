public import CohortCore

/// Uniform quantization of a vector to b ∈ 1...16 bits per coordinate.
///
/// The interval [min, max] is cut into 2^b − 1 equal steps; each value is sent as the index
/// (level) of one end of its step. With stochastic rounding the upper end is chosen with
/// probability equal to the value's position within the step, so the decoded value is an unbiased
/// estimate of the input and its variance is at most step²/4 per coordinate (Suresh et al. 2017,
/// §3; Konečný et al. 2016, "Federated Learning: Strategies for Improving Communication
/// Efficiency", §3). Unbiasedness is what lets the server average many quantized updates without a
/// systematic drift. Deterministic rounding (to the nearest level) has half the worst-case error
/// but is biased.
public struct StochasticQuantizer: Sendable, Hashable {
  /// Where [min, max] comes from.
  ///
  /// Named `Bounds` rather than `Range` so it does not shadow `Swift.Range` in code that uses both.
  public enum Bounds: Sendable, Hashable {
    /// Each vector's own minimum and maximum, sent with it (8 bytes of header).
    case perVector
    /// A range known to both sides (e.g. after clipping), so nothing but the levels travels.
    /// Values outside it are clamped to it, which biases them: clip first.
    case fixed(min: Float, max: Float)
  }

  public enum Rounding: Sendable, Hashable {
    /// Unbiased: round up with probability equal to the fractional position within the step.
    case stochastic
    /// To the nearest level; needs no randomness and is the same on every call.
    case deterministic
  }

  public let bits: Int
  public let bounds: Bounds
  public let rounding: Rounding

  /// The accepted bit widths.
  public static let bitWidths = 1...16

  public init(bits: Int, bounds: Bounds = .perVector, rounding: Rounding = .stochastic) throws(CohortError) {
    guard Self.bitWidths.contains(bits) else {
      throw CohortError(
        .invalidConfiguration,
        "quantization bit width \(bits) is out of range: the accepted range is 1...16",
        fix: "choose a bit width from 1 to 16")
    }
    if case .fixed(let lo, let hi) = bounds {
      guard lo.isFinite, hi.isFinite, lo < hi else {
        throw CohortError(
          .invalidConfiguration,
          "quantization range [\(lo), \(hi)] is invalid: it needs finite bounds with min < max",
          fix: "give a fixed range with min below max, or use a per-vector range")
      }
    }
    self.bits = bits
    self.bounds = bounds
    self.rounding = rounding
  }

  /// The number of steps between the lowest and highest level: 2^bits − 1.
  public var steps: Int { (1 << bits) - 1 }

  /// Quantizes `x`. `rng` supplies the rounding draws (one per coordinate) and is left untouched
  /// by deterministic rounding. A value whose level is not a number (a NaN, or a per-vector range
  /// too wide for Float) takes level 0 rather than trapping: the update is garbage either way.
  public func encode(_ x: [Float], rng: inout RandomStream) -> QuantizedVector {
    let (lo, hi) = range(of: x)
    var levels = [UInt16](repeating: 0, count: x.count)
    let top = Float(steps)
    // When every value is equal the range is empty: all levels are 0 and decode to `lo`.
    let inverseStep: Float = hi > lo ? top / (hi - lo) : 0
    x.withUnsafeBufferPointer { input in
      levels.withUnsafeMutableBufferPointer { out in
        switch rounding {
        case .deterministic:
          // Branch-free and vectorisable: clamp, scale, round half up.
          for i in 0..<input.count {
            let scaled = (input[i] - lo) * inverseStep
            let t = Swift.min(Swift.max(scaled.isNaN ? 0 : scaled, 0), top)
            out[i] = UInt16((t + 0.5).rounded(.down))
          }
        case .stochastic:
          for i in 0..<input.count {
            let scaled = (input[i] - lo) * inverseStep
            let t = Swift.min(Swift.max(scaled.isNaN ? 0 : scaled, 0), top)
            let floor = t.rounded(.down)
            // Up with probability t − floor: the expected level is exactly t.
            let up: Float = rng.uniformFloat() < t - floor ? 1 : 0
            out[i] = UInt16(Swift.min(floor + up, top))
          }
        }
      }
    }
    return QuantizedVector(
      levels: levels, bits: bits, min: lo, max: hi, rangeTravels: bounds == .perVector)
  }

  /// The values the levels stand for: min + level · (max − min) / (2^bits − 1).
  public func decode(_ q: QuantizedVector) -> [Float] {
    q.decoded()
  }

  private func range(of x: [Float]) -> (Float, Float) {
    switch bounds {
    case .fixed(let lo, let hi): return (lo, hi)
    case .perVector:
      guard !x.isEmpty else { return (0, 0) }
      return x.withUnsafeBufferPointer { v in
        var lo = v[0]
        var hi = v[0]
        for i in 0..<v.count {
          lo = Swift.min(lo, v[i])
          hi = Swift.max(hi, v[i])
        }
        return (lo, hi)
      }
    }
  }
}

/// A quantized vector: its levels and the range they index into.
public struct QuantizedVector: Sendable, Hashable {
  /// One level per coordinate, each below 2^bits.
  public var levels: [UInt16]
  public var bits: Int
  public var min: Float
  public var max: Float
  /// Whether min and max are sent with the levels (a per-vector range) or known to the receiver
  /// (a fixed range).
  public var rangeTravels: Bool

  public init(levels: [UInt16], bits: Int, min: Float, max: Float, rangeTravels: Bool) {
    self.levels = levels
    self.bits = bits
    self.min = min
    self.max = max
    self.rangeTravels = rangeTravels
  }

  /// The bytes of the header: two Float32 (min, max) when the range travels, else none. The
  /// dimension and bit width come from the plan, which both sides know.
  public var headerBytes: Int { rangeTravels ? 8 : 0 }

  /// The bytes this update takes when sent: the packed levels plus the header.
  public var wireBytes: Int { BitPacking.packedSize(count: levels.count, bits: bits) + headerBytes }

  /// The levels packed at `bits` bits each, as they are sent.
  public var packedLevels: [UInt8] { BitPacking.pack(levels, bits: bits) }

  /// The values the levels stand for.
  public func decoded() -> [Float] {
    var out = [Float](repeating: min, count: levels.count)
    let step = (max - min) / Float((1 << bits) - 1)
    let lo = min
    levels.withUnsafeBufferPointer { l in
      out.withUnsafeMutableBufferPointer { o in
        for i in 0..<l.count { o[i] = lo + Float(l[i]) * step }
      }
    }
    return out
  }
}
