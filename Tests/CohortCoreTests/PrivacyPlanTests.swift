import CohortCore
import Foundation
import Testing

@Suite struct PrivacyPlanTests {
  let base = "name: p\nmodel: {kind: logistic_regression, inputs: 60, classes: 10}\n"

  func plan(_ privacy: String, extra: String = "") throws -> PrivacyPlan {
    try Plan.parse(yaml: base + extra + "privacy: \(privacy)\n", file: "p.yaml").privacy
  }

  func issues(_ privacy: String, extra: String = "") -> [ConfigurationIssue] {
    planIssues(base + extra + "privacy: \(privacy)\n")
  }

  @Test func defaultsAndHashStability() throws {
    let d = PrivacyPlan()
    #expect(d.kind == .none && d.clip == 1 && d.noiseMultiplier == 1 && d.delta == 1e-5)
    #expect(d.targetEpsilon == nil && d.adaptiveClipping == nil)
    #expect(try Plan.parse(yaml: base, file: "p.yaml").privacy == d)
    #expect(try plan("{kind: none}") == d)
    // The default section encodes as before the keys existed, so stored plans keep their hash.
    let json = String(decoding: try JSONEncoder().encode(d), as: UTF8.self)
    #expect(json == #"{"kind":"none"}"#)
    let central = try plan("{kind: central_gaussian}")
    #expect(central == PrivacyPlan(kind: .centralGaussian))
    let decoded = try JSONDecoder().decode(PrivacyPlan.self, from: try JSONEncoder().encode(central))
    #expect(decoded == central)
  }

