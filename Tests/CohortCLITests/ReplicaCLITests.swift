import CohortCore
import CohortDevice
import CohortProtocol
import CohortSimulator
import CohortStore
import CohortTesting
import CohortTransport
import Foundation
import Logging
import Testing

/// `cohort serve --replica`: three replicas (child processes) share one run through PostgreSQL
/// and thirty device runtimes spread over them.
@Suite(
  .serialized,
  .enabled(
    if: ProcessInfo.processInfo.environment["COHORT_TEST_POSTGRES_URL"] != nil
      || ProcessInfo.processInfo.environment["CI"] == "true",
    "COHORT_TEST_POSTGRES_URL is not set (scripts/test starts a throwaway cluster)"))
struct ReplicaCLITests {
  static let devices = 30
  static let rounds = 3
  static let seed: UInt64 = 7

  /// Waits for a line off the test's threads (the devices run on them meanwhile).
  func line(_ process: ChildProcess, containing text: String) async -> String? {
    await withCheckedContinuation { done in
      DispatchQueue.global().async { done.resume(returning: process.waitForLine(containing: text)) }
    }
  }

  /// The plan (a unique name per test, so runs in the shared database never mix) and the
  /// scenario whose data the devices train on.
  func scenario(
    name: String, rounds: Int = Self.rounds, minimum: Double = 1, selection: String = "1h",
    secure: Bool = false
  ) throws -> (
    plan: String, scenario: Scenario
  ) {
    let plan = """
      name: \(name)
      model: {kind: logistic_regression, inputs: 60, classes: 10}
      device: {epochs: 1, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
      server:
        rounds: \(rounds)
        cohort: {goal: \(Self.devices), over_selection: 1.0, minimum_fraction: \(minimum)}
        windows: {selection: \(selection), reporting: 1h}
        strategy: {kind: fedavg}
      secure_aggregation: {enabled: \(secure)}
      """
    let yaml = """
      plan:
      \(plan.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
      data: {kind: synthetic_fedprox, alpha: 0, beta: 0, iid: true, devices: \(Self.devices)}
      partition: {kind: natural}
      devices: {count: \(Self.devices), availability: {kind: always}, dropout: 0}
      seed: \(Self.seed)
      """
    return (plan, try Scenario.parse(yaml: yaml, file: "/tmp/cohort-replica-test/scenario.yaml"))
  }

  func start(_ dir: TemporaryDirectory, plan: String, db: String, replica: Bool) throws -> (ChildProcess, Int)
  {
    let server = try ChildProcess(
      [
        "serve", "--plan", plan, "--listen", "127.0.0.1:0", "--insecure", "--db", db, "--seed",
        "\(Self.seed)",
      ] + (replica ? ["--replica", "--lease-seconds", "3"] : []), in: dir.url)
    guard let listening = server.waitForLine(containing: "listening on"),
      let port = Int(listening.split(separator: ":").last ?? "")
    else {
      server.stop()
      throw CohortError(.io, "the server did not start: \(server.transcript)")
    }
    return (server, port)
  }

  /// Every device takes part in every round, device i first at server i mod n (the others after
  /// it, in order, should it fail).
  func runDevices(_ scenario: Scenario, ports: [Int], participations: Int = Self.rounds) async throws -> [Int]
  {
    let data = try DeviceDataProvider(scenario: scenario)
    return try await withThrowingTaskGroup(of: (Int, Int).self) { group in
      for device in 0..<Self.devices {
        let order = (0..<ports.count).map { ports[(device + $0) % ports.count] }
        let connections = try order.map {
          try FederationConnection(host: "127.0.0.1", port: $0, security: .insecure)
        }
        let channel = FailoverChannel(connections)
        let local = data.data(device: device)
        let runtime = DeviceRuntime(
          configuration: .init(
            device: device, seed: scenario.seed, initialBackoff: 0.05, maximumBackoff: 0.5),
          connection: channel,
          examples: { LocalExamples(train: local.train, indices: local.trainIndices, test: local.test) },
          logger: Logger(label: "test-device-\(device)"))
        group.addTask {
          await runtime.run(participations: participations)
          for c in connections { c.close() }
          return (device, ports.count > 1 ? (device + channel.currentServer) % ports.count : 0)
        }
      }
      var servedBy = [Int](repeating: 0, count: Self.devices)
      for try await (device, server) in group { servedBy[device] = server }
      return servedBy
    }
  }

