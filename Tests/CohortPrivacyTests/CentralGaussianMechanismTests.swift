import CohortCompression
import CohortCore
import CohortPrivacy
import Foundation
import Testing

@Suite struct CentralGaussianMechanismTests {
  func mechanism(
    _ plan: PrivacyPlan, cohort: Int = 100, population: Int? = 10_000, seed: UInt64 = 7
  ) throws -> CentralGaussianMechanism {
    try #require(
      CentralGaussianMechanism(plan: plan, expectedCohort: cohort, populationSize: population, seed: seed))
  }

  @Test(arguments: [UInt64(1), 2, 3])
  func noClippedUpdateExceedsTheBound(seed: UInt64) {
    var rng = RandomStream(seed: seed, purpose: "clip-test")
    for trial in 0..<300 {
      let n = 1 + rng.int(below: 2_000)
      let scale = exp(rng.normal() * 4)
      var v = (0..<n).map { _ in Float(rng.normal() * scale) }
      let bound = exp(rng.normal() * 2)
      let before = L2Clipping.l2Norm(v)
      let reported = L2Clipping.clip(&v, to: bound)
      #expect(reported == before, "seed \(seed) trial \(trial)")
      let after = L2Clipping.l2Norm(v)
      #expect(after <= bound, "seed \(seed) trial \(trial): norm \(after) > clip \(bound)")
      if before <= bound {
        #expect(after == before, "seed \(seed) trial \(trial): untouched within the bound")
      }
    }
  }

  @Test func centralNoiseHasTheStatedVariance() throws {
    let seed: UInt64 = 11
    let plan = PrivacyPlan(kind: .centralGaussian, clip: 0.5, noiseMultiplier: 1.3)
    let m = try mechanism(plan, seed: seed)
    let n = 200_000
    var sum = [Double](repeating: 0, count: n)
    m.addNoise(to: &sum, clip: 0.5, round: 3)
    let mean = sum.reduce(0, +) / Double(n)
    let variance = sum.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(n - 1)
    let expected = (1.3 * 0.5) * (1.3 * 0.5)
    // The sample variance has standard error σ²·√(2/(n−1)); allow 5 of them.
    let tolerance = 5 * expected * (2 / Double(n - 1)).squareRoot()
    #expect(abs(variance - expected) < tolerance, "seed \(seed): variance \(variance), expected \(expected)")
    #expect(abs(mean) < 5 * (expected / Double(n)).squareRoot(), "seed \(seed): mean \(mean)")
    // The noise is a function of (seed, round): the same again, another round differs.
    var again = [Double](repeating: 0, count: n)
    m.addNoise(to: &again, clip: 0.5, round: 3)
    #expect(again == sum)
    var other = [Double](repeating: 0, count: 8)
    m.addNoise(to: &other, clip: 0.5, round: 4)
    #expect(Array(sum.prefix(8)) != other)
  }

  @Test func adaptiveNoiseUsesTheUpdateMultiplier() throws {
    let plan = PrivacyPlan(
      kind: .centralGaussian, clip: 1, noiseMultiplier: 1,
      adaptiveClipping: .init(countNoiseMultiplier: 5, initialClip: 1))
    let m = try mechanism(plan)
    #expect(abs(m.updateNoiseMultiplier - 1 / (0.99).squareRoot()) < 1e-12)
  }

  @Test(arguments: [(UInt64(21), 0.5), (22, 0.8), (23, 0.2)])
  func adaptiveClippingMovesTowardTheTargetQuantile(seed: UInt64, quantile: Double) throws {
    let cohort = 1_000
    let plan = PrivacyPlan(
      kind: .centralGaussian, clip: 0.01, noiseMultiplier: 1,
      adaptiveClipping: .init(
        targetQuantile: quantile, learningRate: 0.2, countNoiseMultiplier: Double(cohort) / 20,
        initialClip: 0.01))
    let m = try mechanism(plan, cohort: cohort, seed: seed)
    var rng = RandomStream(seed: seed, purpose: "norms")
    var clip = plan.initialClip
    var fractions: [Double] = []
    for round in 1...300 {
      // Norms of synthetic updates: lognormal around 1 (median 1).
      let norms = (0..<cohort).map { _ in rng.lognormal(mean: 0, sigma: 0.5) }
      let within = norms.filter { $0 <= clip }.count
      fractions.append(Double(within) / Double(cohort))
      clip = m.nextClip(after: round, clip: clip, unclipped: within)
    }
    // After it settles, the clip sits at the target quantile of the norms.
    let settled = fractions.suffix(100)
    let mean = settled.reduce(0, +) / Double(settled.count)
    #expect(abs(mean - quantile) < 0.03, "seed \(seed): fraction within clip \(mean), target \(quantile)")
    let truth = exp(0.5 * inverseNormal(quantile))
    #expect(abs(log(clip / truth)) < 0.15, "seed \(seed): clip \(clip), the norms' quantile \(truth)")
  }

  @Test func theClipUpdateIsGeometric() {
    // Everything unclipped at target 0.5: the clip shrinks by exp(−η/2).
    let next = CentralGaussianMechanism.nextClip(
      2, unclippedFraction: 1, targetQuantile: 0.5, learningRate: 0.2)
    #expect(abs(next - 2 * exp(-0.1)) < 1e-15)
    let same = CentralGaussianMechanism.nextClip(
      2, unclippedFraction: 0.5, targetQuantile: 0.5, learningRate: 0.2)
    #expect(same == 2)
  }

  @Test func epsilonAndTheBudgetAgreeWithTheAccountant() throws {
    let plan = PrivacyPlan(kind: .centralGaussian, noiseMultiplier: 1.1, delta: 1e-5, targetEpsilon: 2)
    let m = try mechanism(plan, cohort: 100, population: 10_000)
    let reference = try PrivacyAccountant.epsilon(
      samplingRate: 0.01, noiseMultiplier: 1.1, steps: 50, delta: 1e-5)
    #expect(m.epsilon(afterRounds: 50) == reference.epsilon)
    let limit = m.roundLimit(rounds: 100_000)
    #expect(limit.rounds > 0 && limit.rounds < 100_000)
    #expect((m.epsilon(afterRounds: limit.rounds) ?? .infinity) <= 2)
    #expect((m.epsilon(afterRounds: limit.rounds + 1) ?? 0) > 2)
    #expect(
      limit.reason?.hasPrefix("privacy budget reached: ε after round \(limit.rounds + 1) would be") == true)
    #expect(limit.reason?.hasSuffix("stopping after round \(limit.rounds)") == true)
    #expect(m.roundLimit(rounds: 10).rounds == 10 && m.roundLimit(rounds: 10).reason == nil)
    // Unknown population: no sampling rate, no ε, no limit.
    let unknown = try mechanism(plan, population: nil)
    #expect(unknown.epsilon(afterRounds: 1) == nil && unknown.roundLimit(rounds: 10).rounds == 10)
  }

  /// Φ⁻¹(p) by bisection on erfc, enough for a test's reference quantile.
  func inverseNormal(_ p: Double) -> Double {
    var low = -10.0
    var high = 10.0
    for _ in 0..<200 {
      let mid = (low + high) / 2
      if 0.5 * erfc(-mid / 2.0.squareRoot()) < p { low = mid } else { high = mid }
    }
    return (low + high) / 2
  }

  @Test func aServedRunsNoiseComesFromLibsodiumAndStillHasTheStatedVariance() throws {
    let plan = PrivacyPlan(kind: .centralGaussian, clip: 0.5, noiseMultiplier: 1.3)
    let m = try #require(
      CentralGaussianMechanism(plan: plan, expectedCohort: 100, populationSize: 10_000, seed: nil))
    let n = 200_001  // odd: the last coordinate takes half a pair
    var a = [Double](repeating: 0, count: n)
    var b = a
    m.addNoise(to: &a, clip: 0.5, round: 3)
    m.addNoise(to: &b, clip: 0.5, round: 3)
    // Unpredictable: the same round noised twice differs (a seeded stream would repeat).
    #expect(a != b)
    #expect(a.allSatisfy { $0 != 0 })
    let sigma = 1.3 * 0.5
    let mean = a.reduce(0, +) / Double(n)
    let variance = a.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(n - 1)
    // Bounds of about 6 standard errors: a correct sampler fails them with probability < 1e-8.
    #expect(abs(mean) < 6 * sigma / Double(n).squareRoot())
    #expect(abs(variance / (sigma * sigma) - 1) < 6 * (2.0 / Double(n)).squareRoot())
  }
}
