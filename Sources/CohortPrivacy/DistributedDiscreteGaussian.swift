public import CohortCore
import Foundation

/// The distributed discrete Gaussian mechanism: Kairouz, Liu and Steinke, "The Distributed
/// Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation" (ICML 2021,
/// arXiv:2102.06387), Algorithm 1 on the device and Algorithm 2 on the server.
///
/// Each device clips its update to L2 norm c, scales it by 1/γ (γ the granularity of the integer
/// lattice), flattens it with a random rotation shared by all devices, rounds it to integers with
/// conditional randomized rounding, adds N_Z(0, σᵢ²/γ²) noise to every coordinate and wraps the
/// result into Z/2^b. Secure aggregation sums the encodings mod 2^b; the server reads the sum as
/// signed integers, multiplies by γ and undoes the rotation. The sum of n devices' noise has
/// variance n·σᵢ² per coordinate; `localSigma(totalSigma:devices:)` chooses σᵢ = σ/√n so that
/// the sum carries the target σ².
///
/// Simplifications against the paper: the flattening is a randomized Hadamard transform
/// (H·D/√d', zero-padded to a power of two d'), computed here in Double rather than with
/// `CohortCompression.RandomizedHadamard`, whose Float arithmetic would lose low bits of a
/// 32-bit ring sum; after `maxRoundingAttempts` rejected roundings the vector is rounded toward
/// zero, which keeps the norm bound (so the privacy analysis) at the cost of a small bias; and
/// the ring width comes from a union bound over coordinates (`ringBits`) rather than the paper's
/// k-standard-deviation heuristic.
public struct DistributedDiscreteGaussian: Sendable, Hashable {
  /// d: the length of an update.
  public let dimension: Int
  /// d': the length of an encoding, the smallest power of two ≥ `dimension`.
  public let paddedDimension: Int
  /// c: updates are clipped to this L2 norm.
  public let clipNorm: Double
  /// γ: the lattice step, in update units.
  public let granularity: Double
  /// σᵢ: the standard deviation of each device's noise per coordinate, in update units
  /// (0 adds none).
  public let localSigma: Double
  /// β ∈ [0, 1): the slack of conditional randomized rounding (0 uses the worst-case bound).
  public let beta: Double
  /// b: encodings live in Z/2^b, stored as `UInt32`.
  public let ringBits: Int
  /// How many randomized roundings to try before rounding toward zero.
  public let maxRoundingAttempts: Int
  /// The diagonal of D, ±1, from the shared rotation seed.
  private let signs: [Double]
  /// N_Z(0, σᵢ²/γ²), or nil when σᵢ = 0.
  private let noise: DiscreteGaussian?

  /// `localSigma / granularity` must lie in `DiscreteGaussian.sigmaRange` unless `localSigma`
  /// is 0. Every device and the server must use the same `rotationSeed` (e.g. one derived from
  /// the run seed and the round).
  public init(
    dimension: Int, clipNorm: Double, granularity: Double, localSigma: Double, beta: Double,
    ringBits: Int, rotationSeed: UInt64, maxRoundingAttempts: Int = 100
  ) {
    precondition(dimension >= 1, "dimension must be positive, not \(dimension)")
    precondition(clipNorm.isFinite && clipNorm > 0, "clipNorm must be positive and finite, not \(clipNorm)")
    precondition(
      granularity.isFinite && granularity > 0, "granularity must be positive and finite, not \(granularity)")
    precondition(
      localSigma.isFinite && localSigma >= 0, "localSigma must be finite and ≥ 0, not \(localSigma)")
    precondition(beta >= 0 && beta < 1, "beta must be in [0, 1), not \(beta)")
    precondition((2...32).contains(ringBits), "ringBits must be in 2...32, not \(ringBits)")
    precondition(maxRoundingAttempts >= 1, "maxRoundingAttempts must be positive")
    self.dimension = dimension
    var n = 1
    while n < dimension { n <<= 1 }
    paddedDimension = n
    self.clipNorm = clipNorm
    self.granularity = granularity
    self.localSigma = localSigma
    self.beta = beta
    self.ringBits = ringBits
    self.maxRoundingAttempts = maxRoundingAttempts
    var stream = RandomStream(seed: rotationSeed, purpose: "distributed-discrete-gaussian-rotation")
    signs = WalshHadamard.randomSigns(count: n, stream: &stream)
    noise = localSigma > 0 ? DiscreteGaussian(sigma: localSigma / granularity) : nil
  }

  // MARK: Parameters

