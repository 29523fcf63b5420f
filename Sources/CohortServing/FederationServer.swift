public import CohortCore
import CohortML
import CohortProtocol
public import CohortServer
public import CohortStore
public import CohortTransport
import Foundation
public import Logging
public import Metrics
import Synchronization

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
  /// The run seed: the initial model and the rounds' public codec randomness (rotation signs,
  /// random masks) come from it. The simulator's scenario seed gives the same model and codecs.
  public var seed: UInt64
  /// How many connections, how long a TLS handshake may take, which TLS versions.
  public var connections: ConnectionLimits
  /// The seed of central DP noise; nil (production) draws the noise from libsodium. Tests
  /// pass the scenario seed, as the simulator does, to compare runs.
  public var privacySeed: UInt64?
  /// Devices in the population, N: SCAFFOLD scales its control update by |S|/N, and a privacy
  /// budget's sampling rate uses it. Nil when unknown (then SCAFFOLD cannot be served).
  public var populationSize: Int?

  public init(
    plan: Plan, planPath: String = "", host: String = "127.0.0.1", port: Int = 0, security: ServerSecurity,
    population: String = "default", limits: TransportLimits? = nil, secureAggregationStepTimeout: Double = 30,
    taskWait: Double? = nil, seed: UInt64 = 0, privacySeed: UInt64? = nil,
    populationSize: Int? = nil, connections: ConnectionLimits = ConnectionLimits()
  ) {
    self.connections = connections
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
  }
}

/// A Cohort server on the network: a `ServedRun` (the Coordinator and Selector, the results
/// store, resume, deadlines) behind a `FederationEndpoint` (gRPC over TLS). This is what
/// `cohort serve` runs; the transport never sees the server's types, only `FederationHandler`.
public final class FederationServer: Sendable {
  public let configuration: FederationServerConfiguration
  public let served: ServedRun
  let endpoint: FederationEndpoint

  public var coordinator: any RunCoordinator { served.coordinator }
  /// The run rounds are committed to (nil without a store).
  public var run: RunID? { served.run }
  /// The last round recorded before this server started (0 for a new run).
  public var resumedAfter: Int { served.resumedAfter }

  /// - Parameters:
  ///   - store: where rounds are committed; a run of the same plan that did not finish is
  ///     resumed after its last recorded round.
  ///   - journal: where rounds are written, when not `store` itself (tests inject failures).
  ///   - evaluator: central evaluation of each new model, on the rounds the plan's
  ///     `server.evaluation` names (`serve --test-data`).
  public convenience init(
    configuration: FederationServerConfiguration, store: ResultsStore?, journal: (any RoundJournal)? = nil,
    evaluator: (any CentralEvaluator)? = nil, logger: Logger,
    metrics: any MetricsFactory = MetricsSystem.factory
  ) throws(CohortError) {
    let parts = try Self.parts(configuration, logger: logger)
    let served = try ServedRun(
      configuration: parts.run, initial: parts.initial, store: store, journal: journal, evaluator: evaluator,
      logger: logger, metrics: metrics)
    try self.init(
      configuration: configuration, served: served, parts: parts, logger: logger, metrics: metrics)
  }

  /// A server of a run kept in a store other servers may share (PostgreSQL), under the run's
  /// leader lease (`ServedRun.open`): refused while another server holds it; with `run`, only
  /// that run.
  public static func open(
    configuration: FederationServerConfiguration, shared store: any FederationStore, holder: String,
    run: RunID? = nil, leaseSeconds: Double = 30, evaluator: (any CentralEvaluator)? = nil, logger: Logger,
    metrics: any MetricsFactory = MetricsSystem.factory
  ) async throws(CohortError) -> FederationServer {
    let parts = try Self.parts(configuration, logger: logger)
    let served = try await ServedRun.open(
      configuration: parts.run, initial: parts.initial, shared: store, holder: holder, run: run,
      leaseSeconds: leaseSeconds,
      evaluator: evaluator, logger: logger, metrics: metrics)
    return try FederationServer(
      configuration: configuration, served: served, parts: parts, logger: logger, metrics: metrics)
  }

