public import CohortCore
import Foundation

/// Rényi differential privacy (RDP) of the Poisson-subsampled Gaussian mechanism, composed over
/// rounds and converted to (ε, δ).
///
/// Each round samples every device independently with probability `q` and adds Gaussian noise of
/// standard deviation `z · S` to the sum of updates clipped to L2 norm `S`. The RDP of one round at
/// order α is computed as in Mironov, Talwar and Zhang, "Rényi Differential Privacy of the Sampled
/// Gaussian Mechanism" (2019, arXiv:1908.10530), Section 3.3, following Google's dp-accounting
/// `rdp_privacy_accountant` (`_compute_rdp_poisson_subsampled_gaussian`) so the numbers agree with
/// it. RDP composes additively, so T rounds cost T times one round (Mironov 2017, Proposition 1).
public struct PrivacyAccountant: Sendable {
  /// The orders α at which RDP is tracked; ε is the best conversion over all of them. The same
  /// grid as dp-accounting: small orders suit large ε, large orders suit tiny ε.
  public static let orders: [Double] = {
    // 1 + x/10 rather than an accumulated step, so each order is the same Double as dp-accounting's.
    let fractional: [Double] = (1...99).map { (x: Int) -> Double in 1 + Double(x) / 10 }
    let integer: [Double] = (11...63).map { (x: Int) -> Double in Double(x) }
    let large: [Double] = [128, 256, 512, 1024]
    return fractional + integer + large
  }()

  /// The RDP of one step of the Poisson-subsampled Gaussian mechanism at `order` (α > 1).
  ///
  /// q = 0 releases nothing (0); z = 0 adds no noise (∞); q = 1 is the plain Gaussian mechanism,
  /// α / (2z²). Otherwise RDP(α) = log(A_α) / (α − 1), with A_α computed in log space.
  public static func rdp(samplingRate q: Double, noiseMultiplier z: Double, order: Double) -> Double {
    precondition((0...1).contains(q) && z >= 0 && order > 1, "rdp needs q in [0, 1], z ≥ 0, α > 1")
    if q == 0 { return 0 }
    if order.isInfinite || z == 0 { return .infinity }
    if q == 1 { return order / (2 * z * z) }
    let logA =
      order.rounded() == order
      ? logAInteger(q: q, sigma: z, alpha: Int(order)) : logAFraction(q: q, sigma: z, alpha: order)
    return logA / (order - 1)
  }

  /// The smallest ε over the orders after `steps` rounds at failure probability `delta`, and the
  /// order that attains it.
  ///
  /// The conversion is Proposition 12 of Canonne, Kamath and Steinke, "The Discrete Gaussian for
  /// Differential Privacy" (2020, arXiv:2004.00010), also Asoodeh et al. (arXiv:2001.05990, eq. 20):
  /// ε = RDP(α)·T + log1p(−1/α) − (log δ + log α)/(α − 1), which is tighter than the classic
  /// RDP(α)·T − log δ/(α − 1). As in dp-accounting, orders at or below 1.01 are numerically unstable
  /// and skipped, and when δ² > 1 − exp(−RDP) the KL-divergence bound already gives ε = 0.
  public static func epsilon(samplingRate: Double, noiseMultiplier: Double, steps: Int, delta: Double)
    throws(CohortError) -> (epsilon: Double, order: Double)
  {
    try validate(samplingRate: samplingRate, steps: steps, delta: delta)
    try validate(noiseMultiplier: noiseMultiplier)
    return unchecked(samplingRate: samplingRate, noiseMultiplier: noiseMultiplier, steps: steps, delta: delta)
  }

