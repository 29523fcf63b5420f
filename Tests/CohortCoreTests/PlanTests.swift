import CohortCore
import CohortTesting
import Foundation
import Testing

func planIssues(_ yaml: String) -> [ConfigurationIssue] {
  do {
    _ = try Plan.parse(yaml: yaml, file: "test.yaml")
    return []
  } catch {
    return error.issues
  }
}

@Suite struct PlanTests {
  let minimal = "name: p\nmodel: {kind: logistic_regression, inputs: 60, classes: 10}\n"

  @Test func everyShippedPlanValidates() throws {
    let dir = repositoryRoot.appendingPathComponent("Plans")
    let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".yaml") }
    #expect(files.count >= 3)
    for file in files {
      #expect(throws: Never.self, "\(file)") { try Plan.load(path: dir.appendingPathComponent(file).path) }
    }
  }

  @Test func defaultsFillMissingSections() throws {
    let plan = try Plan.parse(yaml: minimal, file: "p.yaml")
    #expect(plan.model.inputShape == [60])
    #expect(plan.device.batchSize == 10)
    #expect(plan.server.cohort.overSelection == 1.3)
    #expect(plan.server.cohort.selectionTarget == 130)
    #expect(plan.server.cohort.minimumReports == 80)
    #expect(plan.secureAggregation.enabled == false)
  }

  @Test func fullPlanReadsEveryKey() throws {
    let yaml = """
      name: full
      model: {kind: mlp, inputs: 784, hidden: [200, 200], classes: 10}
      device: {epochs: 5, batch_size: 64, proximal_mu: 0.01,
               optimizer: {kind: sgd, learning_rate: 0.1, momentum: 0.9, weight_decay: 0.0001}}
      server:
        rounds: 7
        cohort: {goal: 30, over_selection: 1.5, minimum_fraction: 0.5}
        windows: {selection: 2m, reporting: 500ms}
        strategy: {kind: fedavg, weighted: false}
        evaluation: {every: 5}
      """
    let plan = try Plan.parse(yaml: yaml, file: "p.yaml")
    #expect(plan.model.hidden == [200, 200])
    #expect(plan.device.epochs == 5 && plan.device.batchSize == 64 && plan.device.proximalMu == 0.01)
    #expect(plan.device.optimizer.momentum == 0.9 && plan.device.optimizer.weightDecay == 0.0001)
    #expect(plan.server.rounds == 7 && plan.server.cohort.goal == 30)
    #expect(plan.server.windows.selection == 120 && plan.server.windows.reporting == 0.5)
    #expect(plan.server.strategy.weighted == false && plan.server.evaluation.every == 5)
  }

  @Test func misspeltKeyIsNamedWithSuggestion() {
    let issues = planIssues(minimal + "device: {epocs: 3}\n")
    #expect(issues.count == 1)
    let text = issues.first?.description ?? ""
    #expect(text.contains("device.epocs"), "\(text)")
    #expect(text.contains("did you mean epochs"), "\(text)")
    #expect(text.contains("test.yaml:3"), "\(text)")
  }

  @Test func wrongTypeAndRangeNameKeyValueAndAcceptedValues() {
    let issues = planIssues(minimal + "server: {rounds: many, cohort: {over_selection: 0.5}}\n")
    #expect(issues.count == 2)
    let rounds = issues.first { $0.keyPath == "server.rounds" }
    #expect(rounds?.value == "many")
    #expect(rounds?.message.contains("whole number") == true)
    let over = issues.first { $0.keyPath == "server.cohort.over_selection" }
    #expect(over?.value == "0.5")
    #expect(over?.message.contains("at least 1.0") == true)
  }

  @Test func unknownKindListsAcceptedKinds() {
    let issues = planIssues("name: p\nmodel: {kind: logistic, inputs: 60, classes: 10}\n")
    #expect(issues.map(\.keyPath) == ["model.kind"])
    #expect(issues[0].message.contains("logistic_regression, mlp, cnn"))
  }

  @Test func keysThatDoNotApplyToTheKindAreRejected() {
    let issues = planIssues(
      "name: p\nmodel: {kind: logistic_regression, inputs: 60, hidden: [5], classes: 10}\n")
    #expect(issues.map(\.keyPath) == ["model.hidden"])
    let cnn = planIssues("name: p\nmodel: {kind: cnn, inputs: 784, classes: 10}\n")
    #expect(Set(cnn.map(\.keyPath)) == ["model.inputs", "model.input_shape"])
  }

  @Test func missingRequiredKeysAreNamed() {
    let issues = planIssues("model: {kind: mlp, inputs: 10, classes: 2}\n")
    #expect(Set(issues.map(\.keyPath)) == ["name", "model.hidden"])
  }

  @Test func featuresNotBuiltYetAreRefusedNotIgnored() {
    let issues = planIssues(minimal + "compression: {kind: qsgd}\nprivacy: {kind: dp_fedavg}\n")
    #expect(Set(issues.map(\.keyPath)) == ["compression.kind", "privacy.kind"])
  }

  @Test func everyIssueIsReportedInOnePass() {
    let issues = planIssues(
      "name: p\nmodel: {kind: mlp, inputs: 0, hidden: [], classes: 1}\nextra: 1\ndevice: {batch_size: -1}\n")
    #expect(issues.count >= 5, "\(issues)")
  }

  @Test func malformedYAMLAndMissingFileAreReported() {
    #expect(planIssues("name: [unclosed\n").first?.message.contains("not valid YAML") == true)
    #expect(planIssues("").first?.message.contains("empty") == true)
    do {
      _ = try Plan.load(path: "/nonexistent/plan.yaml")
      Issue.record("loading a missing file succeeded")
    } catch {
      #expect(error.description.contains("/nonexistent/plan.yaml"))
      #expect(error.description.contains("does not exist"))
    }
  }

  @Test func cohortSamplingRetryBoundAndAttemptsAreReadAndChecked() throws {
    let plan = try Plan.parse(
      yaml: minimal
        + "server: {rounds: 5, max_attempts: 9, cohort: {sampling: check_in}, windows: {max_retry: 10m}}\n",
      file: "p.yaml")
    #expect(plan.server.cohort.sampling == .checkIn && plan.server.attemptBudget == 9)
    #expect(plan.server.windows.retryBound == 600)
    // Absent keys keep the plan's SHA-256 as before they existed, and take their defaults.
    let bare = try Plan.parse(yaml: minimal + "server: {rounds: 5}\n", file: "p.yaml")
    #expect(bare.server.cohort.sampling == nil && bare.server.attemptBudget == 15)
    #expect(!String(decoding: bare.canonicalJSON, as: UTF8.self).contains("sampling"))
    let tooFew = planIssues(minimal + "server: {rounds: 5, max_attempts: 4}\n")
    #expect(tooFew.map(\.keyPath) == ["server.max_attempts"], "\(tooFew)")
    #expect(
      planIssues(minimal + "server: {cohort: {sampling: random}}\n").map(\.keyPath) == [
        "server.cohort.sampling"
      ])
    #expect(
      planIssues(minimal + "server: {windows: {max_retry: 0s}}\n").map(\.keyPath) == [
        "server.windows.max_retry"
      ])
  }

  @Test func reportBoundsAreReadAndChecked() throws {
    let plan = try Plan.parse(
      yaml: minimal + "server: {reports: {max_examples: 5000, max_update_norm: 2.5, over_norm: clip}}\n",
      file: "p.yaml")
    #expect(
      plan.server.reports == ReportsPlan(maximumExamples: 5000, maximumUpdateNorm: 2.5, overNorm: .clip))
    let bare = try Plan.parse(yaml: minimal, file: "p.yaml")
    #expect(
      bare.server.reports == nil && !String(decoding: bare.canonicalJSON, as: UTF8.self).contains("reports"))
    #expect(
      planIssues(minimal + "server: {reports: {max_examples: 0}}\n").map(\.keyPath) == [
        "server.reports.max_examples"
      ])
    #expect(
      planIssues(minimal + "server: {reports: {over_norm: clip}}\n").map(\.keyPath) == [
        "server.reports.over_norm"
      ])
    // The server never sees an update under secure aggregation, so it cannot bound its norm.
    let secure = planIssues(
      minimal + "server: {reports: {max_update_norm: 1}}\nsecure_aggregation: {enabled: true}\n")
    #expect(secure.map(\.keyPath).contains("server.reports.max_update_norm"), "\(secure)")
  }

  @Test func aModelBeyondTheParameterLimitIsRefused() {
    let issues = planIssues("name: p\nmodel: {kind: mlp, inputs: 10000000, hidden: [2000], classes: 10}\n")
    #expect(issues.map(\.keyPath) == ["model"], "\(issues)")
    #expect(issues.first?.message.contains("the limit is 100000000") == true)
  }
}
