import CohortCore
import CohortTesting
import Foundation
import Testing

/// A scenario with its plan in its own file, as the shipped ones are.
private func writeScenario(_ dir: TemporaryDirectory) -> String {
  dir.write(
    "plans/p.yaml",
    """
    name: p
    model: {kind: logistic_regression, inputs: 60, classes: 10}
    device: {epochs: 1, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
    server: {rounds: 7, cohort: {goal: 10}, strategy: {kind: fedavg}}
    """)
  return dir.write(
    "sims/s.yaml",
    """
    plan: ../plans/p.yaml
    data: {kind: synthetic_fedprox, alpha: 0, beta: 0, devices: 50}
    partition: {kind: iid}
    devices: {count: 50}
    seed: 9
    """)
}

private func issues(_ body: () throws -> Void) -> [ConfigurationIssue] {
  do {
    try body()
    return []
  } catch let error as ConfigurationError {
    return error.issues
  } catch {
    Issue.record("expected a ConfigurationError, got \(error)")
    return []
  }
}

@Suite struct ExperimentTests {
  @Test func variantsFromFlags() throws {
    let v = try Experiment.Variant.parse("fedadam:server.strategy.kind=fedadam, device.epochs=2").get()
    #expect(v.label == "fedadam")
    #expect(
      v.overrides == [
        .init(key: "server.strategy.kind", yaml: "fedadam"), .init(key: "device.epochs", yaml: "2"),
      ])
    // A flow mapping keeps its commas.
    let section = try Experiment.Variant.parse("q8:compression={kind: quantize, bits: 8}").get()
    #expect(section.overrides == [.init(key: "compression", yaml: "{kind: quantize, bits: 8}")])
    #expect(try Experiment.Variant.parse("baseline").get().overrides.isEmpty)
    for bad in ["", ":a=1", "x:a", "x:=1", "x:a="] {
      #expect(throws: ConfigurationError.self, "\(bad)") { try Experiment.Variant.parse(bad).get() }
    }
    #expect(Experiment.Seeds.parse("3") == .count(3))
    #expect(Experiment.Seeds.parse("1,2,5") == .list([1, 2, 5]))
    #expect(Experiment.Seeds.parse("4-6") == .list([4, 5, 6]))
    #expect(Experiment.Seeds.parse("0") == nil && Experiment.Seeds.parse("x") == nil)
    #expect(Experiment.Seeds.count(3).seeds(base: 9) == [9, 10, 11])
  }

  @Test func aPlansInitialWeightsStayRelativeToThePlanFileUnderAVariant() throws {
    let dir = TemporaryDirectory()
    let weights = try Data(
      contentsOf: repositoryRoot.appendingPathComponent("Tests/Fixtures/initial-weights/initial.safetensors"))
    let copy = dir.write("plans/initial.safetensors", Array(weights))
    _ = dir.write(
      "plans/p.yaml",
      """
      name: p
      model: {kind: mlp, inputs: 60, hidden: [4], classes: 10, initial: initial.safetensors}
      server: {rounds: 7, cohort: {goal: 10}, strategy: {kind: fedavg}}
      """)
    let path = dir.write(
      "sims/s.yaml",
      """
      plan: ../plans/p.yaml
      data: {kind: synthetic_fedprox, alpha: 0, beta: 0, devices: 50}
      partition: {kind: iid}
      devices: {count: 50}
      """)
    let s = try Scenario.load(
      path: path, variant: .init(label: "lr/2", overrides: [.init(key: "device.epochs", yaml: "2")]))
    #expect(s.plan.model.initial == URL(fileURLWithPath: copy).standardizedFileURL.path)
    #expect(s.plan.device.epochs == 2)
  }

  @Test func overridesReachThePlanBeforeValidation() throws {
    let dir = TemporaryDirectory()
    let path = writeScenario(dir)
    let variant = Experiment.Variant(
      label: "adam2",
      overrides: [
        .init(key: "server.strategy", yaml: "{kind: fedadam, server_learning_rate: 0.05}"),
        .init(key: "device.epochs", yaml: "2"), .init(key: "plan.server.rounds", yaml: "3"),
        .init(key: "scenario.partition.kind", yaml: "natural"),
      ])
    let s = try Scenario.load(path: path, variant: variant)
    #expect(s.plan.device.epochs == 2 && s.plan.server.rounds == 3)
    #expect(s.plan.server.strategy.kind == .fedadam)
    #expect(s.partition == .natural)
    #expect(s.seed == 9)
    // The data path resolution and the rest are untouched.
    let plain = try Scenario.load(path: path, variant: .init(label: "as written"))
    #expect(plain.plan == (try Scenario.load(path: path)).plan)
  }

  @Test func badOverridesNameTheVariantAndTheKey() throws {
    let dir = TemporaryDirectory()
    let path = writeScenario(dir)
    let unknown = issues {
      _ = try Scenario.load(
        path: path, variant: .init(label: "typo", overrides: [.init(key: "device.epoch", yaml: "2")]))
    }
    #expect(unknown.count == 1)
    #expect(unknown.first?.file.contains("with variant typo") == true)
    #expect(unknown.first?.keyPath.contains("device.epoch") == true, "\(unknown)")
    let range = issues {
      _ = try Scenario.load(
        path: path, variant: .init(label: "big", overrides: [.init(key: "device.epochs", yaml: "-3")]))
    }
    #expect(
      range.first.map { $0.keyPath.hasSuffix("device.epochs") && $0.file.contains("variant big") } == true)
    let through = issues {
      _ = try Scenario.load(
        path: path, variant: .init(label: "deep", overrides: [.init(key: "device.epochs.count", yaml: "2")]))
    }
    #expect(
      through.first.map { $0.keyPath == "device.epochs.count" && $0.file.contains("variant deep") } == true)
  }

  @Test func experimentFile() throws {
    let dir = TemporaryDirectory()
    _ = writeScenario(dir)
    let path = dir.write(
      "exp/e.yaml",
      """
      name: two-ways
      scenarios: [../sims/s.yaml]
      variants:
        - label: fedavg
        - label: adam
          set: {server.strategy: {kind: fedadam}, device.epochs: 2}
      seeds: [1, 2]
      rounds: 4
      target: 0.5
      """)
    let e = try Experiment.load(path: path)
    #expect(e.name == "two-ways" && e.seeds == .list([1, 2]) && e.rounds == 4 && e.target == 0.5)
    #expect(e.scenarios == [dir.file("sims/s.yaml")])
    #expect(e.variants.map(\.label) == ["fedavg", "adam"])
    #expect(e.variants[1].overrides.map(\.key) == ["server.strategy", "device.epochs"])
    let s = try Scenario.load(path: e.scenarios[0], variant: e.variants[1])
    #expect(s.plan.server.strategy.kind == .fedadam && s.plan.device.epochs == 2)

    let bad = issues {
      _ = try Experiment.parse(
        yaml: "scenarios: []\nvariants: [{label: a}, {label: a}, {lable: b}]\nseeds: 0\n", file: "bad.yaml")
    }
    let text = bad.map { $0.description }.joined(separator: "\n")
    #expect(text.contains("scenarios") && text.contains("at least one scenario"), "\(text)")
    #expect(text.contains("already has this label"), "\(text)")
    #expect(text.contains("lable") && text.contains("did you mean label"), "\(text)")
    #expect(text.contains("seeds"), "\(text)")
  }
}
