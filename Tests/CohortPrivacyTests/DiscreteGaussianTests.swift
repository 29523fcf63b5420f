import CohortCore
import CohortPrivacy
import Foundation
import Testing

/// The upper quantile of χ² with `df` degrees of freedom by the Wilson–Hilferty approximation,
/// df·(1 − 2/(9df) + z·√(2/(9df)))³; z = 3.0902 is the standard normal's 99.9% quantile.
func chiSquareCritical(degreesOfFreedom df: Int, z: Double = 3.090_232) -> Double {
  let k = Double(df)
  let term = 1 - 2 / (9 * k) + z * (2 / (9 * k)).squareRoot()
  return k * term * term * term
}

/// Pearson's χ² statistic of `samples` against `pmf` and its degrees of freedom. Adjacent
/// integers are merged, from the left, until each bin expects at least 5 draws; a short last bin
/// joins the one before it. Draws beyond ±`support` count in the end bins.
func chiSquare(_ samples: [Int64], support: Int64, pmf: (Int64) -> Double) -> (statistic: Double, df: Int) {
  let n = Double(samples.count)
  var binOf: [Int64: Int] = [:]
  var expected: [Double] = [0]
  for x in -support...support {
    if expected[expected.count - 1] >= 5 { expected.append(0) }
    expected[expected.count - 1] += n * pmf(x)
    binOf[x] = expected.count - 1
  }
  if expected.count > 1 && expected[expected.count - 1] < 5 {
    let last = expected.removeLast()
    expected[expected.count - 1] += last
    for (x, bin) in binOf where bin == expected.count { binOf[x] = expected.count - 1 }
  }
  var observed = [Double](repeating: 0, count: expected.count)
  for s in samples { observed[binOf[Swift.min(Swift.max(s, -support), support)]!] += 1 }
  var statistic = 0.0
  for (o, e) in zip(observed, expected) { statistic += (o - e) * (o - e) / e }
  return (statistic, expected.count - 1)
}

@Suite struct DiscreteGaussianTests {
  static let draws = 20_000

  static func samples(sigma: Double, count: Int, seed: UInt64) -> [Int64] {
    let gaussian = DiscreteGaussian(sigma: sigma)
    var random = RandomStream(seed: seed, purpose: "discrete-gaussian-test")
    return (0..<count).map { _ in gaussian.sample(&random) }
  }

  @Test func wilsonHilfertyIsCloseToTabulatedQuantiles() {
    // χ² 99.9% quantiles from tables: df 1 → 10.828, 5 → 20.515, 10 → 29.588, 50 → 86.661.
    for (df, table) in [(1, 10.828), (5, 20.515), (10, 29.588), (50, 86.661)] {
      let approx = chiSquareCritical(degreesOfFreedom: df)
      #expect(abs(approx - table) / table < 0.05, "df \(df): \(approx) vs \(table)")
    }
  }

  /// The acceptance test of issue 6: the sampler matches its probability mass function.
  @Test(arguments: [0.5, 2.0, 10.0])
  func samplerMatchesPMFByChiSquare(sigma: Double) {
    let seed = 0xD6_0000 + UInt64(sigma * 10)
    let gaussian = DiscreteGaussian(sigma: sigma)
    let draws = Self.samples(sigma: sigma, count: Self.draws, seed: seed)
    let support = Int64((12 * sigma).rounded(.up)) + 2
    let (statistic, df) = chiSquare(draws, support: support, pmf: gaussian.probability)
    let critical = chiSquareCritical(degreesOfFreedom: df)
    #expect(df >= 2, "σ \(sigma): only \(df) degrees of freedom")
    #expect(statistic < critical, "seed \(seed), σ \(sigma): χ² = \(statistic) ≥ \(critical) (df \(df))")
  }

  /// The test has power: draws with σ = 2 fail against the pmf of σ = 2.2.
  @Test func chiSquareRejectsTheWrongSigma() {
    let seed: UInt64 = 0xD6_0001
    let draws = Self.samples(sigma: 2, count: Self.draws, seed: seed)
    let wrong = DiscreteGaussian(sigma: 2.2)
    let (statistic, df) = chiSquare(draws, support: 30, pmf: wrong.probability)
    #expect(statistic > chiSquareCritical(degreesOfFreedom: df), "seed \(seed): χ² = \(statistic), df \(df)")
  }

  /// Mean 0 within 4 standard errors (σ/√N) and variance σ² within 4 standard errors
  /// (σ²·√(2/N), the discrete Gaussian's kurtosis being that of the normal for σ ≥ 1).
  @Test(arguments: [1.0, 2.0, 10.0, 1000.0, 123_456.7])
  func meanAndVarianceMatch(sigma: Double) {
    let seed = 0xD6_1000 + UInt64(sigma)
    let count = sigma > 100 ? 5_000 : Self.draws
    let draws = Self.samples(sigma: sigma, count: count, seed: seed)
    let n = Double(count)
    let mean = draws.reduce(0.0) { $0 + Double($1) } / n
    let variance = draws.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / (n - 1)
    #expect(abs(mean) < 4 * sigma / n.squareRoot(), "seed \(seed), σ \(sigma): mean \(mean)")
    let tolerance = 4 * sigma * sigma * (2 / n).squareRoot()
    #expect(abs(variance - sigma * sigma) < tolerance, "seed \(seed), σ \(sigma): variance \(variance)")
  }

  @Test(arguments: [0x1p-10, 0.5, 3.0, 10.0, 2000.0, 0x1p24])
  func pmfIsNormalisedSymmetricAndTheVarianceIsSigmaSquared(sigma: Double) {
    let gaussian = DiscreteGaussian(sigma: sigma)
    #expect(abs(gaussian.variance - sigma * sigma) <= sigma * sigma * 0x1p-40)
    #expect(gaussian.probability(3) == gaussian.probability(-3))
    if sigma <= 10 {
      var total = 0.0
      for x in Int64(-200)...200 { total += gaussian.probability(x) }
      #expect(abs(total - 1) < 1e-12, "σ \(sigma): total \(total)")
    } else {
      // Beyond the truncated sum, the normalising constant is √(2π)σ.
      let z = gaussian.normalizingConstant
      #expect(abs(z / ((2 * Double.pi).squareRoot() * sigma) - 1) < 1e-9, "σ \(sigma): Z = \(z)")
    }
  }

  @Test func tinySigmaIsAlmostAlwaysZeroAndSamplingIsReproducible() {
    let seed: UInt64 = 0xD6_2000
    #expect(Self.samples(sigma: 0x1p-10, count: 1_000, seed: seed).allSatisfy { $0 == 0 }, "seed \(seed)")
    #expect(Self.samples(sigma: 3, count: 100, seed: seed) == Self.samples(sigma: 3, count: 100, seed: seed))
    #expect(
      Self.samples(sigma: 3, count: 100, seed: seed) != Self.samples(sigma: 3, count: 100, seed: seed + 1))
  }
}
