public import CohortCore
import Foundation

/// The discrete Gaussian N_Z(0, σ²) on the integers: P[X = x] ∝ exp(−x²/(2σ²)).
///
/// Sampled exactly as in Canonne, Kamath and Steinke, "The Discrete Gaussian for Differential
/// Privacy" (NeurIPS 2020, arXiv:2004.00010): rejection from a discrete Laplace of integer scale
/// t = ⌊σ⌋ + 1 (Algorithm 3), the discrete Laplace itself by rejection (Algorithm 2), and every
/// Bernoulli(exp(−γ)) by the exact series method (Algorithm 1), with γ a ratio of integers.
///
/// Exactness: all arithmetic is on integers (`UInt128`); the only approximation is that σ² is
/// first rounded to a rational p / 2^k with p ≈ 2^40, a relative change of at most 2^−41. The
/// sampler then draws from N_Z(0, p / 2^k) exactly (given a perfect uniform source), which
/// `variance` reports. A candidate whose rejection exponent overflows 127 bits is rejected
/// outright: its acceptance probability is below exp(−2^26). σ must lie in [2^−10, 2^24].
public struct DiscreteGaussian: Sendable, Hashable {
  /// The σ asked for.
  public let sigma: Double
  /// σ² as used by the sampler: `varianceNumerator / 2^varianceExponent`.
  public let varianceNumerator: UInt64
  /// k in σ² = p / 2^k.
  public let varianceExponent: Int
  /// The scale of the discrete Laplace proposal, ⌊σ⌋ + 1 as in CKS Algorithm 3 (any positive
  /// integer keeps the sampler exact; this one keeps the expected number of proposals small).
  let laplaceScale: Int64

  /// The smallest and largest σ accepted.
  public static let sigmaRange: ClosedRange<Double> = 0x1p-10...0x1p24

  public init(sigma: Double) {
    precondition(
      Self.sigmaRange.contains(sigma), "the discrete Gaussian needs σ in [2^-10, 2^24], not \(sigma)")
    self.sigma = sigma
    let variance = sigma * sigma
    // Keep about 41 significant bits of σ² in p, and k in 0...62.
    let k = Swift.min(62, Swift.max(0, 40 - Int(variance.exponent)))
    varianceExponent = k
    varianceNumerator = Swift.max(
      1, UInt64((variance * Double(sign: .plus, exponent: k, significand: 1)).rounded()))
    laplaceScale = Int64(sigma.rounded(.down)) + 1
  }

  /// σ² as used by the sampler (the rational p / 2^k, rounded to a Double).
  public var variance: Double {
    Double(varianceNumerator) * Double(sign: .plus, exponent: -varianceExponent, significand: 1)
  }

  // MARK: Sampling

  /// One draw from N_Z(0, σ²) (CKS Algorithm 3).
  public func sample(_ random: inout RandomStream) -> Int64 {
    let p = UInt128(varianceNumerator)
    let q = UInt128(1) << varianceExponent
    let t = UInt128(laplaceScale)
    // Accept Y with probability exp(−(|Y| − σ²/t)² / (2σ²)). With σ² = p/q this exponent is
    // (|Y|·q·t − p)² / (2·p·q·t²), a ratio of integers; the denominator is at most 2^102.
    let denominator = 2 * p * q * t * t
    while true {
      let y = Self.discreteLaplace(scale: laplaceScale, &random)
      let (scaled, overflow) = UInt128(y.magnitude).multipliedReportingOverflow(by: q * t)
      if overflow { continue }
      let difference = scaled >= p ? scaled - p : p - scaled
      let (numerator, overflow2) = difference.multipliedReportingOverflow(by: difference)
      if overflow2 { continue }
      if Self.bernoulliExp(numerator, over: denominator, &random) { return y }
    }
  }

  /// The discrete Laplace distribution, P[X = x] ∝ exp(−|x|/t), for an integer scale t ≥ 1
  /// (CKS Algorithm 2 with s = 1).
  static func discreteLaplace(scale t: Int64, _ random: inout RandomStream) -> Int64 {
    while true {
      let u = Int64(random.int(below: Int(t)))
      guard bernoulliExp(UInt128(u), over: UInt128(t), &random) else { continue }
      var v: Int64 = 0
      while bernoulliExpFraction(1, over: 1, &random) { v += 1 }
      let x = u + t * v
      let negative = random.next() & 1 == 1
      if negative && x == 0 { continue }
      return negative ? -x : x
    }
  }

  /// Bernoulli(exp(−n/d)) for integers n ≥ 0, d > 0 (CKS Algorithm 1): ⌊n/d⌋ independent
  /// Bernoulli(exp(−1)) trials must all succeed, then one Bernoulli(exp(−(n mod d)/d)).
  static func bernoulliExp(_ n: UInt128, over d: UInt128, _ random: inout RandomStream) -> Bool {
    var whole = n / d
    while whole > 0 {
      if !bernoulliExpFraction(1, over: 1, &random) { return false }
      whole -= 1
    }
    return bernoulliExpFraction(n % d, over: d, &random)
  }

  /// Bernoulli(exp(−γ)) for γ = n/d ∈ [0, 1]: draw A_k ~ Bernoulli(γ/k) for k = 1, 2, … until
  /// one fails; the answer is whether that k is odd. Bernoulli(γ/k) is Bernoulli(n/d) and
  /// Bernoulli(1/k) together, so no product can overflow.
  static func bernoulliExpFraction(_ n: UInt128, over d: UInt128, _ random: inout RandomStream) -> Bool {
    var k = 1
    while bernoulli(n, over: d, &random) && (k == 1 || random.int(below: k) == 0) { k += 1 }
    return k % 2 == 1
  }

  /// Bernoulli(n/d) for 0 ≤ n ≤ d, d > 0, from a uniform integer below d.
  static func bernoulli(_ n: UInt128, over d: UInt128, _ random: inout RandomStream) -> Bool {
    if n >= d { return true }
    if n == 0 { return false }
    if d <= UInt128(Int.max) { return UInt128(random.int(below: Int(d))) < n }
    let bits = 128 - d.leadingZeroBitCount
    let mask: UInt128 = bits == 128 ? .max : (1 << bits) - 1
    while true {
      let v = ((UInt128(random.next()) << 64) | UInt128(random.next())) & mask
      if v < d { return v < n }
    }
  }

  // MARK: The probability mass function

  /// Σ_y exp(−y²/(2σ²)) over the integers, for the σ² the sampler uses: a truncated sum over
  /// |y| ≤ ⌈14σ⌉ + 1 (the rest is below e^−98 of it) when σ ≤ 1024, else √(2π)·σ, which
  /// Poisson summation shows to be exact to a relative 2·e^(−2π²σ²). Costs O(σ).
  public var normalizingConstant: Double {
    let s2 = variance
    let s = s2.squareRoot()
    if s > 1024 { return (2 * Double.pi * s2).squareRoot() }
    let m = Int((14 * s).rounded(.up)) + 1
    var total = 1.0
    for y in stride(from: m, through: 1, by: -1) { total += 2 * exp(-Double(y * y) / (2 * s2)) }
    return total
  }

  /// P[X = x] = exp(−x²/(2σ²)) / Σ_y exp(−y²/(2σ²)). Computes the normalizing constant each call.
  public func probability(_ x: Int64) -> Double {
    let xd = Double(x)
    return exp(-xd * xd / (2 * variance)) / normalizingConstant
  }
}
