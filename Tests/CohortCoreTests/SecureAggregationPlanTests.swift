import CohortCore
import Foundation
import Testing

@Suite struct SecureAggregationPlanTests {
  let base = "name: p\nmodel: {kind: logistic_regression, inputs: 60, classes: 10}\n"

  /// A plan with the given `secure_aggregation` mapping (and optionally a server section).
  func plan(_ secAgg: String, server: String = "") throws -> SecureAggregationPlan {
    try Plan.parse(yaml: base + server + "secure_aggregation: \(secAgg)\n", file: "p.yaml").secureAggregation
  }

  func issues(_ secAgg: String, server: String = "") -> [ConfigurationIssue] {
    planIssues(base + server + "secure_aggregation: \(secAgg)\n")
  }

  @Test func defaults() throws {
    let d = SecureAggregationPlan()
    #expect(d.enabled == false && d.variant == .semiHonest && d.graph == .harary)
    #expect(d.dropoutRate == 0.1 && d.corruptFraction == 0.05)
    #expect(d.degree == nil && d.threshold == nil)
    #expect(d.securityBits == 40 && d.clip == 1.0 && d.encodingBits == 16 && d.weightCap == 1000)
    #expect(try Plan.parse(yaml: base, file: "p.yaml").secureAggregation == d)
    #expect(try plan("{enabled: true}") == SecureAggregationPlan(enabled: true))
    #expect(try plan("{}") == d)
  }