  /// Rounds commit with the devices spread over three replicas, each round once, and every
  /// round's checkpoint equals a single server's for the same plan and seed: exactly under secure
  /// aggregation (each replica's ring sum adds in the ring, decoded once), and otherwise within
  /// floating-point reassociation: the replicas' partial sums are added in another order than one
  /// server adds thirty updates, which moves a Float32 weight by at most a few ulps (bound: 1e-6
  /// absolute on weights of magnitude below 1).
  @Test(arguments: [false, true]) func threeReplicasCommitTheSameModelAsOneServer(secure: Bool) async throws {
    let url = try #require(ProcessInfo.processInfo.environment["COHORT_TEST_POSTGRES_URL"])
    let dir = TemporaryDirectory()
    let name = "replicas-\(UUID())"
    let (planText, scenario) = try scenario(name: name, secure: secure)
    let plan = dir.write("plan.yaml", planText)

    var replicas: [(ChildProcess, Int)] = []
    defer { for (r, _) in replicas { r.stop() } }
    for _ in 0..<3 { replicas.append(try start(dir, plan: plan, db: url, replica: true)) }
    let servedBy = try await runDevices(scenario, ports: replicas.map(\.1))
    for (replica, _) in replicas {
      #expect(
        replica.waitForLine(containing: "run finished after round \(Self.rounds)") != nil,
        "\(replica.transcript)")
    }
    // Device i starts at replica i mod 3; a device may have moved on after a failed attempt.
    #expect((0..<3).allSatisfy { r in servedBy.filter { $0 == r }.count >= 5 }, "\(servedBy)")

    let store = try await PostgresStore(url: url)
    let run = try #require(try await store.runs().first { $0.planName == name })
    let rounds = try await store.rounds(run.id)
    let replicated = try #require(try await store.latestCheckpoint(run.id)).weights
    #expect(try await store.run(run.id).status == .finished)
    await store.close()
    #expect(rounds.map(\.round) == Array(1...Self.rounds), "\(rounds)")
    #expect(rounds.allSatisfy { $0.outcome == .committed && $0.reported == Self.devices }, "\(rounds)")

    // The same plan and seed on one server.
    let (single, port) = try start(dir, plan: plan, db: "single.sqlite", replica: false)
    defer { single.stop() }
    _ = try await runDevices(scenario, ports: [port])
    #expect(
      single.waitForLine(containing: "run finished after round \(Self.rounds)") != nil, "\(single.transcript)"
    )
    single.process.waitUntilExit()
    let file = try ResultsStore(path: dir.path + "/single.sqlite")
    let first = try #require(try file.runs().first)
    let alone = try #require(try file.latestCheckpoint(first.id)).weights
    #expect(alone.layout == replicated.layout)
    // Round by round, not only at the end: a round that missed an update would show here.
    let pg = try await PostgresStore(url: url)
    for round in 1...Self.rounds {
      let one = try file.checkpoint(first.id, round: round).weights
      let three = try #require(try await pg.checkpoint(run.id, through: round)).weights
      let largest =
        zip(one.values, three.values).map { (a: Float, b: Float) in abs(a - b) }.max() ?? .infinity
      #expect(
        secure ? largest == 0 : largest <= 1e-6,
        "round \(round): one server's model and the replicas' differ by up to \(largest)")
    }
    await pg.close()
  }

  /// The leader is killed (SIGKILL) once round 1 is committed, with round 2 under way: another
  /// replica takes the lease when it runs out and commits the remaining rounds, each round once
  /// and none skipped; the new leader's fencing token is larger (the old one's late commit would
  /// be refused: `PostgresFederationStoreTests`).
  @Test func anotherReplicaLeadsWhenTheLeaderIsKilled() async throws {
    let url = try #require(ProcessInfo.processInfo.environment["COHORT_TEST_POSTGRES_URL"])
    let dir = TemporaryDirectory()
    let name = "replicas-kill-\(UUID())"
    // Enough rounds that the run cannot have finished by the time the leader is found and killed.
    let rounds = 6
    let (planText, scenario) = try scenario(name: name, rounds: rounds, minimum: 0.5, selection: "3s")
    let plan = dir.write("plan.yaml", planText)
    var replicas: [(ChildProcess, Int)] = []
    defer { for (r, _) in replicas { r.stop() } }
    for _ in 0..<3 { replicas.append(try start(dir, plan: plan, db: url, replica: true)) }
    let ports = replicas.map(\.1)
    let devices = Task { try await runDevices(scenario, ports: ports, participations: rounds) }
    defer { devices.cancel() }

    guard await line(replicas[0].0, containing: "round 1 committed") != nil else {
      Issue.record("round 1 was never committed: \(replicas[0].0.transcript)")
      return
    }
    let store = try await PostgresStore(url: url)
    let run = try #require(try await store.runs().first { $0.planName == name })
    let first = try #require(try await store.lease(run.id))
    let leader = try #require(
      replicas.firstIndex {
        first.holder.split(separator: ":").dropFirst().first == "\($0.0.process.processIdentifier)"
      },
      "the lease holder \(first.holder) is none of the replicas")
    replicas[leader].0.kill()
    for (i, (replica, _)) in replicas.enumerated() where i != leader {
      #expect(await line(replica, containing: "run finished") != nil, "\(replica.transcript)")
    }
    let records = try await store.rounds(run.id)
    let next = try await store.lease(run.id)
    #expect(try await store.run(run.id).status == .finished)
    await store.close()
    #expect(records.filter { $0.outcome == .committed }.count == rounds, "\(records)")
    #expect(records.map(\.round) == Array(1...records.count), "\(records)")
    #expect((next?.token ?? 0) > first.token, "the lease never changed hands: \(String(describing: next))")
  }
}