  /// σᵢ = σ/√n: each of n devices adds this much noise so that their sum has variance σ².
  public static func localSigma(totalSigma: Double, devices: Int) -> Double {
    precondition(devices >= 1 && totalSigma >= 0, "need at least one device and σ ≥ 0")
    return totalSigma / Double(devices).squareRoot()
  }

  /// Δ₂, the bound on the L2 norm of a rounded vector in lattice units (Theorem 1 and the
  /// conditional rounding step of Algorithm 1):
  /// Δ₂² = min{ (c/γ + √d)², c²/γ² + d/4 + √(2 log(1/β))·(c/γ + √d/2) }, the second term only
  /// when β > 0. Randomized rounding without conditioning exceeds it with probability ≤ β.
  public static func roundedNormBound(
    clipNorm c: Double, granularity γ: Double, beta β: Double, dimension d: Int
  )
    -> Double
  {
    let scaled = c / γ
    let root = Double(d).squareRoot()
    let worst = (scaled + root) * (scaled + root)
    guard β > 0 else { return worst.squareRoot() }
    let tight = scaled * scaled + Double(d) / 4 + (2 * log(1 / β)).squareRoot() * (scaled + root / 2)
    return Swift.min(worst, tight).squareRoot()
  }

  /// Δ₂ for this encoder's padded dimension, in lattice units.
  public var roundedNormBound: Double {
    Self.roundedNormBound(
      clipNorm: clipNorm, granularity: granularity, beta: beta, dimension: paddedDimension)
  }

  /// The L2 sensitivity of the noisy sum in update units: γ·Δ₂.
  public var l2Sensitivity: Double { granularity * roundedNormBound }

  /// τ = 10·Σ_{k=1}^{n−1} exp(−2π²·(σᵢ/γ)²·k/(k+1)) (Theorem 1): how far a sum of n discrete
  /// Gaussians is from one discrete Gaussian of n times the variance.
  public func tau(devices n: Int) -> Double {
    let s2 = (localSigma / granularity) * (localSigma / granularity)
    var total = 0.0
    for k in stride(from: 1, to: n, by: 1) {
      total += exp(-2 * Double.pi * Double.pi * s2 * Double(k) / Double(k + 1))
    }
    return 10 * total
  }

  /// The Rényi DP at order α of one noisy sum of n devices, without subsampling (Theorem 1 with
  /// Proposition 14, Eq. 17): with ℓ = γΔ₂/(√n·σᵢ),
  /// min{ α·ℓ²/2 + τ·d, (α/2)·(ℓ + τ·√d)² }, d the padded dimension.
  public func rdp(order α: Double, devices n: Int) -> Double {
    precondition(α >= 1 && n >= 1, "rdp needs α ≥ 1 and n ≥ 1")
    guard localSigma > 0 else { return .infinity }
    let scale = l2Sensitivity / (Double(n).squareRoot() * localSigma)
    let t = tau(devices: n)
    let d = Double(paddedDimension)
    return Swift.min(
      α * scale * scale / 2 + t * d, α / 2 * (scale + d.squareRoot() * t) * (scale + d.squareRoot() * t))
  }

  /// The smallest ring width b such that, with probability ≥ 1 − 2·`failureProbability`, no
  /// coordinate of the sum of n encodings leaves [−2^(b−1), 2^(b−1)), so the server decodes it
  /// without wrapping. With d' the padded dimension and L = √(2 log(2d'/failureProbability)), a
  /// coordinate of the sum is bounded by
  /// n·(c/γ)·L/√d'  (the rotated sum of n clipped vectors: Hoeffding over the random signs)
  /// + n           (each device's rounding moves a coordinate by less than 1)
  /// + (σ/γ)·L      (the total noise, sub-Gaussian with variance proxy σ²/γ²: CKS 2020).
  /// The first term assumes the updates do not depend on the rotation's signs. A result above 32
  /// means the parameters do not fit a `UInt32` ring: raise γ.
  public static func ringBits(
    devices n: Int, clipNorm c: Double, granularity γ: Double, totalSigma σ: Double, dimension: Int,
    failureProbability: Double = 1e-9
  ) -> Int {
    precondition(n >= 1 && dimension >= 1, "need at least one device and one coordinate")
    precondition(failureProbability > 0 && failureProbability < 1, "failureProbability must be in (0, 1)")
    var padded = 1
    while padded < dimension { padded <<= 1 }
    let d = Double(padded)
    let l = (2 * log(2 * d / failureProbability)).squareRoot()
    let bound = Double(n) * (c / γ) * l / d.squareRoot() + Double(n) + (σ / γ) * l
    var b = 2
    while Double(sign: .plus, exponent: b - 1, significand: 1) <= bound { b += 1 }
    return b
  }

