import CohortCore
import CohortDevice
import CohortML
import CohortOperations
import CohortProtocol
import CohortServer
import CohortServing
import CohortSimulator
import CohortStore
import Foundation
import Logging
import Testing

@testable import CohortTransport

/// `server.mode: async` over the network: a real server and 20 device runtimes over mutual TLS
/// on loopback, the devices training on whatever version they are handed.
@Suite(.serialized) struct AsyncNetworkTests {
  static let devices = 20
  static let versions = 6
  static let buffer = 5

  /// 10 train at once, every 5 updates make a version; retries are short so the devices the
  /// server turns away (all slots taken, or already counted on the current version) come back
  /// soon.
  func asyncScenario() throws -> Scenario {
    let yaml = """
      plan:
        name: network-async
        model: {kind: logistic_regression, inputs: 60, classes: 10}
        device: {epochs: 1, batch_size: 10, optimizer: {kind: sgd, learning_rate: 0.05}}
        server:
          rounds: \(Self.versions)
          mode: async
          async: {concurrency: 10, buffer: \(Self.buffer), staleness: {kind: polynomial, a: 0.5}, max_staleness: 4}
          windows: {selection: 1s, reporting: 1h, max_retry: 2s}
          evaluation: {every: 1}
      data: {kind: synthetic_fedprox, alpha: 0, beta: 0, iid: true, devices: \(Self.devices)}
      partition: {kind: natural}
      devices:
        count: \(Self.devices)
        compute: {kind: constant, value: 100}
        availability: {kind: always}
        check_in_interval: 2m
        dropout: 0
      seed: 11
      """
    return try Scenario.parse(yaml: yaml, file: "/tmp/cohort-network-test/async.yaml")
  }

  /// Every version is committed once with exactly `buffer` updates folded, each acknowledged
  /// update counts exactly once (the devices' acknowledgements add up to the folds), the
  /// versions' checkpoints are stored, and the model learns (central accuracy above chance,
  /// evaluated at every version).
  @Test func twentyDeviceRuntimesFillBuffersAsynchronously() async throws {
    let scenario = try asyncScenario()
    let directory = try temporaryDirectory("async-e2e")
    let pki = try DevelopmentCertificates.make(devices: Self.devices, firstDevice: 0)
    let data = try DeviceDataProvider(scenario: scenario)
    let store = try ResultsStore(path: directory + "/server.sqlite")
    let server = try FederationServer(
      configuration: .init(
        plan: scenario.plan,
        security: .tls(
          certificateChainPEM: pki.serverCertificatePEM, privateKeyPEM: pki.serverKeyPEM,
          clientCAPEM: pki.caCertificatePEM),
        seed: scenario.seed, populationSize: Self.devices),
      store: store,
      evaluator: CentralTestEvaluator(
        network: Network(plan: scenario.plan.model), test: data.centralTest, parallelism: 2),
      logger: Logger(label: "test-server"))
    // The devices run until the last version is published and every fold's acknowledgement
    // has reached its device (the last one is answered after the version is published), then
    // are stopped.
    let (published, publish) = AsyncStream.makeStream(of: Void.self)
    let (acknowledgements, acknowledge) = AsyncStream.makeStream(of: Void.self)
    let last = Self.versions
    await server.coordinator.observeRounds { record in
      if record.round == last { publish.yield() }
    }
    let acknowledged = try await withServer(server) { port in
      try await withThrowingTaskGroup(of: Int.self) { group in
        for device in 0..<Self.devices {
          let own = pki.devices[device]
          let connection = try FederationConnection(
            host: "127.0.0.1", port: port,
            security: .tls(
              caPEM: pki.caCertificatePEM, certificatePEM: own.certificatePEM, privateKeyPEM: own.keyPEM))
          let runtime = testDevice(device, of: scenario, data: data, over: connection) { outcome, _, _ in
            if case .finished(_, true, _) = outcome { acknowledge.yield() }
          }
          group.addTask {
            await runtime.run()
            connection.close()
            return await runtime.history.filter {
              if case .finished(_, true, _) = $0 { return true }
              return false
            }.count
          }
        }
        var iterator = published.makeAsyncIterator()
        _ = await iterator.next()
        var seen = 0
        for await _ in acknowledgements {
          seen += 1
          if seen == Self.versions * Self.buffer { break }
        }
        group.cancelAll()
        return try await group.reduce(0, +)
      }
    }
    let run = try #require(server.run)
    let rows = try store.rounds(run)
    #expect(rows.map(\.round) == Array(1...Self.versions))
    #expect(rows.allSatisfy { $0.outcome == .committed && $0.reported == Self.buffer }, "\(rows)")
    #expect(rows.allSatisfy { $0.meanStaleness != nil && ($0.maximumStaleness ?? 99) <= 4 })
    // No update folded twice and none acknowledged without being folded.
    #expect(acknowledged == Self.versions * Self.buffer)
    let reports = try store.devices(run).reduce(0) { $0 + $1.reports }
    #expect(reports == Self.versions * Self.buffer)
    #expect(Set(try store.checkpointRounds(run)).isSuperset(of: 1...Self.versions))
    #expect(try store.latestCheckpoint(run)?.weights.sha256 == (await server.coordinator.global.sha256))
    let accuracy = try #require(rows.last?.evalAccuracy)
    #expect(accuracy > 0.2, "ten classes: chance is 0.1; \(rows.map(\.evalAccuracy))")
  }
}

/// Devices given several servers (replicas, a standby) move on from one that cannot be reached.
@Suite struct FailoverNetworkTests {
  /// The first server in each device's list is down (nothing listens on port 1); both devices
  /// reach the second and its round commits with both reports.
  @Test func devicesReachTheNextServerWhenTheFirstIsDown() async throws {
    let scenario = try networkScenario(devices: 2, rounds: 1)
    let directory = try temporaryDirectory("failover")
    let store = try ResultsStore(path: directory + "/server.sqlite")
    let server = try FederationServer(
      configuration: .init(plan: scenario.plan, security: .insecureLoopback, seed: scenario.seed),
      store: store, logger: Logger(label: "test-server"))
    let data = try DeviceDataProvider(scenario: scenario)
    let channels = try await withServer(server) { port in
      try await withThrowingTaskGroup(of: FailoverChannel.self) { group in
        for device in 0..<2 {
          let channel = FailoverChannel([
            try FederationConnection(host: "127.0.0.1", port: 1, security: .insecure),
            try FederationConnection(host: "127.0.0.1", port: port, security: .insecure),
          ])
          let runtime = testDevice(device, of: scenario, data: data, over: channel)
          group.addTask {
            await runtime.run(participations: 1)
            for server in channel.servers { (server as? FederationConnection)?.close() }
            return channel
          }
        }
        return try await group.reduce(into: []) { $0.append($1) }
      }
    }
    #expect(channels.allSatisfy { $0.currentServer == 1 })
    let rows = try store.rounds(try #require(server.run))
    #expect(rows.count == 1 && rows[0].outcome == .committed && rows[0].reported == 2, "\(rows)")
  }
}