  /// What a server of `configuration` is built from, whatever its store: the run's
  /// configuration, the initial model and the secure-aggregation driver.
  /// Opens the plan's run as one replica (`ServedRun.openReplica`): finds the run other replicas
  /// serve, or creates it, in one locked transaction, and takes the run's seed from it.
  public static func openReplica(
    configuration: FederationServerConfiguration, store: any ReplicaStore, replica: String,
    leaseSeconds: Double = 30, syncInterval: Double = 0.2, evaluator: (any CentralEvaluator)? = nil,
    logger: Logger, metrics: any MetricsFactory = MetricsSystem.factory
  ) async throws(CohortError) -> FederationServer {
    if let refusal = ReplicaRules.refusal(configuration.plan) { throw refusal }
    let plan = configuration.plan
    let opened = try await store.openRun(
      planSHA256: plan.sha256, name: plan.name,
      scenario: ServedRun.scenario(
        .init(plan: plan, planPath: configuration.planPath, seed: configuration.seed)),
      createdAt: Date())
    var configuration = configuration
    // Every replica uses the run's seed: the initial model and secure aggregation's rotations
    // must be the same on all of them.
    configuration.seed = try await store.scenario(opened.run).seed
    let parts = try Self.parts(configuration, logger: logger)
    let served = try await ServedRun.openReplica(
      configuration: parts.run, initial: parts.initial, store: store, replica: replica, run: opened.run,
      leaseSeconds: leaseSeconds, syncInterval: syncInterval, evaluator: evaluator, logger: logger,
      metrics: metrics)
    return try FederationServer(
      configuration: configuration, served: served, parts: parts, logger: logger, metrics: metrics)
  }

  private struct Parts {
    var run: ServedRun.Configuration
    var initial: Weights
    var secure: NetworkSecureAggregation?
  }

  private static func parts(_ configuration: FederationServerConfiguration, logger: Logger)
    throws(CohortError)
    -> Parts
  {
    let plan = configuration.plan
    if plan.server.strategy.kind == .scaffold, (configuration.populationSize ?? 0) < 1 {
      throw CohortError(
        .invalidConfiguration,
        "server.strategy.kind scaffold needs the population size N (its control update is scaled by |S|/N)",
        fix: "give cohort serve --population-size N, the number of devices in the population")
    }
    // The initial model comes from the seed (or the plan's `model.initial` file), so a resumed
    // run that committed nothing yet starts from the same model.
    let initial = try Network(plan: plan.model).initialWeights(plan: plan.model, seed: configuration.seed)
    let secure =
      plan.secureAggregation.enabled
      ? NetworkSecureAggregation(
        plan: plan, dimension: initial.count, runSeed: configuration.seed,
        stepTimeout: configuration.secureAggregationStepTimeout, logger: logger) : nil
    return Parts(
      run: .init(
        plan: plan, planPath: configuration.planPath, population: configuration.population,
        seed: configuration.seed, privacySeed: configuration.privacySeed,
        populationSize: configuration.populationSize, secureAggregation: secure),
      initial: initial, secure: secure)
  }

  private init(
    configuration: FederationServerConfiguration, served: ServedRun, parts: Parts, logger: Logger,
    metrics: any MetricsFactory
  ) throws(CohortError) {
    self.configuration = configuration
    self.served = served
    endpoint = try FederationEndpoint(
      configuration: .init(
        plan: configuration.plan, host: configuration.host, port: configuration.port,
        security: configuration.security, limits: configuration.limits, taskWait: configuration.taskWait,
        seed: configuration.seed, connections: configuration.connections),
      handler: served, modelParameters: parts.initial.count, secureAggregation: parts.secure, logger: logger,
      metrics: metrics)
  }

  /// Serves until the plan's last round is committed, `shutdown()` is called (the run is left
  /// `interrupted`, to resume) or the coordinator gives up (thrown); calls `onListening` with the
  /// bound port once devices can connect.
  public func run(onListening: @Sendable (Int) -> Void = { _ in }) async throws {
    let served = self.served
    let ending = Mutex<ServedRun.Ending?>(nil)
    do {
      try await endpoint.serve(onListening: onListening) {
        let end = await served.drive(clock: ContinuousClock())
        ending.withLock { $0 = end }
      }
    } catch {
      // The endpoint failed before the run was driven (the port is taken): its lease goes back.
      if ending.withLock({ $0 }) == nil { await served.releaseWithoutServing() }
      throw error
    }
    if case .failed(let failure) = ending.withLock({ $0 }) { throw failure }
  }

  /// Stops serving: the round in flight is abandoned, committed rounds are kept, and open
  /// streams end.
  public func shutdown() {
    served.stop()
  }
}
