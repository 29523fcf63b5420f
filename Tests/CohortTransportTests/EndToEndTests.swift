import CohortCompression
import CohortCore
import CohortDevice
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

/// A plan feature the network must carry exactly as the simulator does.
struct Feature: Sendable, CustomTestStringConvertible {
  var name: String
  var secure = false
  /// Secure aggregation's active variant: every device has its own certificate and signing key.
  var active = false
  var strategy = "{kind: fedavg}"
  var planKeys: [String] = []

  var testDescription: String { name }

  static let all: [Feature] = [
    Feature(name: "fedavg"),
    Feature(name: "fedadam", strategy: "{kind: fedadam, server_learning_rate: 0.1}"),
    Feature(name: "fedavgm", strategy: "{kind: fedavgm, server_learning_rate: 1, momentum: 0.9}"),
    Feature(name: "scaffold", strategy: "{kind: scaffold}"),
    Feature(name: "8-bit rotated quantization", planKeys: ["compression: {kind: quantization, bits: 8}"]),
    Feature(name: "top-k", planKeys: ["compression: {kind: top_k, fraction: 0.1}"]),
    Feature(name: "random mask", planKeys: ["compression: {kind: random_mask, fraction: 0.5}"]),
    Feature(name: "secure aggregation", secure: true),
    Feature(name: "active secure aggregation", secure: true, active: true),
    Feature(
      name: "secure aggregation with a random mask", secure: true,
      planKeys: ["compression: {kind: random_mask, fraction: 0.5}"]),
    Feature(
      name: "secure aggregation with fixed-range quantization", secure: true,
      planKeys: ["compression: {kind: quantization, bits: 8, range: 0.5}"]),
    Feature(
      name: "DP-FedAvg, fixed clip",
      planKeys: ["privacy: {kind: central_gaussian, clip: 0.5, noise_multiplier: 0.5}"]),
    Feature(
      name: "DP-FedAvg, adaptive clip",
      planKeys: ["privacy: {kind: central_gaussian, clip: 0.5, noise_multiplier: 0.5, adaptive_clipping: {}}"]
    ),
    Feature(
      name: "distributed DP", secure: true,
      planKeys: ["privacy: {kind: distributed_discrete_gaussian, clip: 0.5, noise_multiplier: 0.5}"]),
  ]
}

/// A real server and 20 device runtimes over real sockets on loopback, against the simulator
/// running the same plan, partitions and seed.
@Suite(.serialized) struct EndToEndTests {
  static let devices = 20

  /// Runs the scenario's federation over the network with every one of its devices; returns
  /// the server's final checkpoint and rounds. With `identities`, device d connects with its own
  /// certificate (`pki.devices[d]`, mutual TLS: the server holds it to that number) and, with
  /// `signing`, signs with its own signing key.
  func federate(
    _ scenario: Scenario, security: ServerSecurity, client: ClientSecurity, directory: String,
    identities pki: DevelopmentCertificates? = nil, signing: Bool = true
  )
    async throws -> (
      sha256: String, rounds: [RoundRecord],
      secureAggregationSteps: [(round: Int, SecureAggregationStepRecord)]
    )
  {
    let devices = scenario.devices.count ?? Self.devices
    let store = try ResultsStore(path: directory + "/server.sqlite")
    let server = try FederationServer(
      configuration: .init(
        plan: scenario.plan, security: security, seed: scenario.seed, privacySeed: scenario.seed,
        populationSize: devices),
      store: store, logger: Logger(label: "test-server"))
    let data = try DeviceDataProvider(scenario: scenario)
    let rounds = scenario.plan.server.rounds
    try await withServer(server) { port in
      try await withThrowingTaskGroup(of: Void.self) { group in
        for device in 0..<devices {
          var security = client
          var identity: DeviceSigningIdentity?
          if let pki {
            let own = pki.devices[device]
            security = .tls(
              caPEM: pki.caCertificatePEM, certificatePEM: own.certificatePEM, privateKeyPEM: own.keyPEM)
            if signing {
              identity = try await DeviceSigningIdentity.load(
                certificatePEM: own.certificatePEM, signingKeyPEM: own.signingKeyPEM,
                caPEM: pki.caCertificatePEM,
                device: device)
            }
          }
          let connection = try FederationConnection(host: "127.0.0.1", port: port, security: security)
          let local = data.data(device: device)
          let runtime = DeviceRuntime(
            configuration: .init(
              device: device, seed: scenario.seed, initialBackoff: 0.05, maximumBackoff: 0.5,
              identity: identity),
            connection: connection,
            examples: { LocalExamples(train: local.train, indices: local.trainIndices, test: local.test) },
            logger: Logger(label: "test-device-\(device)"))
          group.addTask {
            await runtime.run(participations: rounds)
            connection.close()
          }
        }
        try await group.waitForAll()
      }
    }
    let sha = await server.coordinator.global.sha256
    return (sha, try store.rounds(server.run!), try store.secureAggregationSteps(server.run!))
  }