  /// The smallest noise multiplier z whose ε after `steps` rounds is at most `targetEpsilon`,
  /// found by bisection (ε falls as z grows), to a relative precision of 1e-6.
  public static func noiseMultiplier(samplingRate: Double, steps: Int, delta: Double, targetEpsilon: Double)
    throws(CohortError) -> Double
  {
    try validate(samplingRate: samplingRate, steps: steps, delta: delta)
    guard targetEpsilon > 0 && targetEpsilon.isFinite else {
      throw CohortError(
        .invalidConfiguration, "target epsilon \(targetEpsilon) is outside the accepted range (0, ∞)",
        fix: "give a positive, finite target ε (e.g. 1 to 10)")
    }
    func epsilon(_ z: Double) -> Double {
      unchecked(samplingRate: samplingRate, noiseMultiplier: z, steps: steps, delta: delta).epsilon
    }
    // Bracket: ε(0) = ∞ > target; double the upper end until it meets the target.
    var low = 0.0
    var high = 1.0
    while epsilon(high) > targetEpsilon {
      low = high
      high *= 2
      guard high <= 1e6 else {
        throw CohortError(
          .invalidConfiguration,
          "target epsilon \(targetEpsilon) needs a noise multiplier above 1e6 at sampling rate "
            + "\(samplingRate) over \(steps) rounds with delta \(delta)",
          fix: "raise the target ε or delta, or lower the sampling rate or number of rounds")
      }
    }
    while high - low > 1e-6 * high {
      let middle = (low + high) / 2
      if epsilon(middle) > targetEpsilon { low = middle } else { high = middle }
    }
    // The upper end always satisfies the target, so the guarantee is never overstated.
    return high
  }

  // MARK: - Validation

  static func validate(samplingRate q: Double, steps: Int, delta: Double) throws(CohortError) {
    guard q > 0 && q <= 1 else {
      throw CohortError(
        .invalidConfiguration, "sampling rate \(q) is outside the accepted range (0, 1]",
        fix: "give the probability that a device takes part in a round, e.g. cohort size / population")
    }
    guard steps >= 1 else {
      throw CohortError(
        .invalidConfiguration, "rounds \(steps) is outside the accepted range [1, ∞)",
        fix: "give the number of rounds the mechanism runs, at least 1")
    }
    guard delta > 0 && delta < 1 else {
      throw CohortError(
        .invalidConfiguration, "delta \(delta) is outside the accepted range (0, 1)",
        fix: "give a small failure probability, below 1 / number of devices (e.g. 1e-5)")
    }
  }

  static func validate(noiseMultiplier z: Double) throws(CohortError) {
    guard z >= 0 && z.isFinite else {
      throw CohortError(
        .invalidConfiguration, "noise multiplier \(z) is outside the accepted range [0, ∞)",
        fix: "give the ratio of the noise's standard deviation to the clip norm, e.g. 1.0")
    }
  }

  // MARK: - Computation

  static func unchecked(samplingRate q: Double, noiseMultiplier z: Double, steps: Int, delta: Double) -> (
    epsilon: Double, order: Double
  ) {
    let logDelta = log(delta)
    var best = (epsilon: Double.infinity, order: orders[0])
    for alpha in orders {
      let r = rdp(samplingRate: q, noiseMultiplier: z, order: alpha) * Double(steps)
      let epsilon: Double
      if r < 0 {
        epsilon = 0  // Only from rounding in extreme cases; dp-accounting does the same.
      } else if delta * delta + expm1(-r) > 0 {
        epsilon = 0  // δ ≥ sqrt(1 − exp(−KL)): the KL bound needs no ε at all.
      } else if alpha > 1.01 {
        epsilon = r + log1p(-1 / alpha) - (logDelta + log(alpha)) / (alpha - 1)
      } else {
        epsilon = .infinity
      }
      // Strictly smaller, so ties keep the first order, as numpy's argmin does.
      if epsilon < best.epsilon { best = (epsilon, alpha) }
    }
    return (max(0, best.epsilon), best.order)
  }

  /// log(e^x + e^y) without overflow.
  static func logAdd(_ x: Double, _ y: Double) -> Double {
    let (a, b) = (min(x, y), max(x, y))
    if a == -.infinity { return b }
    return log1p(exp(a - b)) + b
  }

