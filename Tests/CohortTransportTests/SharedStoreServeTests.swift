import CohortCore
import CohortDevice
import CohortProtocol
import CohortServer
import CohortServing
import CohortSimulator
import Foundation
import Logging
import Testing

@testable import CohortStore
@testable import CohortTransport

/// `cohort serve --db postgres://…`: a served run kept in PostgreSQL under its leader lease.
@Suite(
  .enabled(
    if: ProcessInfo.processInfo.environment["COHORT_TEST_POSTGRES_URL"] != nil
      || ProcessInfo.processInfo.environment["CI"] == "true",
    "COHORT_TEST_POSTGRES_URL is not set (scripts/test starts a throwaway cluster)"))
struct SharedStoreServeTests {
  /// A server takes the run's lease and commits every round to PostgreSQL with its devices; a
  /// second server of the same plan is refused while the lease is held, naming its holder; the
  /// run is finished and the lease released when the first is done.
  @Test func aServerOnPostgreSQLCommitsUnderItsLeaseAndASecondIsRefused() async throws {
    let url = try #require(ProcessInfo.processInfo.environment["COHORT_TEST_POSTGRES_URL"])
    let schema = "t_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
    let store = try await PostgresStore(url: url, schema: schema)
    do {
      try await serveAndCheck(store)
    } catch {
      try? await store.dropSchema()
      await store.close()
      throw error
    }
    try? await store.dropSchema()
    await store.close()
  }

  /// A server whose lease another has taken (its own ran out) does not speak for the run any
  /// more: stopping, it leaves the new leader's status alone and does not release its lease.
  @Test func aDeposedServerLeavesTheNewLeadersRunAlone() async throws {
    let url = try #require(ProcessInfo.processInfo.environment["COHORT_TEST_POSTGRES_URL"])
    let schema = "t_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
    let store = try await PostgresStore(url: url, schema: schema)
    defer {
      Task {
        try? await store.dropSchema()
        await store.close()
      }
    }
    let scenario = try networkScenario(devices: 3, rounds: 2)
    let old = try await FederationServer.open(
      configuration: .init(plan: scenario.plan, security: .insecureLoopback, seed: scenario.seed),
      shared: store,
      holder: "old", leaseSeconds: 5, logger: Logger(label: "test-server"))
    let run = try #require(old.run)
    // An hour later the old server's lease has long run out: another takes the run and finishes it.
    let later = Date().addingTimeInterval(3600)
    let new = try #require(try await store.acquireLease(run: run, holder: "new", now: later, duration: 60))
    try await store.setStatus(run, .finished, at: later)
    old.served.stop()
    #expect(await old.served.drive(clock: ContinuousClock()) == .stopped)
    #expect(try await store.run(run).status == .finished)
    #expect(try await store.lease(run)?.token == new.token)
    #expect(try await store.lease(run)?.holder == "new")
  }

  func serveAndCheck(_ store: PostgresStore) async throws {
    let scenario = try networkScenario(devices: 3, rounds: 2)
    let configuration = FederationServerConfiguration(
      plan: scenario.plan, security: .insecureLoopback, seed: scenario.seed)
    let first = try await FederationServer.open(
      configuration: configuration, shared: store, holder: "first", logger: Logger(label: "test-server"))
    let run = try #require(first.run)
    let refused = await #expect(throws: CohortError.self) {
      _ = try await FederationServer.open(
        configuration: configuration, shared: store, holder: "second", logger: Logger(label: "test-server"))
    }
    #expect(
      refused?.code == .fenced && refused?.message.contains("(first)") == true,
      "\(String(describing: refused))")
    let data = try DeviceDataProvider(scenario: scenario)
    try await withServer(first) { port in
      try await withThrowingTaskGroup(of: Void.self) { group in
        for device in 0..<3 {
          let connection = try FederationConnection(host: "127.0.0.1", port: port, security: .insecure)
          let runtime = testDevice(device, of: scenario, data: data, over: connection)
          group.addTask {
            await runtime.run(participations: 2)
            connection.close()
          }
        }
        try await group.waitForAll()
      }
    }
    let rounds = try await store.rounds(run)
    #expect(
      rounds.map(\.round) == [1, 2] && rounds.allSatisfy { $0.outcome == .committed && $0.reported == 3 })
    #expect(try await store.latestCheckpoint(run)?.weights.sha256 == (await first.coordinator.global.sha256))
    #expect(try await store.run(run).status == .finished)
    // Released: the next holder takes it at once, with the next token.
    let next = try await store.acquireLease(run: run, holder: "third", now: Date(), duration: 5)
    #expect(next?.token == 2)
  }
}
