import CohortCore
import CohortTesting
import Foundation
import Testing

/// `model.init`, `model.initial`, `device.optimizer` kinds and learning-rate schedules.
@Suite struct ModelAndOptimizerPlanTests {
  let fixtures = repositoryRoot.appendingPathComponent("Tests/Fixtures/initial-weights")

  func plan(model: String = "{kind: logistic_regression, inputs: 60, classes: 10}", _ rest: String = "")
    throws
    -> Plan
  {
    try Plan.parse(yaml: "name: p\nmodel: \(model)\n" + rest, file: "test.yaml")
  }

  func issues(
    model: String = "{kind: logistic_regression, inputs: 60, classes: 10}", _ rest: String = "",
    file: String = "test.yaml"
  )
    -> [ConfigurationIssue]
  {
    do throws(ConfigurationError) {
      _ = try Plan.parse(yaml: "name: p\nmodel: \(model)\n" + rest, file: file)
      return []
    } catch { return error.issues }
  }

  func optimizer(_ yaml: String, server: String = "") throws -> OptimizerPlan {
    try plan("device: {optimizer: \(yaml)}\n" + server).device.optimizer
  }

  @Test func theDefaultsAddNothingToThePlanJSON() throws {
    // Plans without the new keys keep their canonical JSON, so their SHA-256 and stored runs.
    let p = try plan(model: "{kind: mlp, inputs: 60, hidden: [4], classes: 10, init: auto}")
    let json = String(decoding: p.canonicalJSON, as: UTF8.self)
    for key in ["initialization", "initial", "beta1", "beta2", "epsilon", "schedule"] {
      #expect(!json.contains("\"\(key)\""), "\(key) in \(json)")
    }
    #expect(p.model.initialization == nil && p.device.optimizer.kind == .sgd)
    #expect(p.deviceJSON == p.canonicalJSON)
  }

  @Test func initReadsEachScheme() throws {
    for scheme in ModelPlan.Initialization.allCases {
      let p = try plan(
        model: "{kind: logistic_regression, inputs: 60, classes: 10, init: \(scheme.rawValue)}")
      #expect(p.model.initialization == scheme)
      let decoded = try JSONDecoder().decode(Plan.self, from: p.canonicalJSON)
      #expect(decoded == p)
    }
    let wrong = issues(model: "{kind: logistic_regression, inputs: 60, classes: 10, init: xavier}")
    #expect(wrong.map(\.keyPath) == ["model.init"])
  }

  @Test func initialResolvesAgainstThePlanFileAndLeavesTheDeviceJSON() throws {
    let planFile = fixtures.appendingPathComponent("plan.yaml").path
    let p = try Plan.parse(
      yaml:
        "name: p\nmodel: {kind: mlp, inputs: 60, hidden: [4], classes: 10, initial: initial.safetensors}\n",
      file: planFile)
    #expect(p.model.initial == fixtures.appendingPathComponent("initial.safetensors").path)
    #expect(String(decoding: p.canonicalJSON, as: UTF8.self).contains("initial.safetensors"))
    // Devices receive the model as the checkpoint: the path stays on the server.
    let device = try JSONDecoder().decode(Plan.self, from: p.deviceJSON)
    var expected = p
    expected.model.initial = nil
    #expect(device == expected)
    #expect(!String(decoding: p.deviceJSON, as: UTF8.self).contains("safetensors"))
  }

  @Test func initialIsRefusedWhenAbsentNotSafetensorsOrWithInit() {
    let missing = issues(
      model: "{kind: mlp, inputs: 60, hidden: [4], classes: 10, initial: nowhere.safetensors}",
      file: fixtures.appendingPathComponent("plan.yaml").path)
    #expect(missing.count == 1 && missing.first?.message.contains("does not exist") == true, "\(missing)")
    let npy = issues(model: "{kind: mlp, inputs: 60, hidden: [4], classes: 10, initial: w.npy}")
    #expect(npy.first?.message.contains(".safetensors") == true)
    let both = issues(
      model: "{kind: mlp, inputs: 60, hidden: [4], classes: 10, init: zeros, initial: initial.safetensors}",
      file: fixtures.appendingPathComponent("plan.yaml").path)
    #expect(both.map(\.keyPath) == ["model.init"], "\(both)")
  }