  @Test func everyKeyIsRead() throws {
    let p = try plan(
      """
      {kind: central_gaussian, clip: 0.5, noise_multiplier: 1.2, delta: 1e-6, target_epsilon: 8,
        adaptive_clipping: {target_quantile: 0.7, learning_rate: 0.1, count_noise_multiplier: 9,
        initial_clip: 0.25}}
      """)
    #expect(p.kind == .centralGaussian && p.clip == 0.5 && p.noiseMultiplier == 1.2 && p.delta == 1e-6)
    #expect(p.targetEpsilon == 8)
    #expect(
      p.adaptiveClipping
        == PrivacyPlan.AdaptiveClipping(
          targetQuantile: 0.7, learningRate: 0.1, countNoiseMultiplier: 9, initialClip: 0.25))
    #expect(p.initialClip == 0.25)
    let json = try JSONEncoder().encode(p)
    #expect(try JSONDecoder().decode(PrivacyPlan.self, from: json) == p)
  }

  @Test func adaptiveDefaultsFollowTheCohortAndTheClip() throws {
    let p = try plan(
      "{kind: central_gaussian, clip: 2, adaptive_clipping: {}}", extra: "server: {cohort: {goal: 200}}\n")
    let a = try #require(p.adaptiveClipping)
    #expect(a.targetQuantile == 0.5 && a.learningRate == 0.2)
    #expect(a.countNoiseMultiplier == 10, "σ_b defaults to goal / 20")
    #expect(a.initialClip == 2)
  }

  @Test func updateNoiseMultiplierFormula() throws {
    // z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2): z = 1, σ_b = 5 → (1 − 1/100)^(−1/2).
    let z = try #require(PrivacyPlan.updateNoiseMultiplier(noiseMultiplier: 1, countNoise: 5))
    #expect(abs(z - 1 / (0.99).squareRoot()) < 1e-12)
    #expect(z > 1, "the count takes a share of the budget, so the update needs more noise")
    #expect(PrivacyPlan.updateNoiseMultiplier(noiseMultiplier: 1, countNoise: 0.5) == nil)
    #expect(PrivacyPlan.updateNoiseMultiplier(noiseMultiplier: 0, countNoise: 5) == nil)
    #expect(PrivacyPlan(kind: .centralGaussian, noiseMultiplier: 0.7).updateNoiseMultiplier == 0.7)
  }

  @Test func badValuesNameTheirKey() {
    let cases: [(String, String)] = [
      ("{kind: central_gaussian, clip: 0}", "privacy.clip"),
      ("{kind: central_gaussian, noise_multiplier: -1}", "privacy.noise_multiplier"),
      ("{kind: central_gaussian, delta: 1}", "privacy.delta"),
      ("{kind: central_gaussian, delta: 0}", "privacy.delta"),
      ("{kind: central_gaussian, target_epsilon: 0}", "privacy.target_epsilon"),
      (
        "{kind: central_gaussian, adaptive_clipping: {target_quantile: 1}}",
        "privacy.adaptive_clipping.target_quantile"
      ),
      (
        "{kind: central_gaussian, adaptive_clipping: {learning_rate: 0}}",
        "privacy.adaptive_clipping.learning_rate"
      ),
      (
        "{kind: central_gaussian, adaptive_clipping: {initial_clip: -1}}",
        "privacy.adaptive_clipping.initial_clip"
      ),
      ("{kind: central_gaussian, adaptive_clipping: {quantile: 0.5}}", "privacy.adaptive_clipping.quantile"),
      ("{kind: laplace}", "privacy.kind"),
      ("{kind: none, clip: 1}", "privacy.clip"),
    ]
    for (yaml, key) in cases {
      let found = issues(yaml)
      #expect(found.map(\.keyPath).contains(key), "\(yaml): \(found.map(\.keyPath))")
    }
  }

  @Test func strategiesThatNeedIndividualUpdatesAreRejected() {
    for kind in ["fedmedian", "krum", "fedtrimmedavg", "qfedavg", "scaffold"] {
      let found = issues("{kind: central_gaussian}", extra: "server: {strategy: {kind: \(kind)}}\n")
      let issue = found.first { $0.keyPath == "privacy.kind" }
      #expect(issue != nil, "\(kind): \(found)")
      if kind == "fedmedian" {
        #expect(issue?.message.contains("sensitivity analysis assumes the average") == true)
      }
    }
    for kind in ["fedavg", "fedavgm", "fedadam"] {
      #expect(issues("{kind: central_gaussian}", extra: "server: {strategy: {kind: \(kind)}}\n").isEmpty)
    }
  }

  @Test func impossibleCombinationsAreRejected() {
    // 2σ_b must exceed z for z_Δ to exist: goal 20 gives σ_b = 1, so z = 2 is too much.
    let tooLittleCountNoise = issues(
      "{kind: central_gaussian, noise_multiplier: 2, adaptive_clipping: {}}",
      extra: "server: {cohort: {goal: 20}}\n")
    #expect(tooLittleCountNoise.map(\.keyPath) == ["privacy.adaptive_clipping.count_noise_multiplier"])
    #expect(tooLittleCountNoise.first?.message.contains("goal / 20") == true)
    #expect(
      issues("{kind: central_gaussian, noise_multiplier: 0, target_epsilon: 5}").map(\.keyPath)
        == ["privacy.target_epsilon"])
    #expect(
      issues(
        "{kind: central_gaussian, adaptive_clipping: {}}", extra: "secure_aggregation: {enabled: true}\n"
      )
      .map(\.keyPath) == ["privacy.adaptive_clipping"])
    // Central noise on the secure sum is allowed.
    #expect(issues("{kind: central_gaussian}", extra: "secure_aggregation: {enabled: true}\n").isEmpty)
  }

  @Test func distributedDiscreteGaussianNeedsSecureAggregation() throws {
    let alone = issues("{kind: distributed_discrete_gaussian}")
    #expect(alone.map(\.keyPath) == ["privacy.kind"])
    #expect(alone.first?.message.contains("set secure_aggregation.enabled: true") == true, "\(alone)")
    let secure = "secure_aggregation: {enabled: true}\n"
    let p = try plan(
      "{kind: distributed_discrete_gaussian, clip: 2, noise_multiplier: 0.8, beta: 0}", extra: secure)
    #expect(p.isDistributed && p.isPrivate && !p.isCentral && p.clip == 2 && p.beta == 0)
    #expect(try plan("{kind: distributed_discrete_gaussian}", extra: secure).beta == PrivacyPlan.defaultBeta)
    // Adaptive clipping is central only; β out of range names the key.
    #expect(
      issues("{kind: distributed_discrete_gaussian, adaptive_clipping: {}}", extra: secure).map(\.keyPath)
        == ["privacy.adaptive_clipping"])
    #expect(
      issues("{kind: distributed_discrete_gaussian, beta: 1}", extra: secure).map(\.keyPath) == [
        "privacy.beta"
      ])
    #expect(issues("{kind: central_gaussian, beta: 0.5}").map(\.keyPath) == ["privacy.beta"])
  }
}
