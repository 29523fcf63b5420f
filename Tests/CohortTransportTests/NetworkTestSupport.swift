import CohortCore
import CohortDevice
import CohortProtocol
import CohortServer
import CohortServing
import CohortSimulator
import CohortStore
import Foundation
import Logging
import Testing

@testable import CohortTransport

/// A small federation both the simulator and the network run: `devices` devices, all of them
/// in every round (target = population, minimum = all), windows long enough that no round is
/// abandoned in either, so the two must end at the same checkpoint.
/// - Parameters:
///   - strategy: the plan's `server.strategy`.
///   - planKeys: further plan sections (`compression: …`, `privacy: …`), one per line.
///   - active: secure aggregation's active variant (signed keys, consistency check).
func networkScenario(
  devices: Int = 20, rounds: Int = 3, secure: Bool = false, active: Bool = false, seed: UInt64 = 7,
  strategy: String = "{kind: fedavg}",
  planKeys: [String] = []
) throws -> Scenario {
  let yaml = """
    plan:
      name: network-e2e\(secure ? "-secagg" : "")
      model: {kind: logistic_regression, inputs: 60, classes: 10}
      device: {epochs: 1, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
      server:
        rounds: \(rounds)
        cohort: {goal: \(devices), over_selection: 1.0, minimum_fraction: 1.0}
        windows: {selection: 1h, reporting: 1h}
        strategy: \(strategy)
        evaluation: {every: 1}
      secure_aggregation: {enabled: \(secure || active)\(active ? ", variant: active" : "")}
    \(planKeys.map { "  " + $0 + "\n" }.joined())data: {kind: synthetic_fedprox, alpha: 0, beta: 0, iid: true, devices: \(devices)}
    partition: {kind: natural}
    devices:
      count: \(devices)
      compute: {kind: constant, value: 100}
      availability: {kind: always}
      check_in_interval: 2m
      dropout: 0
    seed: \(seed)
    """
  return try Scenario.parse(yaml: yaml, file: "/tmp/cohort-network-test/scenario.yaml")
}

/// A fresh directory for one test's files.
func temporaryDirectory(_ name: String) throws -> String {
  let path = NSTemporaryDirectory() + "cohort-\(name)-\(UUID().uuidString)"
  try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  return path
}

/// The simulator's final checkpoint for `scenario`.
func simulatedCheckpoint(_ scenario: Scenario, directory: String) async throws -> String {
  try await simulated(scenario, directory: directory).checkpointSHA256
}

/// The simulator's summary of `scenario`, every round committed.
func simulated(_ scenario: Scenario, directory: String) async throws -> SimulationSummary {
  let store = try ResultsStore(path: directory + "/simulation.sqlite")
  let run = try store.createRun(name: "simulation", scenario: scenario, createdAt: Date())
  var options = SimulationOptions()
  options.parallelism = 2
  let simulation = try Simulation(
    scenario: scenario, store: store, run: run, options: options, logger: Logger(label: "test-sim"))
  let summary = try await simulation.run()
  // Every round must commit with the whole population, or the comparison means nothing.
  #expect(
    summary.roundsCommitted == scenario.plan.server.rounds, "seed \(scenario.seed): the simulator's rounds")
  return summary
}

/// Runs `body` with the server serving on an OS-chosen loopback port; fails instead of hanging
/// when the federation does not finish within `limit` seconds.
func withServer<T: Sendable>(
  _ server: FederationServer, limit: Double = 120,
  _ body: @escaping @Sendable (Int) async throws -> T
) async throws -> T {
  let (ports, portSink) = AsyncStream.makeStream(of: Int.self)
  return try await withThrowingTaskGroup(of: T?.self) { group in
    group.addTask {
      try await server.run { port in
        portSink.yield(port)
        portSink.finish()
      }
      portSink.finish()
      return nil
    }
    var iterator = ports.makeAsyncIterator()
    guard let port = await iterator.next() else {
      throw CohortError(.io, "the server did not start listening")
    }
    group.addTask { try await body(port) }
    group.addTask {
      try? await Task.sleep(for: .seconds(limit))
      if Task.isCancelled { return nil }
      server.shutdown()
      throw CohortError(.io, "the federation did not finish within \(limit) s")
    }
    var result: T?
    var finished = 0
    while let value = try await group.next() {
      finished += 1
      if let value { result = value }
      // The server's run and the body both ended: stop the watchdog.
      if finished == 2 { group.cancelAll() }
    }
    return result!
  }
}

/// A device runtime of `scenario` for `device`, training on its part of `data` and backing off
/// briefly between attempts, as the network tests' devices do.
func testDevice(
  _ device: Int, of scenario: Scenario, data: DeviceDataProvider, over channel: any ParticipationChannel,
  observe: @escaping @Sendable (ParticipationResult, Double, Double) -> Void = { _, _, _ in }
) -> DeviceRuntime {
  let local = data.data(device: device)
  return DeviceRuntime(
    configuration: .init(device: device, seed: scenario.seed, initialBackoff: 0.05, maximumBackoff: 0.5),
    connection: channel,
    examples: { LocalExamples(train: local.train, indices: local.trainIndices, test: local.test) },
    observe: observe, logger: Logger(label: "test-device-\(device)"))
}
