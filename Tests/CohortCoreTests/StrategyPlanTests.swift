import CohortCore
import Foundation
import Testing

@Suite struct StrategyPlanTests {
  let base = "name: p\nmodel: {kind: logistic_regression, inputs: 60, classes: 10}\n"

  func plan(_ strategy: String, extra: String = "") throws -> Plan {
    try Plan.parse(yaml: base + extra + "server: {strategy: \(strategy)}\n", file: "p.yaml")
  }

  func issues(_ strategy: String, server: String = "", extra: String = "") -> [ConfigurationIssue] {
    planIssues(base + extra + "server: {\(server)strategy: \(strategy)}\n")
  }

  @Test func everyKindLoadsWithDefaults() throws {
    for kind in StrategyPlan.Kind.allCases {
      let p = try plan("{kind: \(kind.rawValue)}")
      #expect(p.server.strategy.kind == kind)
    }
    #expect(
      try plan("{kind: fedavgm}").server.strategy.rule == .fedavgm(serverLearningRate: 1, momentum: 0.9))
    #expect(try plan("{kind: fedadam}").server.strategy.rule == .fedadam(.init()))
    #expect(try plan("{kind: fedtrimmedavg}").server.strategy.rule == .fedtrimmedavg(beta: 0.1))
    #expect(try plan("{kind: multikrum}").server.strategy.rule == .multikrum(byzantine: 1, keep: nil))
    #expect(try plan("{kind: scaffold}").server.strategy.rule == .scaffold(serverLearningRate: 1))
  }

  @Test func parametersAreRead() throws {
    let adam = try plan("{kind: fedyogi, server_learning_rate: 0.1, beta1: 0.8, beta2: 0.9, tau: 0.01}")
    #expect(
      adam.server.strategy.rule == .fedyogi(.init(serverLearningRate: 0.1, beta1: 0.8, beta2: 0.9, tau: 0.01))
    )
    let mk = try plan("{kind: multikrum, byzantine: 2, keep: 5}")
    #expect(mk.server.strategy.rule == .multikrum(byzantine: 2, keep: 5))
    #expect(mk.server.strategy.needsIndividualUpdates)
    #expect(!(try plan("{kind: fedadam}").server.strategy.needsIndividualUpdates))
    #expect(try plan("{kind: fedavg, weighted: false}").server.strategy.weighted == false)
  }

  @Test func fedproxSetsTheDeviceMu() throws {
    let p = try plan("{kind: fedprox, mu: 1}")
    #expect(p.server.strategy.deviceProximalMu == 1)
    #expect(p.device.proximalMu == 1)
    // Equal values in both places are accepted.
    #expect(
      try plan("{kind: fedprox, mu: 0.5}", extra: "device: {proximal_mu: 0.5}\n").device.proximalMu == 0.5)
    let found = issues("{kind: fedprox, mu: 1}", extra: "device: {proximal_mu: 0.1}\n")
    #expect(found.count == 1)
    #expect(found.first?.keyPath == "device.proximal_mu")
    #expect(found.first?.message.contains("server.strategy.mu") == true)
  }

  @Test func qfedavgLearningRateDefaultsToTheDevices() throws {
    let p = try plan("{kind: qfedavg, q: 2}", extra: "device: {optimizer: {learning_rate: 0.2}}\n")
    #expect(p.server.strategy.rule == .qfedavg(q: 2, learningRate: 0.2))
    #expect(
      try plan("{kind: qfedavg, learning_rate: 0.5}").server.strategy.rule
        == .qfedavg(q: 1, learningRate: 0.5))
  }

  @Test func keysOfOtherKindsAreRejectedByName() {
    let found = issues("{kind: fedavg, momentum: 0.9, tau: 0.1}")
    #expect(found.map(\.keyPath).sorted() == ["server.strategy.momentum", "server.strategy.tau"])
    #expect(
      found.allSatisfy { $0.message.contains("strategy fedavg does not use it; its keys are: weighted") })
    let adagrad = issues("{kind: fedadagrad, beta2: 0.9}")
    #expect(adagrad.map(\.keyPath) == ["server.strategy.beta2"])
    let median = issues("{kind: fedmedian, beta: 0.1}")
    #expect(median.first?.message.contains("takes no parameters") == true)
    let unknown = issues("{kind: krum, byzantin: 1}")
    #expect(unknown.first?.message.contains("did you mean byzantine?") == true)
  }

  @Test func rangesAreCheckedAndExplained() {
    let cases: [(String, String, String)] = [
      ("{kind: fedtrimmedavg, beta: 0.5}", "server.strategy.beta", "below 0.5"),
      ("{kind: fedadam, beta1: 1}", "server.strategy.beta1", "below 1"),
      ("{kind: fedadam, tau: 0}", "server.strategy.tau", "above 0"),
      ("{kind: fedavgm, server_learning_rate: -1}", "server.strategy.server_learning_rate", "above 0"),
      ("{kind: krum, byzantine: -1}", "server.strategy.byzantine", "0...1000000"),
      ("{kind: qfedavg, q: -1}", "server.strategy.q", "at least 0"),
      ("{kind: fedprox, mu: -1}", "server.strategy.mu", "at least 0"),
    ]
    for (strategy, key, accepted) in cases {
      let found = issues(strategy)
      #expect(found.count == 1, "\(strategy): \(found)")
      #expect(found.first?.keyPath == key, "\(strategy)")
      #expect(found.first?.message.contains(accepted) == true, "\(strategy): \(found)")
    }
  }

  @Test func byzantineToleranceNeedsEnoughDevices() {
    // Bulyan with f = 2 needs 4·2 + 3 = 11 updates.
    let found = issues("{kind: bulyan, byzantine: 2}", server: "cohort: {goal: 10}, ")
    #expect(found.count == 1)
    #expect(found.first?.keyPath == "server.cohort.goal")
    #expect(found.first?.message.contains("11") == true)
    #expect(found.first?.message.contains("server.strategy.byzantine") == true)
    #expect(issues("{kind: bulyan, byzantine: 2}", server: "cohort: {goal: 11}, ").isEmpty)
    #expect(issues("{kind: krum, byzantine: 3}", server: "cohort: {goal: 8}, ").count == 1)
    #expect(issues("{kind: multikrum, byzantine: 1, keep: 9}", server: "cohort: {goal: 9}, ").count == 1)
  }

  @Test func robustStrategyWithSecureAggregationNamesBothKeys() {
    let found = issues("{kind: fedmedian}", extra: "secure_aggregation: {enabled: true}\n")
    let combined = found.filter { $0.keyPath == "server.strategy.kind" }
    #expect(combined.count == 1, "\(found)")
    let message = combined.first?.message ?? ""
    #expect(message.contains("server.strategy.kind"))
    #expect(message.contains("secure_aggregation.enabled"))
    #expect(message.contains("fedadam") && message.contains("secure_aggregation.enabled: false"))
    // A sum-based strategy loads with secure aggregation.
    let alone = issues("{kind: fedadam}", extra: "secure_aggregation: {enabled: true}\n")
    #expect(alone.isEmpty, "\(alone)")
  }

  @Test func encodingIsFlatAndRoundTrips() throws {
    // FedAvg encodes exactly as before the other kinds existed, so stored plans keep their hash.
    let fedavg = try JSONEncoder().encode(StrategyPlan(.fedavg(weighted: true)))
    let object = try JSONSerialization.jsonObject(with: fedavg) as? [String: Any]
    #expect(Set(object?.keys ?? [:].keys) == ["kind", "weighted"])
    for kind in StrategyPlan.Kind.allCases {
      let plan = StrategyPlan(kind: kind)
      let back = try JSONDecoder().decode(StrategyPlan.self, from: JSONEncoder().encode(plan))
      #expect(back == plan, "\(kind)")
    }
  }
}
