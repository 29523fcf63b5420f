import CohortCore
import CohortDevice
import CohortOperations
import CohortServing
import CohortSimulator
import CohortStore
import Foundation
import GRPCCore
import Logging
import Metrics
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Prometheus
import Synchronization
import Testing

@testable import CohortTransport

/// The endpoint's listener: IPv6, bind and certificate errors that name the cause, modern TLS
/// only, a deadline for every handshake, and a connection limit.
@Suite(.timeLimit(.minutes(1))) struct ListenerTests {
  static let pki = try! DevelopmentCertificates.make(devices: 2, firstDevice: 0)

  func server(
    host: String = "127.0.0.1", port: Int = 0, security: ServerSecurity? = nil,
    connections: ConnectionLimits = ConnectionLimits(), registry: PrometheusCollectorRegistry? = nil
  ) throws -> FederationServer {
    let scenario = try networkScenario(devices: 2, rounds: 1)
    return try FederationServer(
      configuration: .init(
        plan: scenario.plan, host: host, port: port,
        security: security
          ?? .tls(
            certificateChainPEM: Self.pki.serverCertificatePEM, privateKeyPEM: Self.pki.serverKeyPEM,
            clientCAPEM: nil),
        seed: scenario.seed, connections: connections),
      store: try ResultsStore.inMemory(), logger: Logger(label: "test-listener"),
      metrics: registry.map { PrometheusMetricsFactory(registry: $0) } ?? NOOPMetricsHandler.instance)
  }

  /// Serves `server` while `body` runs with its port, then stops it.
  func serving<T: Sendable>(
    _ server: FederationServer, _ body: @escaping @Sendable (Int) async throws -> T
  ) async throws -> T {
    let (ports, sink) = AsyncStream.makeStream(of: Int.self)
    return try await withThrowingTaskGroup(of: T?.self) { group in
      group.addTask {
        try await server.run { sink.yield($0) }
        sink.finish()
        return nil
      }
      var iterator = ports.makeAsyncIterator()
      guard let port = await iterator.next() else { throw CohortError(.io, "the server did not listen") }
      let result = try await body(port)
      server.shutdown()
      try await group.waitForAll()
      return result
    }
  }

  /// A device's check-in over `host`: the server's first answer.
  func checkIn(host: String, port: Int) async throws -> Cohort_V1_ServerMessage.OneOf_Kind? {
    let connection = try FederationConnection(
      host: host, port: port,
      security: .tls(caPEM: Self.pki.caCertificatePEM, certificatePEM: nil, privateKeyPEM: nil))
    defer { connection.close() }
    var stream = RawParticipation(connection)
    // A device outside the honest ones (0 and 1); it goes once answered.
    stream.sendCheckIn(device: 9)
    defer { stream.cancel() }
    return try await stream.next()
  }

  /// Waits until the server counts no device connected (the probe of `checkIn` has gone, so
  /// the honest devices fill the cohort).
  static func untilNoDeviceIsConnected(_ registry: PrometheusCollectorRegistry) async {
    while !registry.emitToString().contains("cohort_devices_connected 0.0") { await Task.yield() }
  }

  /// Honest device runtimes 0..<`count` (each with its own certificate under mutual TLS) take
  /// part until `rounds` rounds have committed.
  static func honestDevices(
    _ count: Int, rounds: Int = 1, scenario: Scenario? = nil, host: String = "127.0.0.1", port: Int,
    mutual: Bool = false, tls: Bool? = nil
  ) async throws {
    let scenario = try scenario ?? networkScenario(devices: 2, rounds: 1)
    let data = try DeviceDataProvider(scenario: scenario)
    try await withThrowingTaskGroup(of: Void.self) { group in
      for device in 0..<count {
        let own = pki.devices[device]
        let security: ClientSecurity =
          mutual
          ? .tls(caPEM: pki.caCertificatePEM, certificatePEM: own.certificatePEM, privateKeyPEM: own.keyPEM)
          : tls ?? false
            ? .tls(caPEM: pki.caCertificatePEM, certificatePEM: nil, privateKeyPEM: nil) : .insecure
        let connection = try FederationConnection(host: host, port: port, security: security)
        let local = data.data(device: device)
        let runtime = DeviceRuntime(
          configuration: .init(
            device: device, seed: scenario.seed, initialBackoff: 0.05, maximumBackoff: 0.5),
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

  /// Every round of the server's run committed.
  static func expectCommitted(_ server: FederationServer, _ store: ResultsStore, rounds: Int = 1) throws {
    let records = try store.rounds(try #require(server.run))
    #expect(records.map(\.outcome) == Array(repeating: .committed, count: rounds), "\(records)")
  }

  /// After the misbehaviour, two honest devices (over TLS, with no certificate of their own)
  /// commit the server's one round.
  static func honestDevicesCommit(_ server: FederationServer, host: String = "127.0.0.1", port: Int)
    async throws
  {
    try await honestDevices(2, host: host, port: port, tls: true)
    #expect(await server.coordinator.committedRounds == 1, "the honest devices' round did not commit")
  }

  @Test func underMutualTLSADeviceCannotSpeakForAnother() async throws {
    let registry = PrometheusCollectorRegistry()
    let scenario = try networkScenario(devices: 2, rounds: 1)
    let store = try ResultsStore.inMemory()
    let server = try FederationServer(
      configuration: .init(
        plan: scenario.plan,
        security: .tls(
          certificateChainPEM: Self.pki.serverCertificatePEM, privateKeyPEM: Self.pki.serverKeyPEM,
          clientCAPEM: Self.pki.caCertificatePEM), seed: scenario.seed),
      store: store, logger: Logger(label: "test-identity"),
      metrics: PrometheusMetricsFactory(registry: registry))
    let impostor = try await serving(server) { port in
      // Device 1's certificate; the messages claim device 0: a check-in, then a report.
      let device1 = Self.pki.devices[1]
      let connection = try FederationConnection(
        host: "127.0.0.1", port: port,
        security: .tls(
          caPEM: Self.pki.caCertificatePEM, certificatePEM: device1.certificatePEM,
          privateKeyPEM: device1.keyPEM))
      var refusals: [RPCError?] = []
      var checkIn = RawParticipation(connection)
      checkIn.sendCheckIn(device: 0)
      refusals.append(await checkIn.status())
      var report = RawParticipation(connection)
      report.send(
        .report(
          .with {
            $0.device = 0
            $0.round = 1
            $0.examples = 1
            $0.updateBytes = 4
            $0.updateSha256 = String(repeating: "0", count: 64)
          }))
      refusals.append(await report.status())
      connection.close()
      // The devices themselves, each with its own certificate, then commit the round.
      try await Self.honestDevices(2, scenario: scenario, port: port, mutual: true)
      return refusals
    }
    for refusal in impostor {
      #expect(refusal?.message.hasPrefix("identity:") == true, "\(String(describing: refusal))")
      #expect(refusal?.code == .permissionDenied)
    }
    #expect(registry.emitToString().contains("cohort_reports_rejected_total{reason=\"identity\"} 2"))
    try Self.expectCommitted(server, store)
  }

  @Test func aDeviceSaysWhichTLSCheckFailed() async throws {
    let stranger = try DevelopmentCertificates.make(devices: 1, firstDevice: 0)
    @Sendable func attempt(_ security: ClientSecurity, port: Int) async throws -> String {
      let connection = try FederationConnection(host: "127.0.0.1", port: port, security: security)
      defer { connection.close() }
      let runtime = DeviceRuntime(
        configuration: .init(device: 0, seed: 1), connection: connection,
        examples: { throw CohortError(.notFound, "no examples needed") }, logger: Logger(label: "test-tls"))
      let result = await runtime.checkInOnly()
      if case .abandoned(let why) = result { return why }
      return "\(result)"
    }
    let own = Self.pki.devices[0]
    let other = stranger.devices[0]
    let mutual = try server(
      security: .tls(
        certificateChainPEM: Self.pki.serverCertificatePEM, privateKeyPEM: Self.pki.serverKeyPEM,
        clientCAPEM: Self.pki.caCertificatePEM))
    let answers = try await serving(mutual) { port -> [String] in
      let answers = [
        try await attempt(
          .tls(
            caPEM: stranger.caCertificatePEM, certificatePEM: own.certificatePEM, privateKeyPEM: own.keyPEM),
          port: port),
        try await attempt(
          .tls(caPEM: Self.pki.caCertificatePEM, certificatePEM: nil, privateKeyPEM: nil), port: port),
        try await attempt(
          .tls(
            caPEM: Self.pki.caCertificatePEM, certificatePEM: other.certificatePEM,
            privateKeyPEM: other.keyPEM), port: port),
      ]
      // Devices with their own certificates are not held up by the refused ones.
      try await Self.honestDevices(2, port: port, mutual: true)
      #expect(await mutual.coordinator.committedRounds == 1, "the honest devices' round did not commit")
      return answers
    }
    let plaintext = try await serving(try server(security: .insecureLoopback)) { port in
      try await attempt(
        .tls(caPEM: Self.pki.caCertificatePEM, certificatePEM: nil, privateKeyPEM: nil), port: port)
    }
    #expect(answers[0].contains("not signed by the CA in --ca"), "wrong --ca: \(answers[0])")
    #expect(answers[1].contains("requires a device certificate"), "no certificate: \(answers[1])")
    #expect(answers[2].contains("does not trust this device's certificate"), "another CA: \(answers[2])")
    #expect(plaintext.contains("does not speak TLS"), "plaintext server: \(plaintext)")
  }

  @Test func aStreamIsReleasedWhenItsDeviceGoesWhileWaitingForItsTask() async throws {
    let registry = PrometheusCollectorRegistry()
    let scenario = try networkScenario(devices: 2, rounds: 1)
    let store = try ResultsStore.inMemory()
    let server = try FederationServer(
      configuration: .init(plan: scenario.plan, security: .insecureLoopback, seed: scenario.seed),
      store: store, logger: Logger(label: "test-release"),
      metrics: PrometheusMetricsFactory(registry: registry))
    let connected = { @Sendable () -> String? in
      registry.emitToString().split(separator: "\n").first { $0.hasPrefix("cohort_devices_connected ") }
        .map(String.init)
    }
    try await serving(server) { port in
      let connection = try FederationConnection(host: "127.0.0.1", port: port, security: .insecure)
      defer { connection.close() }
      let runtime = DeviceRuntime(
        configuration: .init(device: 7, seed: 1), connection: connection,
        examples: { throw CohortError(.notFound, "no examples needed") }, logger: Logger(label: "test-hold"))
      let (admitted, sink) = AsyncStream.makeStream(of: Void.self)
      // The device is admitted (one of two the round waits for) and holds its stream, then goes.
      let holding = Task { await runtime.holdSession { sink.yield() } }
      var iterator = admitted.makeAsyncIterator()
      await iterator.next()
      #expect(connected() == "cohort_devices_connected 1.0")
      holding.cancel()
      _ = await holding.value
      // The server hears of it through the RPC's cancellation, not from a message: wait for it.
      while connected() != "cohort_devices_connected 0.0" { await Task.yield() }
      // It left the cohort: two other devices fill it, and the round commits without it.
      try await Self.honestDevices(2, scenario: scenario, port: port, mutual: false)
    }
    let run = try #require(server.run)
    let round = try #require(try store.rounds(run).first)
    #expect(round.outcome == .committed && round.selected == 2 && round.reported == 2, "\(round)")
  }

  @Test func aDeviceThatReconnectsKeepsItsPlaceWhenItsOldStreamEnds() async throws {
    let registry = PrometheusCollectorRegistry()
    let server = try server(security: .insecureLoopback, registry: registry)
    try await serving(server) { port in
      let connection = try FederationConnection(host: "127.0.0.1", port: port, security: .insecure)
      defer { connection.close() }
      // Device 5 is admitted, then checks in again on a new stream (its connection dropped, as
      // far as it knows) before the server hears that the old one ended.
      let old = try await BadInputTests.admit(5, connection)
      var new = try await BadInputTests.admit(5, connection)
      old.cancel()
      while !registry.emitToString().contains("cohort_devices_connected 1.0") { await Task.yield() }
      // The old stream's end is no dropout: with device 6 the cohort is full, and the task
      // reaches device 5's new stream.
      var other = try await BadInputTests.admit(6, connection)
      _ = try await BadInputTests.task(for: 5, &new)
      _ = try await BadInputTests.task(for: 6, &other)
    }
  }

  @Test func streamsThatCheckInAndThenNeverReadOrSendDoNotStallTheRun() async throws {
    // Two silent streams are admitted before the honest devices; the plan over-selects (4 for a
    // goal of 2), as production plans do, so the round commits with the honest reports and
    // does not wait for the silent ones.
    var scenario = try networkScenario(devices: 2, rounds: 1)
    scenario.plan.server.cohort = CohortPlan(goal: 2, overSelection: 2, minimumFraction: 1)
    let store = try ResultsStore.inMemory()
    let server = try FederationServer(
      configuration: .init(plan: scenario.plan, security: .insecureLoopback, seed: scenario.seed),
      store: store, logger: Logger(label: "test-silent"))
    let planned = scenario
    try await serving(server) { port in
      let connection = try FederationConnection(host: "127.0.0.1", port: port, security: .insecure)
      defer { connection.close() }
      var silent: [RawParticipation] = []
      for device in [100, 101] { silent.append(try await BadInputTests.admit(device, connection)) }
      try await Self.honestDevices(2, scenario: planned, port: port, mutual: false)
      _ = silent
    }
    let run = try #require(server.run)
    let round = try #require(try store.rounds(run).first)
    #expect(round.outcome == .committed && round.selected == 4 && round.reported == 2, "\(round)")
  }

  @Test func aServerListensOnIPv6Loopback() async throws {
    let registry = PrometheusCollectorRegistry()
    let ipv6 = try server(host: "::1", registry: registry)
    let answer = try await serving(ipv6) { port in
      let answer = try await checkIn(host: "::1", port: port)
      await Self.untilNoDeviceIsConnected(registry)
      try await Self.honestDevicesCommit(ipv6, host: "::1", port: port)
      return answer
    }
    #expect(answer != nil, "the device got no answer over [::1]")
  }

  @Test func aPortInUseIsNamedAsTheCause() async throws {
    let first = try server()
    try await serving(first) { port in
      let second = try server(port: port)
      do {
        try await second.run()
        Issue.record("a second server listened on port \(port)")
      } catch let error as CohortError {
        #expect(error.message.contains("cannot listen on 127.0.0.1:\(port)"), "\(error)")
        #expect(error.message.lowercased().contains("in use"), "\(error)")
        #expect(error.fix.contains("--listen"))
      }
    }
  }

  @Test func aCertificateAndKeySwappedOrMismatchedAreNamed() throws {
    func refusal(_ security: ServerSecurity) -> CohortError? {
      do {
        _ = try FederationListener.tlsContext(
          certificateChainPEM: Self.chain(security), privateKeyPEM: Self.key(security), clientCAPEM: nil,
          tls13Only: false)
        return nil
      } catch { return error }
    }
    let swapped = refusal(
      .tls(
        certificateChainPEM: Self.pki.serverKeyPEM, privateKeyPEM: Self.pki.serverCertificatePEM,
        clientCAPEM: nil))
    #expect(
      swapped?.message.contains("--tls-cert file holds no readable PEM certificate") == true, "\(swapped!)")
    let mismatched = refusal(
      .tls(
        certificateChainPEM: Self.pki.serverCertificatePEM, privateKeyPEM: Self.pki.devices[0].keyPEM,
        clientCAPEM: nil))
    #expect(mismatched?.message.contains("do not work together") == true, "\(String(describing: mismatched))")
  }

  static func chain(_ security: ServerSecurity) -> String {
    if case .tls(let chain, _, _) = security { return chain }
    return ""
  }

  static func key(_ security: ServerSecurity) -> String {
    if case .tls(_, let key, _) = security { return key }
    return ""
  }

  /// A TLS client connection configured by `configure`, and whether its handshake completed.
  static func tlsClient(port: Int, _ configure: (inout TLSConfiguration) -> Void = { _ in }) async throws -> (
    channel: any Channel, completed: Bool
  ) {
    var configuration = TLSConfiguration.makeClientConfiguration()
    configuration.trustRoots = .certificates(
      try NIOSSLCertificate.fromPEMBytes(Array(pki.caCertificatePEM.utf8)))
    configuration.applicationProtocols = ["h2"]
    configure(&configuration)
    let context = try NIOSSLContext(configuration: configuration)
    let (done, sink) = AsyncStream.makeStream(of: Bool.self)
    let channel = try await ClientBootstrap(
      group: MultiThreadedEventLoopGroup.singletonMultiThreadedEventLoopGroup
    )
    .channelInitializer { channel in
      channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.addHandler(
          try NIOSSLClientHandler(context: context, serverHostname: "localhost"))
        try channel.pipeline.syncOperations.addHandler(HandshakeOutcome(sink: sink))
      }
    }
    .connect(host: "127.0.0.1", port: port).get()
    var iterator = done.makeAsyncIterator()
    return (channel, await iterator.next() ?? false)
  }

  /// Whether a TLS client configured by `configure` completes its handshake with the server.
  static func handshake(port: Int, _ configure: (inout TLSConfiguration) -> Void) async throws -> Bool {
    let (channel, completed) = try await tlsClient(port: port, configure)
    try? await channel.close()
    return completed
  }

  @Test func refusedHandshakesAreWarnedOfAtMostOnceEvery10Seconds() {
    let book = ConnectionBook(limit: 10)
    let start = ContinuousClock.now
    let warned = [0, 1, 9.9, 10, 10.5, 25].map { seconds in
      book.refusedHandshake(at: start.advanced(by: .milliseconds(Int64(seconds * 1000))))
    }
    #expect(warned.map(\.warn) == [true, false, false, true, false, true])
    #expect(warned.map(\.count) == [1, 2, 3, 4, 5, 6], "every refusal is counted, warned of or not")
  }

  @Test func theServerWarnsOfARefusedHandshake() async throws {
    let log = CollectedLog()
    let scenario = try networkScenario(devices: 2, rounds: 1)
    let server = try FederationServer(
      configuration: .init(
        plan: scenario.plan,
        security: .tls(
          certificateChainPEM: Self.pki.serverCertificatePEM, privateKeyPEM: Self.pki.serverKeyPEM,
          clientCAPEM: Self.pki.caCertificatePEM), seed: scenario.seed),
      store: try ResultsStore.inMemory(),
      logger: Logger(label: "test-refused") { _ in CollectingLogHandler(log: log) })
    try await serving(server) { port in
      // TLS 1.2 with CBC suites only: the server refuses the handshake.
      _ = try await Self.handshake(port: port) {
        $0.maximumTLSVersion = .tlsv12
        $0.cipherSuites = "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA"
      }
      // The refusal is logged on the server's event loop: wait for it, not for a time.
      while log.warnings("TLS handshake refused").isEmpty { await Task.yield() }
    }
    let warning = try #require(log.warnings("TLS handshake refused").first)
    #expect(warning.contains("peer=ipv4:127.0.0.1:"), "\(warning)")
  }

  @Test func tls12WithCBCSuitesIsRefusedAndTLS13OnlyRefusesTLS12() async throws {
    let tls12AEAD: @Sendable (inout TLSConfiguration) -> Void = {
      $0.maximumTLSVersion = .tlsv12
      $0.cipherSuites = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256"
    }
    let tls12CBC: @Sendable (inout TLSConfiguration) -> Void = {
      $0.maximumTLSVersion = .tlsv12
      $0.cipherSuites = "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:AES128-SHA:AES256-SHA"
    }
    let modern = try server()
    let defaults = try await serving(modern) { port -> [Bool] in
      let outcomes = [
        try await Self.handshake(port: port) { _ in }, try await Self.handshake(port: port, tls12AEAD),
        try await Self.handshake(port: port, tls12CBC),
      ]
      try await Self.honestDevicesCommit(modern, port: port)
      return outcomes
    }
    #expect(defaults == [true, true, false], "TLS 1.3, TLS 1.2 with AEAD, TLS 1.2 with CBC")
    let tls13 = try await serving(try server(connections: ConnectionLimits(tls13Only: true))) {
      port -> [Bool] in
      [try await Self.handshake(port: port) { _ in }, try await Self.handshake(port: port, tls12AEAD)]
    }
    #expect(tls13 == [true, false], "--tls13-only: TLS 1.3, TLS 1.2 with AEAD")
  }

  /// A TCP connection that sends nothing: the moment the server closes it.
  static func silentConnection(port: Int) async throws -> any Channel {
    try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singletonMultiThreadedEventLoopGroup)
      .connect(host: "127.0.0.1", port: port).get()
  }

  @Test func aConnectionThatNeverShakesHandsIsClosedAtItsDeadline() async throws {
    let limits = ConnectionLimits(handshakeTimeout: 0.2)
    let server = try server(connections: limits)
    try await serving(server) { port in
      let silent = try await Self.silentConnection(port: port)
      // The server closes it (the test waits for the close, not for a time).
      try await silent.closeFuture.get()
      try await Self.honestDevicesCommit(server, port: port)
    }
  }

  @Test func aConnectionThatShakesHandsAndThenSpeaksNoHTTP2IsClosedAtItsDeadline() async throws {
    let limits = ConnectionLimits(handshakeTimeout: 0.5)
    let server = try server(connections: limits)
    try await serving(server) { port in
      let (channel, completed) = try await Self.tlsClient(port: port)
      #expect(completed, "the handshake completes")
      // No HTTP/2 preface: the server closes the connection at its deadline.
      try await channel.closeFuture.get()
      try await Self.honestDevicesCommit(server, port: port)
    }
  }

  /// A plaintext stream on `port`.
  static func stream(port: Int) throws -> (RawParticipation, FederationConnection) {
    let connection = try FederationConnection(host: "127.0.0.1", port: port, security: .insecure)
    return (RawParticipation(connection), connection)
  }

  @Test func aSilentOrStalledStreamIsClosedWhenItMakesNoProgress() async throws {
    let registry = PrometheusCollectorRegistry()
    let scenario = try networkScenario(devices: 2, rounds: 1)
    let server = try FederationServer(
      configuration: .init(
        plan: scenario.plan, security: .insecureLoopback, seed: scenario.seed,
        connections: ConnectionLimits(streamInactivity: 0.3)),
      store: try ResultsStore.inMemory(), logger: Logger(label: "test-inactive"),
      metrics: PrometheusMetricsFactory(registry: registry))
    let (silent, stalled) = try await serving(server) { port -> (RPCError?, RPCError?) in
      // A stream that never says anything.
      var (quiet, c1) = try Self.stream(port: port)
      defer { c1.close() }
      let silent = await quiet.status()
      // An upload (a report-first resend) that stops after 4 of its 64 bytes.
      var (upload, c2) = try Self.stream(port: port)
      defer { c2.close() }
      upload.send(
        .report(
          .with {
            $0.device = 1
            $0.round = 1
            $0.examples = 1
            $0.updateBytes = 64
            $0.updateSha256 = String(repeating: "0", count: 64)
          }))
      upload.send(.updateChunk(.with { $0.data = Data([1, 2, 3, 4]) }))
      let stalled = await upload.status()
      return (silent, stalled)
    }
    for status in [silent, stalled] {
      #expect(status?.code == .deadlineExceeded, "\(String(describing: status))")
      #expect(status?.message.hasPrefix("inactive") == true)
    }
    #expect(registry.emitToString().contains("cohort_streams_inactive_total 2"))
  }

  @Test func aFloodOfSilentConnectionsMakesRoomForADevice() async throws {
    let limits = ConnectionLimits(maximumConnections: 2, handshakeTimeout: 30)
    let registry = PrometheusCollectorRegistry()
    let server = try server(connections: limits, registry: registry)
    try await serving(server) { port in
      let silent = [try await Self.silentConnection(port: port), try await Self.silentConnection(port: port)]
      // At the limit, the oldest connection that never spoke makes room for the device.
      let answer = try await checkIn(host: "127.0.0.1", port: port)
      #expect(answer != nil, "the device was answered")
      await Self.untilNoDeviceIsConnected(registry)
      try await silent[0].closeFuture.get()
      // The other makes room for the honest devices, which commit the round.
      try await Self.honestDevicesCommit(server, port: port)
      try await silent[1].closeFuture.get()
    }
  }

  @Test func connectionsBeyondTheLimitOfSpeakingOnesAreClosedAtAccept() async throws {
    let limits = ConnectionLimits(maximumConnections: 2, handshakeTimeout: 30)
    try await serving(try server(connections: limits)) { port in
      // Two devices hold their connections, having checked in (they spoke HTTP/2).
      var held: [(RawParticipation, FederationConnection)] = []
      for device in 0..<2 {
        let connection = try FederationConnection(
          host: "127.0.0.1", port: port,
          security: .tls(caPEM: Self.pki.caCertificatePEM, certificatePEM: nil, privateKeyPEM: nil))
        var stream = RawParticipation(connection)
        stream.sendCheckIn(device: device)
        #expect(try await stream.next() != nil)
        held.append((stream, connection))
      }
      let third = try await Self.silentConnection(port: port)
      try await third.closeFuture.get()
      for (_, connection) in held { connection.close() }
    }
  }
}

/// Reports whether the TLS handshake completed (true) or failed (false), once.
final class HandshakeOutcome: ChannelInboundHandler, Sendable {
  typealias InboundIn = NIOAny
  let sink: AsyncStream<Bool>.Continuation

  init(sink: AsyncStream<Bool>.Continuation) { self.sink = sink }

  func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    if case TLSUserEvent.handshakeCompleted = event {
      sink.yield(true)
      sink.finish()
    }
    context.fireUserInboundEventTriggered(event)
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    sink.yield(false)
    sink.finish()
    context.close(promise: nil)
  }

  func channelInactive(context: ChannelHandlerContext) {
    sink.yield(false)
    sink.finish()
    context.fireChannelInactive()
  }
}

/// What a logger was told, for tests that check a warning.
final class CollectedLog: Sendable {
  private let entries = Mutex<[(level: Logger.Level, text: String)]>([])

  func append(_ level: Logger.Level, _ text: String) { entries.withLock { $0.append((level, text)) } }

  /// The warnings whose message is `message`, each with its metadata.
  func warnings(_ message: String) -> [String] {
    entries.withLock { $0.filter { $0.level == .warning && $0.text.hasPrefix(message) }.map(\.text) }
  }
}

struct CollectingLogHandler: LogHandler {
  let log: CollectedLog
  var metadata: Logger.Metadata = [:]
  var logLevel: Logger.Level = .info

  subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  func log(event: LogEvent) {
    let all = metadata.merging(event.metadata ?? [:]) { $1 }
    let fields = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
    log.append(event.level, ([event.message.description] + fields).joined(separator: " "))
  }
}