  @Test func everyKeyIsRead() throws {
    let p = try plan(
      """
      {enabled: true, variant: active, graph: harary, dropout_rate: 0.2, corrupt_fraction: 0.1,
       degree: 20, threshold: 12, security_bits: 60, clip: 0.5, encoding_bits: 12, weight_cap: 500}
      """)
    #expect(
      p
        == SecureAggregationPlan(
          enabled: true, variant: .active, graph: .harary, dropoutRate: 0.2, corruptFraction: 0.1, degree: 20,
          threshold: 12, securityBits: 60, clip: 0.5, encodingBits: 12, weightCap: 500))
    #expect(try plan("{graph: complete, threshold: 40}").graph == .complete)
  }

  @Test func parametersAreValidatedWhileDisabled() throws {
    // Users toggle enabled; the rest is read (and kept) either way.
    #expect(try plan("{enabled: false, encoding_bits: 8, clip: 2}").encodingBits == 8)
    let found = issues(
      """
      {enabled: false, variant: malicious, graph: ring, dropout_rate: 0.5, corrupt_fraction: -0.1,
       degree: 1, threshold: 1, security_bits: 19, clip: 0, encoding_bits: 25, weight_cap: 0, extra: 1}
      """)
    let paths = Set(found.map(\.keyPath))
    let expected = [
      "variant", "graph", "dropout_rate", "corrupt_fraction", "degree", "threshold", "security_bits", "clip",
      "encoding_bits", "weight_cap", "extra",
    ].map { "secure_aggregation." + $0 }
    #expect(paths == Set(expected), "\(found)")
    let dropout = found.first { $0.keyPath == "secure_aggregation.dropout_rate" }?.message ?? ""
    #expect(dropout.contains("below 0.5"), "\(dropout)")
    let variant = found.first { $0.keyPath == "secure_aggregation.variant" }?.message ?? ""
    #expect(variant.contains("semi_honest") && variant.contains("active"), "\(variant)")
  }

  @Test func degreeIsEvenAndOnlyForHarary() {
    let odd = issues("{degree: 7}")
    #expect(odd.map(\.keyPath) == ["secure_aggregation.degree"], "\(odd)")
    #expect(odd.first?.message.contains("even") == true)
    #expect(odd.first?.message.contains("6 or 8") == true)
    let complete = issues("{graph: complete, degree: 8}")
    #expect(complete.map(\.keyPath) == ["secure_aggregation.degree"], "\(complete)")
    let message = complete.first?.message ?? ""
    #expect(message.contains("n − 1") && message.contains("graph: harary"), "\(message)")
    #expect(issues("{degree: 8}").isEmpty)
  }

  @Test func thresholdIsAtMostDegree() {
    let found = issues("{degree: 8, threshold: 9}")
    #expect(found.map(\.keyPath) == ["secure_aggregation.threshold"], "\(found)")
    let message = found.first?.message ?? ""
    #expect(message.contains("secure_aggregation.degree (8)") && message.contains("at most 8"), "\(message)")
    #expect(issues("{degree: 8, threshold: 8}").isEmpty)
  }

  @Test func thresholdIsAtMostTheCohortMinimumWhenEnabled() {
    // goal 10 × minimum_fraction 0.5 → as few as 5 devices report.
    let server = "server: {cohort: {goal: 10, minimum_fraction: 0.5}}\n"
    let found = issues("{enabled: true, threshold: 6}", server: server)
    #expect(found.map(\.keyPath) == ["secure_aggregation.threshold"], "\(found)")
    let message = found.first?.message ?? ""
    #expect(message.contains("at most 5") && message.contains("server.cohort.minimum_fraction"), "\(message)")
    #expect(issues("{enabled: true, threshold: 5}", server: server).isEmpty)
    // Disabled, the cohort does not constrain it.
    #expect(issues("{enabled: false, threshold: 6}", server: server).isEmpty)
  }

  @Test func ringBitsCoverTheSumOfTheCohort() {
    let p = SecureAggregationPlan(encodingBits: 16)
    #expect(p.ringBits(devices: 1) == 17)
    #expect(p.ringBits(devices: 2) == 17)
    #expect(p.ringBits(devices: 3) == 18)
    #expect(p.ringBits(devices: 4) == 18)
    #expect(p.ringBits(devices: 130) == 24)
    #expect(p.ringBits(devices: 65_536) == 32)
    #expect(p.ringBits(devices: 65_537) == 33)
    // The bound really holds: n codes of magnitude 2^(e−1) − 1 fit in a signed b-bit integer.
    for n in [1, 2, 3, 5, 100, 1000, 65_536] {
      let b = p.ringBits(devices: n)
      #expect(n * ((1 << 15) - 1) <= (1 << (b - 1)) - 1, "n = \(n)")
    }
  }

  @Test func ringWiderThan32BitsNamesEncodingBits() throws {
    // ⌈1000 × 1.3⌉ = 1300 devices: ⌈log2 1300⌉ = 11, so 24 + 11 = 35 bits; at most 21 fit.
    let server = "server: {cohort: {goal: 1000, over_selection: 1.3}}\n"
    let found = issues("{enabled: true, encoding_bits: 24}", server: server)
    #expect(found.map(\.keyPath) == ["secure_aggregation.encoding_bits"], "\(found)")
    let message = found.first?.message ?? ""
    #expect(message.contains("1300 devices") && message.contains("35 bits"), "\(message)")
    #expect(message.contains("32") && message.contains("at most 21"), "\(message)")
    #expect(issues("{enabled: true, encoding_bits: 21}", server: server).isEmpty)
    #expect(issues("{enabled: false, encoding_bits: 24}", server: server).isEmpty)
  }

  @Test(arguments: ["qfedavg", "scaffold", "fedmedian", "krum"])
  func strategiesThatNeedMoreThanTheSumAreRefused(kind: String) {
    let found = planIssues(
      base + "server: {strategy: {kind: \(kind)}}\nsecure_aggregation: {enabled: true}\n")
    #expect(found.map(\.keyPath) == ["server.strategy.kind"], "\(found)")
    let message = found.first?.message ?? ""
    #expect(message.contains("server.strategy.kind \(kind)"), "\(message)")
    #expect(
      message.contains("fedavg, fedavgm, fedprox, fedadagrad, fedadam or fedyogi")
        && message.contains("secure_aggregation.enabled: false"), "\(message)")
    #expect(!message.contains("qfedavg, scaffold"), "\(message)")
    // Without secure aggregation the same strategy loads.
    #expect(planIssues(base + "server: {strategy: {kind: \(kind)}}\n").isEmpty)
  }

  @Test func everySupportedStrategyLoads() {
    for kind in SecureAggregationPlan.supportedStrategies {
      let found = planIssues(
        base + "server: {strategy: {kind: \(kind.rawValue)}}\nsecure_aggregation: {enabled: true}\n")
      #expect(found.isEmpty, "\(kind): \(found)")
    }
  }

  @Test func disabledDefaultsEncodeAsBeforeAndOldPlansDecode() throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = .sortedKeys
    #expect(
      String(decoding: try encoder.encode(SecureAggregationPlan()), as: UTF8.self) == #"{"enabled":false}"#)
    let old = try JSONDecoder().decode(SecureAggregationPlan.self, from: Data(#"{"enabled":false}"#.utf8))
    #expect(old == SecureAggregationPlan())
    for p in [
      SecureAggregationPlan(enabled: true),
      SecureAggregationPlan(enabled: false, clip: 2),
      SecureAggregationPlan(enabled: true, variant: .active, graph: .harary, degree: 10, threshold: 6),
    ] {
      let json = try encoder.encode(p)
      #expect(try JSONDecoder().decode(SecureAggregationPlan.self, from: json) == p)
      #expect(String(decoding: json, as: UTF8.self).contains("encodingBits"))
    }
  }
}
