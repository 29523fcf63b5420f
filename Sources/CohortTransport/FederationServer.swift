import CohortCompression
public import CohortCore
import CohortML
import CohortProtocol
public import CohortServer
public import CohortStore
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
public import Logging
public import Metrics
import Synchronization

/// How the server secures its port.
public enum ServerSecurity: Sendable {
  /// TLS with this certificate chain and key (PEM); with `clientCAPEM`, mutual TLS: only
  /// devices whose certificate that CA signed may connect.
  case tls(certificateChainPEM: String, privateKeyPEM: String, clientCAPEM: String?)
  /// No TLS. Refused on anything but a loopback address.
  case insecureLoopback
}

/// Settings of a network server.
public struct FederationServerConfiguration: Sendable {
  public var plan: Plan
  /// Where the plan came from (recorded with the run).
  public var planPath: String
  public var host: String
  /// 0 lets the OS choose (read it from `onListening`).
  public var port: Int
  public var security: ServerSecurity
  public var population: String
  /// Size limits; nil derives them from the plan's model.
  public var limits: TransportLimits?
  /// Seconds the server waits for the answers of one secure-aggregation step.
  public var secureAggregationStepTimeout: Double
  /// Seconds an admitted device waits for its task before it is told to come back; nil uses
  /// the plan's selection window.
  public var taskWait: Double?
  /// How often the server checks its round deadlines, in seconds.
  public var tickInterval: Double
  /// The run seed: the initial model and the rounds' public codec randomness (rotation signs,
  /// random masks) come from it. The simulator's scenario seed gives the same model and codecs.
  public var seed: UInt64
  /// The seed of central DP noise; nil (production) draws one from the system's generator. Tests
  /// pass the scenario seed, as the simulator does, to compare runs.
  public var privacySeed: UInt64?
  /// Devices in the population, N: SCAFFOLD scales its control update by |S|/N, and a privacy
  /// budget's sampling rate uses it. Nil when unknown (then SCAFFOLD cannot be served).
  public var populationSize: Int?

  public init(
    plan: Plan, planPath: String = "", host: String = "127.0.0.1", port: Int = 0, security: ServerSecurity,
    population: String = "default", limits: TransportLimits? = nil, secureAggregationStepTimeout: Double = 30,
    taskWait: Double? = nil, tickInterval: Double = 0.05, seed: UInt64 = 0, privacySeed: UInt64? = nil,
    populationSize: Int? = nil
  ) {
    self.seed = seed
    self.privacySeed = privacySeed
    self.populationSize = populationSize
    self.plan = plan
    self.planPath = planPath
    self.host = host
    self.port = port
    self.security = security
    self.population = population
    self.limits = limits
    self.secureAggregationStepTimeout = secureAggregationStepTimeout
    self.taskWait = taskWait
    self.tickInterval = tickInterval
  }
}

/// A Cohort server on the network: the Coordinator and Selector actors behind the gRPC
/// `Federation` service over TLS, committing each round to the results store, resuming from
/// the last committed round after a crash, and ticking round deadlines on the wall clock.
public final class FederationServer: Sendable {
  public let configuration: FederationServerConfiguration
  public let coordinator: Coordinator
  /// The run rounds are committed to (nil without a store).
  public let run: RunID?
  /// The round the server resumed after (0 for a new run).
  public let resumedAfter: Int
  let selector: Selector
  let service: FederationService
  let store: ResultsStore?
  let logger: Logger
  /// Set by `shutdown()`; the tick loop sees it and winds the server down.
  private let stopRequested = Mutex(false)