  /// Each feature over TLS with mutual authentication: the final checkpoint is the simulator's bit
  /// for bit, every round commits with all 20 reports, and the bytes uploaded are the ones the
  /// simulator counts (the encoded sizes, Δc_k included); under secure aggregation the protocol's
  /// bytes depend on the graph drawn per round, so only the model is compared. In the active
  /// variant each device has its own certificate and signing key (the simulator derives other
  /// identity keys from its seed: only signatures differ, not the sum).
  @Test(arguments: Feature.all)
  func twentyDevicesEndAtTheSimulatorsCheckpoint(feature: Feature) async throws {
    let scenario = try networkScenario(
      devices: Self.devices, rounds: 3, secure: feature.secure, active: feature.active,
      strategy: feature.strategy,
      planKeys: feature.planKeys)
    let directory = try temporaryDirectory("e2e")
    let simulation = try await simulated(scenario, directory: directory)
    let expected = simulation.checkpointSHA256
    // TLS with a throwaway CA; mutual TLS, so every device also proves who it is (with its own
    // certificate: the server holds each connection to the device its certificate names).
    let pki = try DevelopmentCertificates.make(devices: Self.devices, firstDevice: 0)
    let device = pki.devices[0]
    let network = try await federate(
      scenario,
      security: .tls(
        certificateChainPEM: pki.serverCertificatePEM, privateKeyPEM: pki.serverKeyPEM,
        clientCAPEM: pki.caCertificatePEM),
      client: .tls(
        caPEM: pki.caCertificatePEM, certificatePEM: device.certificatePEM, privateKeyPEM: device.keyPEM),
      directory: directory, identities: pki, signing: feature.active)
    #expect(
      network.rounds.filter { $0.outcome == .committed }.count == 3, "\(feature), seed \(scenario.seed)")
    #expect(network.rounds.allSatisfy { $0.reported == Self.devices }, "\(feature), seed \(scenario.seed)")
    #expect(
      network.sha256 == expected,
      "\(feature), seed \(scenario.seed): network \(network.sha256) vs simulator \(expected)")
    if feature.active {
      // The active variant's five steps ran in every round, all 20 devices signing throughout.
      for round in 1...3 {
        let steps = network.secureAggregationSteps.filter { $0.round == round }.map(\.1)
        #expect(
          steps.map(\.step) == [
            "advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking",
          ],
          "round \(round)")
        #expect(
          steps.allSatisfy { $0.entered == Self.devices && $0.dropped == 0 }, "round \(round): \(steps)")
      }
    }
    if !feature.secure {
      // Every upload is the codec's wire size (4 bytes a value uncompressed), then Δc_k for SCAFFOLD.
      let plan = scenario.plan
      let codec = try UpdateCodec(plan: plan.compression, dimension: 610)
      let perUpload = codec.wireBytes + (plan.server.strategy.kind == .scaffold ? 610 * 4 : 0)
      let bytesUp = network.rounds.reduce(0) { $0 + $1.bytesUp }
      #expect(bytesUp == simulation.bytesUp, "\(feature), seed \(scenario.seed)")
      #expect(bytesUp == 3 * Self.devices * perUpload, "\(feature), seed \(scenario.seed)")
    }
  }

  @Test func mutualTLSRefusesADeviceCertifiedByAnotherCA() async throws {
    let scenario = try networkScenario(devices: 2, rounds: 1)
    let directory = try temporaryDirectory("mtls")
    let pki = try DevelopmentCertificates.make(devices: 1)
    let stranger = try DevelopmentCertificates.make(devices: 1)
    let server = try FederationServer(
      configuration: .init(
        plan: scenario.plan,
        security: .tls(
          certificateChainPEM: pki.serverCertificatePEM, privateKeyPEM: pki.serverKeyPEM,
          clientCAPEM: pki.caCertificatePEM), seed: scenario.seed),
      store: try ResultsStore(path: directory + "/server.sqlite"), logger: Logger(label: "test-server"))
    let data = try DeviceDataProvider(scenario: scenario)
    let results = try await withServer(server) { port in
      var results: [ParticipationResult] = []
      // The server trusts the device's CA only: a device of another CA is refused in the
      // handshake, one of its own CA is admitted.
      for (name, certificates) in [("stranger", stranger), ("member", pki)] {
        let connection = try FederationConnection(
          host: "127.0.0.1", port: port,
          security: .tls(
            caPEM: pki.caCertificatePEM, certificatePEM: certificates.devices[0].certificatePEM,
            privateKeyPEM: certificates.devices[0].keyPEM))
        let local = data.data(device: 0)
        let runtime = DeviceRuntime(
          configuration: .init(device: 0, seed: scenario.seed), connection: connection,
          examples: { LocalExamples(train: local.train, indices: local.trainIndices, test: local.test) },
          logger: Logger(label: "test-\(name)"))
        results.append(await runtime.checkInOnly())
        connection.close()
      }
      server.shutdown()
      return results
    }
    guard case .abandoned(let why) = results[0] else {
      Issue.record("a device of another CA got through: \(results[0])")
      return
    }
    #expect(why.contains("connection"), "\(why)")
    if case .abandoned(let why) = results[1] { Issue.record("the CA's own device was refused: \(why)") }
  }
}

