import CohortCore
import CohortTesting
import Foundation
import Testing

/// Writes a plan and a scenario into a fresh temporary directory and loads the scenario.
func loadScenario(_ scenario: String, plan: String? = nil) throws(ConfigurationError) -> Scenario {
  let dir = TemporaryDirectory()
  dir.write(
    "plan.yaml",
    plan
      ?? "name: p\nmodel: {kind: logistic_regression, inputs: 60, classes: 10}\nserver: {cohort: {goal: 10}}\n"
  )
  return try Scenario.load(path: dir.write("scenario.yaml", scenario))
}

func scenarioIssues(_ scenario: String, plan: String? = nil) -> [ConfigurationIssue] {
  do {
    _ = try loadScenario(scenario, plan: plan)
    return []
  } catch {
    return error.issues
  }
}

@Suite struct ScenarioTests {
  @Test func everyShippedScenarioValidates() throws {
    let dir = repositoryRoot.appendingPathComponent("Simulations")
    let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".yaml") }
    #expect(files.count >= 2)
    for file in files {
      #expect(throws: Never.self, "\(file)") {
        try Scenario.load(path: dir.appendingPathComponent(file).path)
      }
    }
  }

  @Test func syntheticScenarioReadsEveryKey() throws {
    let s = try loadScenario(
      """
      plan: plan.yaml
      data: {kind: synthetic_fedprox, alpha: 0.5, beta: 0.5, devices: 30, iid: false, max_samples: 200}
      partition: {kind: natural}
      devices:
        compute: {kind: uniform, low: 10, high: 20}
        network: {download: {kind: constant, value: 1e6}, upload: {kind: lognormal, median: 1e5, sigma: 1}}
        availability: {kind: diurnal, amplitude: 0.3, period: 24h}
        dropout: 0.1
      seed: 9
      """)
    #expect(s.data == .syntheticFedProx(.init(alpha: 0.5, beta: 0.5, devices: 30, maxSamplesPerDevice: 200)))
    #expect(s.partition == .natural)
    #expect(s.devices.compute == .uniform(low: 10, high: 20))
    #expect(s.devices.download == .constant(1e6))
    #expect(s.devices.upload == .lognormal(median: 1e5, sigma: 1))
    #expect(s.devices.availability == .diurnal(amplitude: 0.3, period: 86400))
    #expect(s.devices.dropout == 0.1 && s.seed == 9 && s.populationSize == 30)
    #expect(s.planPath.hasSuffix("/plan.yaml"))
  }

  @Test func checkInIntervalIsADurationWithADefault() throws {
    let base = "plan: plan.yaml\ndata: {kind: synthetic_fedprox, alpha: 1, beta: 1, devices: 20}\n"
    #expect(try loadScenario(base).devices.checkInInterval == 600)
    #expect(try loadScenario(base + "devices: {check_in_interval: 90s}").devices.checkInInterval == 90)
    #expect(try loadScenario(base + "devices: {check_in_interval: 2h}").devices.checkInInterval == 7200)
    for bad in ["-5m", "0", "soon"] {
      let issues = scenarioIssues(base + "devices: {check_in_interval: \(bad)}")
      #expect(issues.map(\.keyPath) == ["devices.check_in_interval"], "value \(bad)")
    }
  }

  @Test func storedPopulationWithoutCheckInIntervalTakesTheDefault() throws {
    var plan = PopulationPlan(count: 7)
    plan.checkInInterval = 42
    let encoded = try JSONEncoder().encode(plan)
    #expect(try JSONDecoder().decode(PopulationPlan.self, from: encoded) == plan)
    var object = try #require(JSONSerialization.jsonObject(with: encoded) as? [String: Any])
    object.removeValue(forKey: "checkInInterval")
    let older = try JSONSerialization.data(withJSONObject: object)
    let decoded = try JSONDecoder().decode(PopulationPlan.self, from: older)
    #expect(decoded.checkInInterval == 600 && decoded.count == 7)
  }

  @Test func partitionKindsAndTheirParameters() throws {
    let base = "plan: plan.yaml\ndata: {kind: csv, path: d.csv}\ndevices: {count: 10}\n"
    #expect(
      try loadScenario(base + "partition: {kind: dirichlet, alpha: 0.1}").partition == .dirichlet(alpha: 0.1))
    #expect(
      try loadScenario(base + "partition: {kind: shards, shards_per_client: 3}").partition
        == .shards(perClient: 3))
    #expect(
      try loadScenario(base + "partition: {kind: quantity_skew, distribution: power_law, exponent: 2}")
        .partition
        == .quantitySkew(.powerLaw(exponent: 2)))
    let wrong = scenarioIssues(base + "partition: {kind: dirichlet, shards_per_client: 2}")
    #expect(Set(wrong.map(\.keyPath)) == ["partition.shards_per_client", "partition.alpha"])
  }

  @Test func dataPathsResolveAgainstTheScenarioDirectory() throws {
    let s = try loadScenario("plan: plan.yaml\ndata: {kind: csv, path: sub/d.csv, client_column: user}\n")
    guard case .csv(let csv) = s.data else {
      Issue.record("expected csv data")
      return
    }
    #expect(csv.path.hasSuffix("/sub/d.csv") && csv.path.hasPrefix("/"))
    #expect(csv.clientColumn == "user" && csv.test == .fraction(0.2))
  }

  @Test func naturalPartitionNeedsOwnersInTheData() {
    let issues = scenarioIssues(
      "plan: plan.yaml\ndata: {kind: csv, path: d.csv}\npartition: {kind: natural}\n")
    #expect(issues.map(\.keyPath) == ["partition"])
    #expect(issues.first?.message.contains("client_column") == true)
  }

  @Test func modelMustFitSyntheticData() {
    let plan =
      "name: p\nmodel: {kind: logistic_regression, inputs: 64, classes: 10}\nserver: {cohort: {goal: 1}}\n"
    let issues = scenarioIssues(
      "plan: plan.yaml\ndata: {kind: synthetic_fedprox, alpha: 1, beta: 1, devices: 5}\n", plan: plan)
    #expect(issues.map(\.keyPath) == ["data"])
  }

  @Test func goalLargerThanPopulationIsRejected() {
    let issues = scenarioIssues(
      "plan: plan.yaml\ndata: {kind: synthetic_fedprox, alpha: 1, beta: 1, devices: 5}\n")
    #expect(issues.map(\.keyPath) == ["devices.count"])
    #expect(issues.first?.message.contains("server.cohort.goal") == true)
  }

  @Test func planIssuesNameThePlanFile() {
    let issues = scenarioIssues(
      "plan: plan.yaml\ndata: {kind: synthetic_fedprox, alpha: 1, beta: 1, devices: 50}\n",
      plan: "name: p\nmodel: {kind: logistic_regression, inputs: 60, clases: 10}\n")
    #expect(issues.contains { $0.file.hasSuffix("plan.yaml") && $0.keyPath == "model.clases" })
  }

  @Test func missingPlanFileIsNamedAtThePlanKey() {
    let issues = scenarioIssues(
      "plan: nope.yaml\ndata: {kind: synthetic_fedprox, alpha: 1, beta: 1, devices: 50}\n")
    #expect(issues.map(\.keyPath) == ["plan"])
    #expect(issues.first?.message.contains("does not exist") == true)
  }
}