  // MARK: Device side (Algorithm 1)

  /// Clip to norm c, scale by 1/γ and rotate: x'' = H·D·(min(1, c/‖x‖)·x/γ)/√d'. Non-finite
  /// coordinates count as 0. The result has `paddedDimension` values.
  public func flatten(_ x: [Float]) -> [Double] {
    precondition(x.count == dimension, "flatten expects \(dimension) values, got \(x.count)")
    var y = [Double](repeating: 0, count: paddedDimension)
    var squared = 0.0
    for i in 0..<x.count where x[i].isFinite {
      y[i] = Double(x[i])
      squared += y[i] * y[i]
    }
    let norm = squared.squareRoot()
    let factor = (norm > clipNorm ? clipNorm / norm : 1) / granularity
    for i in 0..<y.count { y[i] *= factor * signs[i] }
    y.withUnsafeMutableBufferPointer { WalshHadamard.transform($0) }
    let scale = 1 / Double(paddedDimension).squareRoot()
    for i in 0..<y.count { y[i] *= scale }
    return y
  }

  /// Conditional randomized rounding (Algorithm 1, step 3): round every coordinate to
  /// ⌊x⌋ + Bernoulli(x − ⌊x⌋), independently, and start again while the squared L2 norm exceeds
  /// `normBound²`. After `maxAttempts` rejections every coordinate is rounded toward zero instead,
  /// which cannot increase the norm. Each attempt takes one uniform draw per coordinate; the
  /// Bernoulli compares a 53-bit uniform with the fractional part, so it is unbiased to 2^−53.
  public static func conditionalRandomizedRounding(
    _ x: [Double], normBound: Double, maxAttempts: Int, random: inout RandomStream
  ) -> [Int64] {
    var out = [Int64](repeating: 0, count: x.count)
    let limit = normBound * normBound
    for _ in 0..<maxAttempts {
      var squared = 0.0
      for i in 0..<x.count {
        let floor = x[i].rounded(.down)
        let v = random.uniform() < x[i] - floor ? floor + 1 : floor
        out[i] = Int64(v)
        squared += v * v
      }
      if squared <= limit { return out }
    }
    for i in 0..<x.count { out[i] = Int64(x[i].rounded(.towardZero)) }
    return out
  }

  /// The device's encoding of `update`: flatten, conditionally round to norm ≤ Δ₂, add
  /// N_Z(0, σᵢ²/γ²) to each coordinate and wrap into Z/2^b (Algorithm 1). `random` must be the
  /// device's private stream; the result has `paddedDimension` values, each below 2^b.
  public func encode(_ update: [Float], random: inout RandomStream) -> [UInt32] {
    let rounded = Self.conditionalRandomizedRounding(
      flatten(update), normBound: roundedNormBound, maxAttempts: maxRoundingAttempts, random: &random)
    let mask: UInt32 = ringBits == 32 ? .max : (1 << ringBits) - 1
    return rounded.map { v in
      let noisy = v + (noise?.sample(&random) ?? 0)
      return UInt32(truncatingIfNeeded: noisy) & mask
    }
  }

  // MARK: Server side (Algorithm 2)

  /// Decodes a sum mod 2^b of encodings: each value read as a signed b-bit integer, multiplied by
  /// γ and rotated back, D·H·y/√d' truncated to `dimension`. This estimates the sum of the clipped
  /// updates, with noise of variance n·σᵢ² per coordinate plus the rounding error.
  public func decodeSum(_ sum: [UInt32]) -> [Double] {
    precondition(
      sum.count == paddedDimension, "decodeSum expects \(paddedDimension) values, got \(sum.count)")
    let mask = UInt64(ringBits == 32 ? .max : (UInt32(1) << ringBits) - 1)
    let half = Int64(1) << (ringBits - 1)
    let modulus = Int64(1) << ringBits
    var y = sum.map { x -> Double in
      let v = Int64(UInt64(x) & mask)
      return Double(v >= half ? v - modulus : v)
    }
    y.withUnsafeMutableBufferPointer { WalshHadamard.transform($0) }
    let scale = granularity / Double(paddedDimension).squareRoot()
    for i in 0..<y.count { y[i] *= signs[i] * scale }
    y.removeLast(paddedDimension - dimension)
    return y
  }
}