@Suite struct LoadGeneratorTests {
  /// A small load run: every session is held, every check-in answered, nothing refused.
  @Test func holdsSessionsAndMeasuresCheckIns() async throws {
    let scenario = try networkScenario(devices: 1000, rounds: 1)
    let directory = try temporaryDirectory("load")
    let server = try FederationServer(
      configuration: .init(plan: scenario.plan, security: .insecureLoopback, seed: scenario.seed),
      store: try ResultsStore(path: directory + "/server.sqlite"), logger: Logger(label: "test-server"))
    let report = try await withServer(server) { port in
      let generator = LoadGenerator(
        configuration: .init(
          host: "127.0.0.1", port: port, security: .insecure, sessions: 50, checkInsPerSecond: 100,
          duration: 0.3,
          connections: 2),
        logger: Logger(label: "test-load"))
      let report = try await generator.run(serverPID: getpid())
      server.shutdown()
      return report
    }
    #expect(report.sessionsHeld == 50)
    #expect(report.checkIns == 30, "\(report.errors)")
    #expect(report.errors.isEmpty, "\(report.errors)")
    #expect(report.latencyP50 <= report.latencyP99 && report.latencyP99 <= report.latencyMax)
    #expect(report.serverResidentBytesHeld != nil)
    // One server: the totals alone, no per-server part (the JSON has no "servers" key, as before).
    #expect(report.servers == nil)
  }

  /// Two servers: the sessions and check-ins are spread over both, round-robin, and each
  /// server's part of the report adds up to the totals.
  @Test func spreadsTheLoadOverSeveralServers() async throws {
    let scenario = try networkScenario(devices: 1000, rounds: 1)
    let directory = try temporaryDirectory("load-replicas")
    func server(_ name: String) throws -> FederationServer {
      try FederationServer(
        configuration: .init(plan: scenario.plan, security: .insecureLoopback, seed: scenario.seed),
        store: try ResultsStore(path: directory + "/\(name).sqlite"), logger: Logger(label: "test-\(name)"))
    }
    let first = try server("first")
    let second = try server("second")
    let (report, ports) = try await withServer(first) { firstPort in
      let result = try await withServer(second) { secondPort in
        let generator = LoadGenerator(
          configuration: .init(
            servers: [.init(host: "127.0.0.1", port: firstPort), .init(host: "127.0.0.1", port: secondPort)],
            security: .insecure, sessions: 21, checkInsPerSecond: 100, duration: 0.25),
          logger: Logger(label: "test-load"))
        let report = try await generator.run(serverPIDs: [getpid(), getpid()])
        second.shutdown()
        return (report, [firstPort, secondPort])
      }
      first.shutdown()
      return result
    }
    let parts = try #require(report.servers)
    #expect(parts.count == 2)
    #expect(parts.map(\.sessionsRequested) == [11, 10])
    #expect(parts.map(\.sessionsHeld) == [11, 10], "\(report.errors)")
    #expect(report.sessionsHeld == 21)
    #expect(parts.map(\.sessionsHeld).reduce(0, +) == report.sessionsHeld)
    // 25 check-ins: 13 to the first server, 12 to the second.
    #expect(report.checkIns == 25, "\(report.errors)")
    #expect(parts.map(\.checkIns) == [13, 12])
    #expect(parts.map(\.checkIns).reduce(0, +) == report.checkIns)
    #expect(parts.map(\.checkInErrors).reduce(0, +) == report.checkInErrors)
    #expect(report.errors.isEmpty, "\(report.errors)")
    #expect(parts.map(\.latencyMax).max() == report.latencyMax)
    for part in parts {
      #expect(part.latencyP50 <= part.latencyP99 && part.latencyP99 <= part.latencyMax)
      #expect(part.serverResidentBytesHeld != nil)
    }
    #expect(parts.map(\.server) == ports.map { "127.0.0.1:\($0)" })
    // Both pids are this process: the total is the sum of the two readings.
    #expect(report.serverResidentBytesHeld == parts.compactMap(\.serverResidentBytesHeld).reduce(0, +))
  }
}
