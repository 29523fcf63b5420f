import CohortCore
import CohortML
import CohortSimulator
import CohortTesting
import Foundation
import Testing

/// Devices of CSV and LEAF data evaluate the model they receive on their own test examples, so
/// the federated evaluation columns of the results database are filled, as for synthetic data.
@Suite struct FederatedEvaluationTests {
  /// Six users, three classes, three features; the label is the largest feature, so the model
  /// can learn it. `perUser` examples each, drawn from `purpose`.
  static func examples(perUser: Int, purpose: String) -> [(user: String, x: [Float], y: Int)] {
    var rng = RandomStream(seed: 11, purpose: purpose)
    var rows: [(user: String, x: [Float], y: Int)] = []
    for u in 0..<6 {
      for _ in 0..<perUser {
        let x = (0..<3).map { _ in Float(rng.uniform()) }
        let y = x.indices.max { x[$0] < x[$1] } ?? 0
        rows.append(("user\(u)", x, y))
      }
    }
    return rows
  }

  static func csv(_ rows: [(user: String, x: [Float], y: Int)], clientColumn: Bool) -> String {
    var text = clientColumn ? "user,label,a,b,c\n" : "label,a,b,c\n"
    for r in rows {
      text +=
        (clientColumn ? "\(r.user)," : "") + "\(r.y)," + r.x.map { "\($0)" }.joined(separator: ",") + "\n"
    }
    return text
  }

  static func leaf(_ rows: [(user: String, x: [Float], y: Int)]) -> String {
    let users = Array(Set(rows.map(\.user))).sorted()
    let data = users.map { u -> String in
      let mine = rows.filter { $0.user == u }
      let xs = mine.map { "[" + $0.x.map { "\($0)" }.joined(separator: ", ") + "]" }.joined(separator: ", ")
      let ys = mine.map { "\($0.y)" }.joined(separator: ", ")
      return "\"\(u)\": {\"x\": [\(xs)], \"y\": [\(ys)]}"
    }
    return "{\"users\": [" + users.map { "\"\($0)\"" }.joined(separator: ", ") + "], \"user_data\": {"
      + data.joined(separator: ", ") + "}}"
  }

  static func scenario(_ data: String, in dir: TemporaryDirectory) throws -> Scenario {
    let yaml = """
      plan:
        name: own-tests
        model: {kind: logistic_regression, inputs: 3, classes: 3}
        device: {epochs: 1, batch_size: 5, optimizer: {kind: sgd, learning_rate: 0.5}}
        server: {rounds: 3, cohort: {goal: 4, over_selection: 1.0, minimum_fraction: 1.0}}
      data: \(data)
      partition: {kind: natural}
      devices: {check_in_interval: 1m}
      seed: 5
      """
    return try Scenario.load(path: dir.write("scenario.yaml", yaml))
  }

  static func expectFederatedEvaluation(_ scenario: Scenario, perUser: Int) async throws {
    let (summary, rounds) = try await simulate(scenario)
    #expect(summary.roundsCommitted == 3)
    for r in rounds {
      let note: Comment = "round \(r.round): \(r)"
      #expect(r.outcome == .committed, note)
      // Four devices evaluated, each on its own test examples.
      #expect(r.federatedEvalExamples == 4 * perUser, note)
      #expect(r.federatedEvalLoss.map { $0.isFinite && $0 > 0 } == true, note)
      #expect(r.federatedEvalAccuracy.map { (0...1).contains($0) } == true, note)
      #expect(r.evalAccuracy != nil, note)
    }
  }

  @Test func csvTestFileWithTheClientColumn() async throws {
    let dir = TemporaryDirectory()
    dir.write("train.csv", Self.csv(Self.examples(perUser: 20, purpose: "train"), clientColumn: true))
    dir.write("test.csv", Self.csv(Self.examples(perUser: 5, purpose: "test"), clientColumn: true))
    let scenario = try Self.scenario(
      "{kind: csv, path: train.csv, client_column: user, test_path: test.csv}", in: dir)
    let data = try FederatedData.load(scenario)
    #expect(data.deviceTests?.map(\.count) == [5, 5, 5, 5, 5, 5])
    try await Self.expectFederatedEvaluation(scenario, perUser: 5)
  }

  @Test func csvTestFileWithoutTheClientColumnIsCentralOnly() async throws {
    let dir = TemporaryDirectory()
    dir.write("train.csv", Self.csv(Self.examples(perUser: 20, purpose: "train"), clientColumn: true))
    dir.write("test.csv", Self.csv(Self.examples(perUser: 5, purpose: "test"), clientColumn: false))
    let scenario = try Self.scenario(
      "{kind: csv, path: train.csv, client_column: user, test_path: test.csv}", in: dir)
    #expect(try FederatedData.load(scenario).deviceTests == nil)
    let (_, rounds) = try await simulate(scenario)
    #expect(rounds.allSatisfy { $0.federatedEvalExamples == nil && $0.evalAccuracy != nil })
  }

  @Test func leafUsersTestSplit() async throws {
    let dir = TemporaryDirectory()
    dir.write("train.json", Self.leaf(Self.examples(perUser: 20, purpose: "train")))
    // The test file lists users in another order, and one user the training file lacks.
    var test = Self.examples(perUser: 5, purpose: "test").reversed().map { $0 }
    test.append(("stranger", [0.1, 0.2, 0.9], 2))
    dir.write("test.json", Self.leaf(test))
    let scenario = try Self.scenario("{kind: leaf, train: train.json, test: test.json}", in: dir)
    let data = try FederatedData.load(scenario)
    #expect(data.test.count == 31)
    // Device k's own test examples are the test examples of the user it is.
    let tests = try #require(data.deviceTests)
    let names = try #require(data.train.clientNames)
    let testNames = try #require(data.test.clientNames)
    let testOwners = try #require(data.test.clients)
    #expect(tests.map(\.count) == [5, 5, 5, 5, 5, 5])
    for (k, indices) in tests.enumerated() {
      #expect(indices.allSatisfy { testNames[Int(testOwners[$0])] == names[k] }, "device \(k)")
    }
    try await Self.expectFederatedEvaluation(scenario, perUser: 5)
  }

  @Test func leafTestFractionKeepsUsers() throws {
    let dir = TemporaryDirectory()
    dir.write("train.json", Self.leaf(Self.examples(perUser: 20, purpose: "train")))
    let scenario = try Self.scenario("{kind: leaf, train: train.json, test_fraction: 0.25}", in: dir)
    let data = try FederatedData.load(scenario)
    let tests = try #require(data.deviceTests)
    #expect(tests.map(\.count).reduce(0, +) == data.test.count && data.test.count == 30)
  }
}