  @Test func adamHasTheUsualDefaultsAndRejectsSGDKeys() throws {
    let adam = try optimizer("{kind: adam}")
    #expect(adam == .adam())
    #expect(adam.learningRate == 0.001 && adam.beta1 == 0.9 && adam.beta2 == 0.999 && adam.epsilon == 1e-8)
    let set = try optimizer("{kind: adam, learning_rate: 0.01, beta1: 0.8, beta2: 0.99, epsilon: 1e-6}")
    #expect(set == .adam(learningRate: 0.01, beta1: 0.8, beta2: 0.99, epsilon: 1e-6))
    #expect(
      issues("device: {optimizer: {kind: adam, momentum: 0.9}}").map(\.keyPath) == [
        "device.optimizer.momentum"
      ])
    #expect(
      issues("device: {optimizer: {kind: sgd, beta1: 0.9}}").map(\.keyPath) == ["device.optimizer.beta1"])
    #expect(
      issues("device: {optimizer: {kind: adam, beta2: 1}}").map(\.keyPath) == ["device.optimizer.beta2"])
    #expect(
      issues("device: {optimizer: {kind: adam, epsilon: 0}}").map(\.keyPath) == ["device.optimizer.epsilon"])
    // SCAFFOLD's control variates assume plain SGD.
    let scaffold = issues("device: {optimizer: {kind: adam}}\nserver: {strategy: {kind: scaffold}}")
    #expect(scaffold.map(\.keyPath) == ["device.optimizer.kind"])
  }

  @Test func aRoundsOverrideCarriesAWholeRunCosineScheduleAlong() throws {
    // `--rounds 10` on a 40-round plan anneals over 10 rounds, as the plan written with 10 does.
    var overridden = try plan(
      "device: {optimizer: {learning_rate: 0.1, schedule: {kind: cosine}}}\nserver: {rounds: 40}")
    overridden.setRounds(10)
    let written = try plan(
      "device: {optimizer: {learning_rate: 0.1, schedule: {kind: cosine}}}\nserver: {rounds: 10}")
    #expect(overridden.device.optimizer.schedule == written.device.optimizer.schedule)
    #expect(overridden.server.rounds == 10)
    // A schedule with a length of its own keeps it.
    var own = try plan(
      "device: {optimizer: {learning_rate: 0.1, schedule: {kind: cosine, rounds: 7}}}\nserver: {rounds: 40}")
    own.setRounds(10)
    #expect(own.device.optimizer.schedule == .cosine(rounds: 7, minimumLearningRate: 0))
  }

  @Test func schedulesReadTheirKeysAndFillCosineRoundsFromTheServer() throws {
    let step = try optimizer(
      "{kind: sgd, learning_rate: 0.1, schedule: {kind: step, step_size: 2, gamma: 0.5}}")
    #expect(step.schedule == .step(stepSize: 2, gamma: 0.5))
    let cosine = try optimizer(
      "{learning_rate: 0.1, schedule: {kind: cosine}}", server: "server: {rounds: 40}")
    #expect(cosine.schedule == .cosine(rounds: 40, minimumLearningRate: 0))
    let given = try optimizer(
      "{learning_rate: 0.1, schedule: {kind: cosine, rounds: 7, min_learning_rate: 0.01}}")
    #expect(given.schedule == .cosine(rounds: 7, minimumLearningRate: 0.01))
    #expect(
      issues("device: {optimizer: {schedule: {kind: step}}}").map(\.keyPath) == [
        "device.optimizer.schedule.step_size"
      ])
    #expect(
      issues("device: {optimizer: {schedule: {kind: cosine, gamma: 0.5}}}").map(\.keyPath)
        == ["device.optimizer.schedule.gamma"])
    #expect(
      issues("device: {optimizer: {learning_rate: 0.1, schedule: {kind: cosine, min_learning_rate: 0.1}}}")
        .map(\.keyPath) == ["device.optimizer.schedule.min_learning_rate"])
    #expect(
      issues("device: {optimizer: {schedule: {kind: step, step_size: 3, gamma: 1.5}}}").map(\.keyPath)
        == ["device.optimizer.schedule.gamma"])
  }

  @Test func scheduleValuesAtKnownRounds() {
    let step = OptimizerPlan(learningRate: 0.1, schedule: .step(stepSize: 2, gamma: 0.5))
    #expect([1, 2, 3, 4, 5, 6].map { step.learningRate(round: $0) } == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    #expect(step.learningRate(round: 0) == 0.1)
    let cosine = OptimizerPlan(learningRate: 0.1, schedule: .cosine(rounds: 10, minimumLearningRate: 0))
    #expect(cosine.learningRate(round: 1) == 0.1)
    #expect(abs(cosine.learningRate(round: 6) - 0.05) < 1e-15)
    // cos(π/10) from the half-angle: (1 + cos 18°) / 2 · 0.1.
    #expect(abs(cosine.learningRate(round: 2) - 0.1 * (1 + 0.951_056_516_295_153_6) / 2) < 1e-15)
    #expect(cosine.learningRate(round: 11) == 0 && cosine.learningRate(round: 500) == 0)
    let floor = OptimizerPlan(learningRate: 0.1, schedule: .cosine(rounds: 4, minimumLearningRate: 0.02))
    #expect(abs(floor.learningRate(round: 3) - 0.06) < 1e-15 && floor.learningRate(round: 9) == 0.02)
    // No schedule: the base rate, exactly.
    #expect(OptimizerPlan(learningRate: 0.05).learningRate(round: 77) == 0.05)
  }

  @Test func optimizerAndScheduleRoundTripThroughThePlanJSON() throws {
    let p = try plan(
      "device: {optimizer: {kind: adam, learning_rate: 0.01, beta1: 0.8, weight_decay: 0.001, "
        + "schedule: {kind: step, step_size: 10, gamma: 0.9}}}\n")
    let json = String(decoding: p.deviceJSON, as: UTF8.self)
    for part in [
      "\"beta1\":0.8,\"beta2\":0.999,", "\"kind\":\"adam\",\"learningRate\":0.01,",
      "\"schedule\":{\"gamma\":0.9,\"kind\":\"step\",\"stepSize\":10},\"weightDecay\":0.001}",
    ] {
      #expect(json.contains(part), "\(part) in \(json)")
    }
    #expect(try JSONDecoder().decode(Plan.self, from: p.deviceJSON) == p)
    let cosine = try plan("device: {optimizer: {schedule: {kind: cosine, min_learning_rate: 0.001}}}\n")
    #expect(try JSONDecoder().decode(Plan.self, from: cosine.deviceJSON) == cosine)
    #expect(String(decoding: cosine.deviceJSON, as: UTF8.self).contains("\"minimumLearningRate\":0.001"))
  }
}