@Suite struct InlinePlanTests {
  @Test func planMayBeWrittenInline() throws {
    let s = try Scenario.parse(
      yaml: """
        plan:
          name: inline
          model: {kind: logistic_regression, inputs: 60, classes: 10}
          server: {cohort: {goal: 5}}
        data: {kind: synthetic_fedprox, alpha: 0, beta: 0, devices: 10}
        """, file: "/tmp/inline.yaml")
    #expect(s.plan.name == "inline" && s.planPath == "/tmp/inline.yaml")
  }

  @Test func inlinePlanIssuesCarryThePlanKeyPath() {
    do {
      _ = try Scenario.parse(
        yaml: "plan: {name: x, model: {kind: mlp, inputs: 3, classes: 2}}\ndata: {kind: csv, path: a.csv}\n",
        file: "s.yaml")
      Issue.record("an mlp without hidden layers was accepted")
    } catch {
      #expect(error.issues.map(\.keyPath) == ["plan.model.hidden"])
    }
  }
}

@Suite struct AdversaryPlanTests {
  let base = "plan: plan.yaml\ndata: {kind: synthetic_fedprox, alpha: 1, beta: 1, devices: 50}\n"

  @Test func attacksAndTheirParameters() throws {
    #expect(
      try loadScenario(base + "adversaries: {fraction: 0.2, attack: sign_flip}").adversaries
        == AdversaryPlan(fraction: 0.2, attack: .signFlip(factor: 4)))
    #expect(
      try loadScenario(base + "adversaries: {fraction: 0.1, attack: scale, factor: 10}").adversaries
        == AdversaryPlan(fraction: 0.1, attack: .scale(10)))
    #expect(
      try loadScenario(base + "adversaries: {fraction: 0.1, attack: gaussian_noise}").adversaries
        == AdversaryPlan(fraction: 0.1, attack: .gaussianNoise(standardDeviation: 1)))
    #expect(try loadScenario(base).adversaries == nil)
  }

  @Test func wrongParametersAreNamed() {
    let issues = scenarioIssues(base + "adversaries: {fraction: 1.5, attack: label_flip, factor: 2}")
    #expect(Set(issues.map(\.keyPath)) == ["adversaries.fraction", "adversaries.factor"])
    let missing = scenarioIssues(base + "adversaries: {fraction: 0.2, attack: scale}")
    #expect(missing.map(\.keyPath) == ["adversaries.factor"])
  }
}