  /// - Parameters:
  ///   - store: where rounds are committed; a run of the same plan that did not finish is
  ///     resumed from its last committed round.
  ///   - journal: where rounds are written, when not `store` itself (tests inject failures).
  public init(
    configuration: FederationServerConfiguration, store: ResultsStore?, journal: (any RoundJournal)? = nil,
    logger: Logger,
    metrics: any MetricsFactory = MetricsSystem.factory
  ) throws(CohortError) {
    let plan = configuration.plan
    if case .insecureLoopback = configuration.security, !Self.isLoopback(configuration.host) {
      throw CohortError(
        .invalidConfiguration, "plaintext is allowed only on a loopback address, not \(configuration.host)",
        fix: "listen on 127.0.0.1 or ::1, or give --tls-cert and --tls-key")
    }
    // The active variant's identity keys come from device certificates (their signing-key
    // extension). Under mutual TLS the server checks them against the client CA; without it the
    // server has no CA and checks only their form, and each device's own check of its peers
    // against its --ca is what stands between a wrong key and its signature.
    var certificates: DeviceCertificateVerifier?
    if plan.secureAggregation.enabled, plan.secureAggregation.variant == .active {
      if case .tls(_, _, let clientCA?) = configuration.security {
        certificates = try DeviceCertificateVerifier(caPEM: clientCA)
      } else {
        certificates = .formOnly
        let warning =
          "active secure aggregation without mutual TLS: device certificates are not checked against a CA here; "
          + "each device checks its peers' against its own --ca and refuses the round on a certificate it cannot verify"
        logger.warning("\(warning)")
      }
    }
    if plan.server.strategy.kind == .scaffold, (configuration.populationSize ?? 0) < 1 {
      throw CohortError(
        .invalidConfiguration,
        "server.strategy.kind scaffold needs the population size N (its control update is scaled by |S|/N)",
        fix:
          "give the server the number of devices in the population (FederationServerConfiguration.populationSize)"
      )
    }
    self.configuration = configuration
    self.store = store
    self.logger = logger
    let network = Network(plan: plan.model)
    // The initial model comes from the seed, so a resumed run that committed nothing yet
    // starts from the same model.
    var initial = network.initialWeights(seed: configuration.seed)
    var resumed = 0
    var committed = 0
    var run: RunID?
    if let store {
      // A run of this plan that was stopped (SIGTERM) or killed continues under its own id.
      let existing = try store.runs().last {
        $0.planSHA256 == plan.sha256 && ($0.status == .running || $0.status == .interrupted)
      }
      if let existing {
        run = existing.id
        if let checkpoint = try store.latestCheckpoint(existing.id) { initial = checkpoint.weights }
        // Round numbers go on after the last round recorded, committed or not.
        let rounds = try store.rounds(existing.id)
        resumed = rounds.map(\.round).max() ?? 0
        committed = rounds.filter { $0.outcome == .committed }.count
        try store.setStatus(existing.id, .running, at: Date())
        logger.info("resuming run", metadata: ["run": "\(existing.id)", "after round": "\(resumed)"])
      } else {
        let scenario = Scenario(
          planPath: configuration.planPath, plan: plan,
          data: .syntheticFedProx(DataSource.SyntheticData(alpha: 0, beta: 0, devices: 0)),
          partition: .natural,
          devices: PopulationPlan(), seed: configuration.seed)
        run = try store.createRun(name: plan.name, scenario: scenario, createdAt: Date())
      }
    }
    self.run = run
    resumedAfter = resumed
    // Updates travel in the plan's encoding unless secure aggregation carries them.
    let codec =
      plan.compression.kind == .none || plan.secureAggregation.enabled
      ? nil : try UpdateCodec(plan: plan.compression, dimension: initial.count)
    let limits =
      configuration.limits
      ?? TransportLimits(parameters: initial.count, encodedUpdateBytes: codec?.wireBytes ?? 0)
    selector = Selector()
    let secure =
      plan.secureAggregation.enabled
      ? NetworkSecureAggregation(
        plan: plan, dimension: initial.count, runSeed: configuration.seed,
        stepTimeout: configuration.secureAggregationStepTimeout, logger: logger) : nil
    let clock = WallClock()
    coordinator = Coordinator(
      configuration: .init(
        plan: plan, population: configuration.population, run: run, autoCommit: true,
        populationSize: configuration.populationSize, secureAggregation: secure,
        privacySeed: configuration.privacySeed),
      initial: initial, resumingAfter: resumed, committed: committed,
      store: journal ?? store, link: selector, evaluator: nil, clock: clock,
      logger: logger, metrics: metrics)
    service = FederationService(
      coordinator: coordinator, selector: selector, secureAggregation: secure, certificates: certificates,
      plan: plan,
      planJSON: String(decoding: plan.canonicalJSON, as: UTF8.self), codec: codec,
      runSeed: configuration.seed,
      limits: limits, clock: clock,
      metrics: TransportMetrics(factory: metrics), logger: logger,
      taskWait: configuration.taskWait ?? max(5, plan.server.windows.selection))
  }

