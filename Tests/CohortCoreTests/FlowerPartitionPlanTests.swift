import CohortCore
import CohortTesting
import Foundation
import Testing

@Suite struct FlowerPartitionPlanTests {
  let base = "plan: plan.yaml\ndata: {kind: csv, path: d.csv}\ndevices: {count: 10}\n"

  @Test func newKindsAndTheirKeys() throws {
    func partition(_ yaml: String) throws -> PartitionPlan {
      try loadScenario(base + "partition: " + yaml).partition
    }
    #expect(
      try partition("{kind: pathological, classes_per_device: 2}") == .pathological(classesPerDevice: 2))
    #expect(
      try partition("{kind: inner_dirichlet, alpha: 0.5}") == .innerDirichlet(alpha: 0.5, sizes: .equal))
    #expect(
      try partition("{kind: inner_dirichlet, alpha: 0.5, sizes: square}")
        == .innerDirichlet(alpha: 0.5, sizes: .square))
    #expect(try partition("{kind: linear}") == .sized(.linear))
    #expect(try partition("{kind: square}") == .sized(.square))
    #expect(try partition("{kind: exponential}") == .sized(.exponential))
    #expect(
      try partition("{kind: dirichlet, alpha: 0.3, min_size: 10}")
        == .dirichlet(alpha: 0.3, minimum: .init(size: 10, onSmall: .redraw)))
    #expect(
      try partition("{kind: dirichlet, alpha: 0.3, min_size: 10, on_small: balance}")
        == .dirichlet(alpha: 0.3, minimum: .init(size: 10, onSmall: .balance)))
    // Without min_size, the partition is the one scenarios always had.
    #expect(try partition("{kind: dirichlet, alpha: 0.3}") == .dirichlet(alpha: 0.3))
  }

  @Test func mistakesNameTheFieldAndTheFix() {
    func issues(_ yaml: String) -> [ConfigurationIssue] { scenarioIssues(base + "partition: " + yaml) }
    let onSmall = issues("{kind: dirichlet, alpha: 0.3, on_small: balance}")
    #expect(onSmall.map(\.keyPath) == ["partition.on_small"])
    #expect(onSmall.first?.message.contains("min_size") == true)
    let badMode = issues("{kind: dirichlet, alpha: 0.3, min_size: 5, on_small: shuffle}")
    #expect(badMode.map(\.keyPath) == ["partition.on_small"], "\(badMode)")
    #expect(issues("{kind: dirichlet, alpha: 0.3, min_size: 0}").map(\.keyPath) == ["partition.min_size"])
    let missing = issues("{kind: pathological}")
    #expect(missing.map(\.keyPath) == ["partition.classes_per_device"])
    #expect(missing.first?.message.contains("classes_per_device: 2") == true)
    // More classes per device than the model has classes.
    let tooMany = issues("{kind: pathological, classes_per_device: 11}")
    #expect(tooMany.map(\.keyPath) == ["partition.classes_per_device"], "\(tooMany)")
    #expect(tooMany.first?.message.contains("at most 10") == true)
    #expect(issues("{kind: inner_dirichlet, alpha: 1, sizes: cubic}").map(\.keyPath) == ["partition.sizes"])
    #expect(issues("{kind: inner_dirichlet}").map(\.keyPath) == ["partition.alpha"])
    let stray = issues("{kind: linear, alpha: 1}")
    #expect(stray.map(\.keyPath) == ["partition.alpha"])
    #expect(stray.first?.message.contains("kind linear has no parameters") == true)
    let wrongKey = issues("{kind: pathological, classes_per_device: 2, min_size: 3}")
    #expect(wrongKey.map(\.keyPath) == ["partition.min_size"])
  }

  /// Stored scenarios (results databases) keep their JSON: a Dirichlet partition without a
  /// minimum encodes as it always did, and the older form still decodes.
  @Test func dirichletWithoutMinimumKeepsItsStoredForm() throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    let json = String(decoding: try encoder.encode(PartitionPlan.dirichlet(alpha: 0.5)), as: UTF8.self)
    #expect(json == #"{"dirichlet":{"alpha":0.5}}"#)
    let decoded = try JSONDecoder().decode(PartitionPlan.self, from: Data(json.utf8))
    #expect(decoded == .dirichlet(alpha: 0.5))
    let withMinimum = PartitionPlan.dirichlet(alpha: 0.5, minimum: .init(size: 3, onSmall: .balance))
    #expect(try JSONDecoder().decode(PartitionPlan.self, from: encoder.encode(withMinimum)) == withMinimum)
  }
}