  /// log of the binomial coefficient (n choose k) for real n, through log|Γ|: for fractional α the
  /// terms past i > α have Γ of negative arguments, and (as in dp-accounting) only magnitudes count,
  /// the signs being accounted for by the two-sided split of the integral.
  static func logBinomial(_ n: Double, _ k: Double) -> Double {
    logGamma(n + 1) - logGamma(k + 1) - logGamma(n - k + 1)
  }

  /// log|Γ(x)|. glibc's `lgamma` also writes the global `signgam`; `lgamma_r` keeps the sign local,
  /// so concurrent callers do not race.
  static func logGamma(_ x: Double) -> Double {
    var sign: Int32 = 0
    return lgamma_r(x, &sign)
  }

  /// log(A_α) for integer α and 0 < q < 1 (Mironov et al. 2019, Section 3.3, eq. for integer α):
  /// A_α = Σ_{i=0}^{α} C(α, i) (1 − q)^{α−i} q^i exp((i² − i) / (2σ²)).
  static func logAInteger(q: Double, sigma: Double, alpha: Int) -> Double {
    var logA = -Double.infinity
    let logQ = log(q)
    let log1mq = log1p(-q)
    let a = Double(alpha)
    for i in 0...alpha {
      let x = Double(i)
      let term = logBinomial(a, x) + x * logQ + (a - x) * log1mq + (x * x - x) / (2 * sigma * sigma)
      logA = logAdd(logA, term)
    }
    return logA
  }

  /// log(A_α) for fractional α and 0 < q < 1 (Mironov et al. 2019, Section 3.3): the integral for
  /// A_α is split at z₀ = σ² log(1/q − 1) + ½, where the two mixture densities cross, and each side
  /// expands into a convergent binomial series whose Gaussian tails are erfc terms. Summation stops
  /// when both series decrease and their terms fall below e⁻³⁰ of the total; after 1,000 terms
  /// without that, the order is given up (∞) and simply not chosen, as in dp-accounting.
  static func logAFraction(q: Double, sigma: Double, alpha: Double) -> Double {
    var logA0 = -Double.infinity
    var logA1 = -Double.infinity
    let z0 = sigma * sigma * log(1 / q - 1) + 0.5
    let logQ = log(q)
    let log1mq = log1p(-q)
    let logHalf = log(0.5)
    let scale = 2.0.squareRoot() * sigma
    var lastS0 = -Double.infinity
    var lastS1 = -Double.infinity
    for step in 0..<1000 {
      let i = Double(step)
      let j = alpha - i
      let logCoefficient = logBinomial(alpha, i)
      let logT0 = logCoefficient + i * logQ + j * log1mq
      let logT1 = logCoefficient + j * logQ + i * log1mq
      let logE0 = logHalf + logErfc((i - z0) / scale)
      let logE1 = logHalf + logErfc((z0 - j) / scale)
      let logS0 = logT0 + (i * i - i) / (2 * sigma * sigma) + logE0
      let logS1 = logT1 + (j * j - j) / (2 * sigma * sigma) + logE1
      logA0 = logAdd(logA0, logS0)
      logA1 = logAdd(logA1, logS1)
      let total = logAdd(logA0, logA1)
      if logS0 < lastS0 && logS1 < lastS1 && max(logS0, logS1) < total - 30 { return total }
      lastS0 = logS0
      lastS1 = logS1
    }
    return .infinity
  }

  /// log(erfc(x)), accurate where erfc underflows: past that point the asymptotic (Laurent) series
  /// erfc(x) ~ exp(−x² − ½x⁻² + ⅝x⁻⁴ − 37/24 x⁻⁶ + 353/64 x⁻⁸) / (x √π), as dp-accounting's fallback.
  static func logErfc(_ x: Double) -> Double {
    let r = erfc(x)
    if r > 1e-300 { return log(r) }
    let x2 = x * x
    return -log(Double.pi) / 2 - log(x) - x2 - 0.5 / x2 + 0.625 / (x2 * x2) - 37.0 / 24.0 / (x2 * x2 * x2)
      + 353.0 / 64.0 / (x2 * x2 * x2 * x2)
  }
}
