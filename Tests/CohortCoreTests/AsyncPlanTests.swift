import CohortCore
import Foundation
import Testing

@Suite struct AsyncPlanTests {
  let minimal = "name: p\nmodel: {kind: logistic_regression, inputs: 60, classes: 10}\n"

  func issues(_ server: String, _ rest: String = "") -> [ConfigurationIssue] {
    planIssues(minimal + "server:\n" + server + rest)
  }

  @Test func readsEveryKey() throws {
    let plan = try Plan.parse(
      yaml: minimal + """
        server:
          mode: async
          async:
            concurrency: 500
            buffer: 20
            staleness: {kind: hinge, a: 5, b: 3}
            max_staleness: 40
            server_learning_rate: 0.5
        """, file: "p.yaml")
    #expect(plan.server.mode == .async)
    #expect(
      plan.server.asynchronous
        == AsyncPlan(
          concurrency: 500, buffer: 20, staleness: .hinge(a: 5, b: 3), maximumStaleness: 40,
          serverLearningRate: 0.5))
    #expect(plan.server.asynchronous?.stepSize == 0.5)
    let constant = try Plan.parse(
      yaml: minimal + "server: {mode: async, async: {staleness: {kind: constant}}}\n", file: "p.yaml")
    #expect(constant.server.asynchronous?.staleness == .constant)
  }

  @Test func asyncModeAloneTakesFedBuffsDefaults() throws {
    let plan = try Plan.parse(yaml: minimal + "server: {mode: async}\n", file: "p.yaml")
    let async = try #require(plan.server.asynchronous)
    #expect(async == AsyncPlan())
    #expect(async.concurrency == 100 && async.buffer == 10 && async.maximumStaleness == 100)
    #expect(async.staleness == .polynomial(a: 0.5) && async.stepSize == 1)
    let sync = try Plan.parse(yaml: minimal + "server: {mode: sync}\n", file: "p.yaml")
    #expect(sync.server.mode == .sync && sync.server.asynchronous == nil)
  }

  @Test func badValuesAndMisplacedKeysAreNamed() {
    #expect(issues("  async: {buffer: 5}\n").map(\.keyPath) == ["server.async"])
    #expect(issues("  async: {buffer: 5}\n").first?.message.contains("server.mode: async") == true)
    #expect(issues("  mode: sometimes\n").map(\.keyPath) == ["server.mode"])
    // A mistyped mode is reported once, not again as a misplaced server.async.
    #expect(issues("  mode: asnyc\n  async: {buffer: 5}\n").map(\.keyPath) == ["server.mode"])
    #expect(issues("  mode: async\n  async: {bufer: 5}\n").map(\.keyPath) == ["server.async.bufer"])
    let ranges = issues(
      "  mode: async\n  async: {concurrency: 0, buffer: 0, max_staleness: -1, server_learning_rate: 0}\n")
    #expect(
      Set(ranges.map(\.keyPath)) == [
        "server.async.concurrency", "server.async.buffer", "server.async.max_staleness",
        "server.async.server_learning_rate",
      ], "\(ranges)")
    #expect(
      issues("  mode: async\n  async: {staleness: {kind: constant, a: 1}}\n").map(\.keyPath) == [
        "server.async.staleness.a"
      ])
    #expect(
      issues("  mode: async\n  async: {staleness: {kind: polynomial, a: 1, b: 2}}\n").map(\.keyPath) == [
        "server.async.staleness.b"
      ])
    #expect(
      issues("  mode: async\n  async: {staleness: {kind: hinge, a: 0}}\n").map(\.keyPath) == [
        "server.async.staleness.a"
      ])
    #expect(
      issues("  mode: async\n  async: {staleness: {kind: exponential}}\n").map(\.keyPath) == [
        "server.async.staleness.kind"
      ])
  }

  @Test func strategiesThatNeedAWholeRoundAreRefusedWithTheReason() {
    let refused: [(String, String)] = [
      ("fedmedian", "every update of a round"), ("fedtrimmedavg", "every update of a round"),
      ("krum", "every update of a round"), ("multikrum", "every update of a round"),
      ("bulyan", "every update of a round"), ("qfedavg", "losses"), ("scaffold", "control variate"),
    ]
    for (kind, why) in refused {
      let found = issues("  mode: async\n  strategy: {kind: \(kind)}\n")
      #expect(found.map(\.keyPath) == ["server.strategy.kind"], "\(kind): \(found)")
      let message = found.first?.message ?? ""
      #expect(
        message.contains("\(kind) cannot run with server.mode: async") && message.contains(why), "\(message)")
      #expect(message.contains("fedadam") && message.contains("server.mode: sync"))
    }
    for kind in ["fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi"] {
      #expect(issues("  mode: async\n  strategy: {kind: \(kind)}\n").isEmpty, "\(kind)")
    }
    // Synchronous plans keep every strategy.
    #expect(issues("  strategy: {kind: krum}\n").isEmpty)
  }

  @Test func aSecondServerRateAndACohortAreRefused() {
    let twice = issues("  mode: async\n  async: {server_learning_rate: 0.1}\n  strategy: {kind: fedadam}\n")
    #expect(twice.map(\.keyPath) == ["server.async.server_learning_rate"], "\(twice)")
    #expect(
      issues("  mode: async\n  async: {server_learning_rate: 0.1}\n  strategy: {kind: fedprox}\n").isEmpty)
    let cohort = issues("  mode: async\n  cohort: {goal: 10}\n")
    #expect(
      cohort.map(\.keyPath) == ["server.cohort"] && cohort.first?.message.contains("concurrency") == true)
  }

  @Test func secureAggregationIsRefusedInAsyncModeWithTheReason() {
    let secure = issues("  mode: async\n  async: {buffer: 10}\n", "secure_aggregation: {enabled: true}\n")
    #expect(secure.map(\.keyPath) == ["secure_aggregation.enabled"], "\(secure)")
    #expect(secure.first?.message.contains("staleness weight") == true)
    #expect(issues("  mode: async\n  async: {buffer: 1}\n", "secure_aggregation: {enabled: false}\n").isEmpty)
  }

  @Test func centralDPIsAllowedDistributedDPAndATargetEpsilonAreNot() {
    #expect(
      issues("  mode: async\n", "privacy: {kind: central_gaussian, clip: 1, noise_multiplier: 1}\n").isEmpty)
    let distributed = issues(
      "  mode: async\n",
      "secure_aggregation: {enabled: true}\nprivacy: {kind: distributed_discrete_gaussian}\n")
    #expect(distributed.map(\.keyPath).contains("privacy.kind"), "\(distributed)")
    let target = issues("  mode: async\n", "privacy: {kind: central_gaussian, target_epsilon: 5}\n")
    #expect(target.map(\.keyPath) == ["privacy.target_epsilon"], "\(target)")
    #expect(target.first?.message.contains("no ε is reported") == true)
    // Adaptive clipping's count noise defaults to the buffer / 20 (here 100 / 20 = 5).
    let adaptive = try? Plan.parse(
      yaml: minimal
        + "server: {mode: async, async: {buffer: 100}}\nprivacy: {kind: central_gaussian, adaptive_clipping: {}}\n",
      file: "p.yaml")
    #expect(adaptive?.privacy.adaptiveClipping?.countNoiseMultiplier == 5)
  }

  @Test func roundTripsThroughJSON() throws {
    for staleness in [StalenessPlan.constant, .polynomial(a: 0.25), .hinge(a: 3, b: 2)] {
      var plan = try Plan.parse(yaml: minimal, file: "p.yaml")
      plan.server.asynchronous = AsyncPlan(
        concurrency: 7, buffer: 3, staleness: staleness, maximumStaleness: 4, serverLearningRate: 0.3)
      let decoded = try JSONDecoder().decode(Plan.self, from: plan.canonicalJSON)
      #expect(decoded == plan && decoded.canonicalJSON == plan.canonicalJSON)
    }
    let hinge = try Plan.parse(
      yaml: minimal + "server: {mode: async, async: {staleness: {kind: hinge}}}\n", file: "p.yaml")
    let json = String(decoding: hinge.canonicalJSON, as: UTF8.self)
    #expect(
      json.contains(
        #""asynchronous":{"buffer":10,"concurrency":100,"maximumStaleness":100,"staleness":{"a":10,"b":4,"kind":"hinge"}}"#
      ), "\(json)")
  }

  /// The canonical JSON and SHA-256 of this plan as stored by `cohort simulate` before the async
  /// keys existed: a plan without them (or with `mode: sync`) is byte for byte what it was.
  @Test func aPlanWithoutTheNewKeysKeepsItsJSONAndSHA256() throws {
    let yaml = """
      name: pin
      model: {kind: logistic_regression, inputs: 60, classes: 10}
      device: {epochs: 1, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
      server:
        rounds: 1
        cohort: {goal: 5, over_selection: 1.3, minimum_fraction: 0.8}
        strategy: {kind: fedadam}
      privacy: {kind: central_gaussian, clip: 1.0, noise_multiplier: 0.5}

      """
    let stored =
      #"{"compression":{"kind":"none"},"device":{"batchSize":10,"epochs":1,"optimizer":{"kind":"sgd","learningRate":0.05,"momentum":0,"weightDecay":0},"proximalMu":0},"model":{"classes":10,"hidden":[],"inputShape":[60],"kind":"logistic_regression"},"name":"pin","privacy":{"clip":1,"delta":1e-05,"kind":"central_gaussian","noiseMultiplier":0.5},"secureAggregation":{"enabled":false},"server":{"cohort":{"goal":5,"minimumFraction":0.8,"overSelection":1.3},"evaluation":{"every":1},"rounds":1,"strategy":{"beta1":0.9,"beta2":0.99,"kind":"fedadam","serverLearningRate":0.01,"tau":0.001},"windows":{"reporting":300,"selection":60}}}"#
    let sha = "b60f5c09c2807e02f086b220466b81d1cef5948530ff8a254687839622496e5c"
    let plan = try Plan.parse(yaml: yaml, file: "pin.yaml")
    #expect(String(decoding: plan.canonicalJSON, as: UTF8.self) == stored)
    #expect(plan.sha256 == sha)
    let explicit = try Plan.parse(
      yaml: yaml.replacingOccurrences(of: "  rounds: 1\n", with: "  rounds: 1\n  mode: sync\n"),
      file: "pin.yaml")
    #expect(explicit.sha256 == sha)
    // Stored plans decode with synchronous mode.
    let decoded = try JSONDecoder().decode(Plan.self, from: Data(stored.utf8))
    #expect(decoded.server.mode == .sync && decoded.sha256 == sha)
  }
}
