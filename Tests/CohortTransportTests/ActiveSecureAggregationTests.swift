import CohortCore
import CohortDevice
import CohortOperations
import CohortProtocol
import CohortSecAgg
import CohortServing
import CohortSimulator
import CohortStore
import Foundation
import Logging
import Prometheus
import Testing
import X509

@testable import CohortTransport

/// The active secure-aggregation variant over mutual TLS, with devices whose certificates or keys
/// cannot vouch for them.
@Suite(.serialized) struct ActiveSecureAggregationTests {
  static let honest = 4

  /// The value of `cohort_reports_rejected_total{reason=…}` in Prometheus text (nil: never counted).
  static func rejected(_ reason: DeviceCertificateRefusal.Reason, in metrics: String) -> Double? {
    let prefix = "cohort_reports_rejected_total{reason=\"\(reason.rawValue)\"} "
    guard let line = metrics.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) else { return nil }
    return Double(line.dropFirst(prefix.count))
  }

  /// Devices 0…3 are honest. At check-in the server refuses a device certified by another CA, a
  /// certificate whose signing key was altered after the CA signed it, a check-in without a
  /// certificate and a certificate presented by another device than it names, each counted by its
  /// reason. Device 4's certificate is good but it signs with another key (a tampered key file):
  /// its signed keys are refused in the protocol's first step, it is told its input is not in the
  /// sum, and round 1 commits with the four honest devices.
  @Test func badCertificatesAndKeysAreRefusedAndTheRoundCommitsWithTheHonestDevices() async throws {
    let honest = Self.honest
    var planned = try networkScenario(devices: honest + 1, rounds: 1, active: true)
    // Everyone shares with everyone, and three shares suffice: the round survives one dropout.
    planned.plan.secureAggregation.graph = .complete
    planned.plan.secureAggregation.threshold = 3
    planned.plan.server.cohort = CohortPlan(
      goal: honest + 1, overSelection: 1, minimumFraction: Double(honest) / Double(honest + 1))
    let scenario = planned
    let pki = try DevelopmentCertificates.make(devices: honest + 1, firstDevice: 0)
    let stranger = try DevelopmentCertificates.make(devices: 1, firstDevice: 7)
    let directory = try temporaryDirectory("active")
    let store = try ResultsStore(path: directory + "/server.sqlite")
    let registry = PrometheusCollectorRegistry()
    let server = try FederationServer(
      configuration: .init(
        plan: scenario.plan,
        security: .tls(
          certificateChainPEM: pki.serverCertificatePEM, privateKeyPEM: pki.serverKeyPEM,
          clientCAPEM: pki.caCertificatePEM), seed: scenario.seed, populationSize: honest + 1),
      store: store, logger: Logger(label: "test-server"),
      metrics: PrometheusMetricsFactory(registry: registry))
    let data = try DeviceDataProvider(scenario: scenario)

    @Sendable func tls(_ device: DevelopmentCertificates.Device) -> ClientSecurity {
      .tls(caPEM: pki.caCertificatePEM, certificatePEM: device.certificatePEM, privateKeyPEM: device.keyPEM)
    }
    @Sendable func runtime(_ device: Int, port: Int, identity: DeviceSigningIdentity) throws -> (
      DeviceRuntime, FederationConnection
    ) {
      let connection = try FederationConnection(
        host: "127.0.0.1", port: port, security: tls(pki.devices[device]))
      let local = data.data(device: device)
      let runtime = DeviceRuntime(
        configuration: .init(
          device: device, seed: scenario.seed, initialBackoff: 0.05, maximumBackoff: 0.5, identity: identity),
        connection: connection,
        examples: { LocalExamples(train: local.train, indices: local.trainIndices, test: local.test) },
        logger: Logger(label: "test-device-\(device)"))
      return (runtime, connection)
    }
    @Sendable func identity(_ device: Int) async throws -> DeviceSigningIdentity {
      let own = pki.devices[device]
      return try await DeviceSigningIdentity.load(
        certificatePEM: own.certificatePEM, signingKeyPEM: own.signingKeyPEM, caPEM: pki.caCertificatePEM,
        device: device)
    }

    let results = try await withServer(server, limit: 60) { port in
      // A device of another CA: its own CA vouches for it, the server's does not.
      let outsider = stranger.devices[0]
      let outsiderIdentity = try await DeviceSigningIdentity.load(
        certificatePEM: outsider.certificatePEM, signingKeyPEM: outsider.signingKeyPEM,
        caPEM: stranger.caCertificatePEM, device: 7)
      let (outsiderRuntime, outsiderConnection) = try runtime(0, port: port, identity: outsiderIdentity)
      let refused = await outsiderRuntime.participate()
      outsiderConnection.close()
      #expect(
        { if case .refused("certificate_untrusted", _) = refused { true } else { false } }(), "\(refused)")

      // Raw check-ins, each on a connection with its own device's TLS certificate (mutual TLS holds
      // a connection to that device): a tampered signing certificate, none, and another device's.
      let good = try Certificate(pemEncoded: pki.devices[1].certificatePEM).serializeAsPEM().derBytes
      let raw: [(String, Int, [UInt8], DeviceCertificateRefusal.Reason)] = [
        ("a tampered key", 1, try DeviceSigningKeyTests.tampered(good), .untrusted),
        ("no certificate", 2, [], .missing),
        ("device 1's certificate", 3, good, .wrongDevice),
      ]
      for (name, device, certificate, reason) in raw {
        let connection = try FederationConnection(
          host: "127.0.0.1", port: port, security: tls(pki.devices[device]))
        defer { connection.close() }
        var stream = RawParticipation(connection)
        stream.sendCheckIn(device: device, certificate: certificate)
        let refusal = Refusal(await stream.status())
        #expect(refusal?.code == .unauthenticated, "\(name): \(String(describing: refusal))")
        #expect(refusal?.reason == reason.rawValue, "\(name): \(String(describing: refusal))")
      }

      // The round: four honest devices and one whose key file is not its certificate's.
      var runtimes: [(DeviceRuntime, FederationConnection)] = []
      for device in 0..<honest {
        runtimes.append(try runtime(device, port: port, identity: try await identity(device)))
      }
      let wrongKey = try await identity(honest)
      var otherSecret = try DeviceSigningKeyFile.secretKey(
        pem: pki.devices[0].signingKeyPEM, source: "device-0")
      let forger = DeviceSigningIdentity(
        certificate: wrongKey.certificate, secretKey: otherSecret, verifier: wrongKey.verifier)
      SecAggCrypto.zero(&otherSecret)
      runtimes.append(try runtime(honest, port: port, identity: forger))
      return await withTaskGroup(of: (Int, [ParticipationResult]).self) { group in
        for (device, (runtime, connection)) in runtimes.enumerated() {
          group.addTask {
            await runtime.run(participations: 1)
            connection.close()
            return (device, await runtime.history)
          }
        }
        var results: [Int: [ParticipationResult]] = [:]
        for await (device, history) in group { results[device] = history }
        return results
      }
    }
    let rounds = try store.rounds(server.run!)
    #expect(rounds.map(\.round) == [1])
    #expect(rounds.first?.outcome == .committed, "\(rounds)")
    for device in 0..<honest {
      #expect(results[device]?.last == .finished(round: 1, accepted: true, reason: ""), "device \(device)")
    }
    #expect(
      results[honest]?.last
        == .finished(round: 1, accepted: false, reason: "secure_aggregation_bad_signature"),
      "\(String(describing: results[honest]))")
    // Five devices entered the protocol; the forger's signed keys were refused, so four went on.
    let steps = try store.secureAggregationSteps(server.run!).map(\.1)
    #expect(steps.first?.step == "advertise_keys" && steps.first?.entered == honest + 1, "\(steps)")
    #expect(steps.dropFirst().allSatisfy { $0.entered == honest }, "\(steps)")
    let metrics = registry.emitToString()
    #expect(Self.rejected(.untrusted, in: metrics) == 2, "\(metrics)")
    #expect(Self.rejected(.missing, in: metrics) == 1, "\(metrics)")
    #expect(Self.rejected(.wrongDevice, in: metrics) == 1, "\(metrics)")
  }
}