  static func isLoopback(_ host: String) -> Bool {
    host == "localhost" || host == "::1" || host.hasPrefix("127.")
  }

  /// Serves until the plan's last round is committed or `shutdown()` is called; calls
  /// `onListening` with the bound port once devices can connect.
  public func run(onListening: @Sendable (Int) -> Void = { _ in }) async throws {
    let limits = service.limits
    let security: HTTP2ServerTransport.Posix.TransportSecurity
    switch configuration.security {
    case .insecureLoopback:
      security = .plaintext
    case .tls(let chain, let key, let clientCA):
      let chainSource = TLSConfig.CertificateSource.bytes(Array(chain.utf8), format: .pem)
      let keySource = TLSConfig.PrivateKeySource.bytes(Array(key.utf8), format: .pem)
      if let clientCA {
        security = .mTLS(certificateChain: [chainSource], privateKey: keySource) {
          $0.trustRoots = .certificates([.bytes(Array(clientCA.utf8), format: .pem)])
          $0.clientCertificateVerification = .noHostnameVerification
        }
      } else {
        security = .tls(certificateChain: [chainSource], privateKey: keySource)
      }
    }
    let transport = HTTP2ServerTransport.Posix(
      address: .ipv4(
        host: configuration.host == "localhost" ? "127.0.0.1" : configuration.host, port: configuration.port),
      transportSecurity: security,
      config: .defaults {
        $0.rpc.maxRequestPayloadSize = limits.maxMessageBytes
        // Many devices may share one connection (a gateway, `cohort load`); each waiting
        // device holds a stream.
        $0.http2.maxConcurrentStreams = 16_384
      })
    let server = GRPCServer(transport: transport, services: [service])
    if stopRequested.withLock({ $0 }) { return }
    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask { try await server.serve() }
      guard let address = try await transport.listeningAddress.ipv4 else {
        server.beginGracefulShutdown()
        try await group.waitForAll()
        return
      }
      onListening(address.port)
      logger.info(
        "serving",
        metadata: ["address": "\(address.host):\(address.port)", "plan": "\(configuration.plan.name)"])
      await coordinator.start()
      let failure = await tickUntilFinished()
      let finished = await coordinator.isFinished
      if !finished, failure == nil {
        // The round in flight is abandoned and recorded; committed rounds stay.
        await coordinator.shutdown()
      }
      // Streams still waiting (for a task, or for a protocol step) end now.
      service.open.closeAll()
      server.beginGracefulShutdown()
      try await group.waitForAll()
      // A stopped or failed run is `interrupted`: the same command resumes it. The store may be
      // what failed, so this write is best effort.
      if let store, let run {
        try? store.setStatus(run, finished && failure == nil ? .finished : .interrupted, at: Date())
      }
      if let failure { throw failure }
    }
  }

  /// Closes round windows as their deadlines pass (and retries failed commits when due), until
  /// the run ends, a shutdown is asked for, or the coordinator gives up; returns why it gave up.
  private func tickUntilFinished() async -> CohortError? {
    let clock = WallClock()
    while !stopRequested.withLock({ $0 }) {
      let status = await coordinator.status
      if let failure = status.failure { return failure }
      if status.isFinished { return nil }
      let wait = min(configuration.tickInterval, max(0.001, (status.nextDeadline ?? .infinity) - clock.now))
      try? await Task.sleep(for: .seconds(wait))
      await coordinator.tick()
    }
    return nil
  }

  /// Stops serving: the round in flight is abandoned, committed rounds are kept, and open
  /// streams end.
  public func shutdown() {
    stopRequested.withLock { $0 = true }
  }
}
