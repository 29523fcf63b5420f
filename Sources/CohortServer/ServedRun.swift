public import CohortCore
public import CohortProtocol
public import CohortStore
import Foundation
public import Logging
public import Metrics
public import ServiceLifecycle
import Synchronization

/// A run served to real devices: found in the results store (a run of the same plan that was
/// stopped or killed resumes under its own id, after its last recorded round) or created there,
/// with its Coordinator and Selector; `drive(clock:)` carries its deadlines.
///
/// The network transport reaches it only through `FederationHandler`, so what the server
/// decides stays here and in the protocol machines.
public final class ServedRun: FederationHandler {
  public struct Configuration: Sendable {
    public var plan: Plan
    /// Where the plan came from (recorded with a new run).
    public var planPath: String
    public var population: String
    /// The run seed (the initial model and the rounds' public codec randomness come from it).
    public var seed: UInt64
    /// The seed of central DP noise; nil draws one.
    public var privacySeed: UInt64?
    /// Devices in the population, when known.
    public var populationSize: Int?
    /// Secure aggregation over the devices' streams, when the plan enables it.
    public var secureAggregation: (any SecureAggregationDriver)?
    /// Commit attempts for a round before the server gives up, and the first wait between them.
    public var commitAttempts: Int
    public var commitBackoff: Double

    public init(
      plan: Plan, planPath: String = "", population: String = "default", seed: UInt64 = 0,
      privacySeed: UInt64? = nil, populationSize: Int? = nil,
      secureAggregation: (any SecureAggregationDriver)? = nil, commitAttempts: Int = 6,
      commitBackoff: Double = 1
    ) {
      self.commitAttempts = commitAttempts
      self.commitBackoff = commitBackoff
      self.plan = plan
      self.planPath = planPath
      self.population = population
      self.seed = seed
      self.privacySeed = privacySeed
      self.populationSize = populationSize
      self.secureAggregation = secureAggregation
    }
  }

  /// How driving the run ended.
  public enum Ending: Sendable, Equatable {
    /// Every round the plan asks for was committed (or the attempts ran out).
    case finished
    /// `stop()` was called: the round in flight was abandoned; the run is `interrupted`.
    case stopped
    /// The coordinator gave up (a round it could not commit); the run is `interrupted`.
    case failed(CohortError)
  }

  /// A `Coordinator` (synchronous rounds) or an `AsyncCoordinator` (`server.mode: async`).
  public let coordinator: any RunCoordinator
  public let selector: Selector
  /// The run rounds are committed to (nil without a store).
  public let run: RunID?
  /// The last round recorded before this server started (0 for a new run).
  public let resumedAfter: Int
  let store: ResultsStore?
  let logger: Logger
  /// Wakes the deadline loop: a deadline changed, its timer fired, or a stop was asked for.
  private let wake: AsyncStream<Void>.Continuation
  private let wakeups: AsyncStream<Void>
  private let stopRequested = Mutex(false)

  /// - Parameters:
  ///   - initial: the model a new run starts from (a resumed run starts from its checkpoint).
  ///   - store: where rounds are committed and runs found.
  ///   - journal: where rounds are written, when not `store` itself (tests inject failures).
  ///   - evaluator: evaluates each new model centrally (a server's held-out test set), as the
  ///     simulator does, on the rounds `server.evaluation` names.
  public init(
    configuration: Configuration, initial: Weights, store: ResultsStore?, journal: (any RoundJournal)? = nil,
    evaluator: (any CentralEvaluator)? = nil, clock: any RoundClock = WallClock(), logger: Logger,
    metrics: any MetricsFactory = MetricsSystem.factory
  ) throws(CohortError) {
    let plan = configuration.plan
    var start = initial
    var resumed = 0
    var committed = 0
    var modelRound = 0
    var saved: Data?
    var run: RunID?
    if let store {
      if let existing = try Self.resumable(in: store, plan: plan) {
        run = existing.id
        if let checkpoint = try store.latestCheckpoint(existing.id) {
          start = checkpoint.weights
          modelRound = checkpoint.round
        }
        // Round numbers go on after the last round recorded, committed or not.
        let rounds = try store.rounds(existing.id)
        resumed = rounds.map(\.round).max() ?? 0
        committed = rounds.filter { $0.outcome == .committed }.count
        if plan.server.mode == .async { saved = try Self.asyncState(in: store, run: existing.id) }
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
    self.store = store
    self.logger = logger
    resumedAfter = resumed
    selector = Selector()
    if plan.server.mode == .async {
      // A journal a test injects must take the buffer's writes too: without them nothing
      // acknowledged would be stored.
      var asyncJournal: (any AsyncJournal)? = store
      if let journal {
        guard let j = journal as? any AsyncJournal else {
          throw CohortError(
            .invalidConfiguration, "server.mode: async stores its buffer, but the journal given cannot",
            fix: "give a journal that is an AsyncJournal")
        }
        asyncJournal = j
      }
      coordinator = try AsyncCoordinator(
        configuration: .init(
          plan: plan, population: configuration.population, run: run,
          populationSize: configuration.populationSize, privacySeed: configuration.privacySeed,
          commitAttempts: configuration.commitAttempts),
        initial: start, committed: committed, saved: saved, store: asyncJournal, link: selector,
        evaluator: evaluator, clock: clock, logger: logger, metrics: metrics)
    } else {
      coordinator = Coordinator(
        configuration: .init(
          plan: plan, population: configuration.population, run: run, autoCommit: true,
          populationSize: configuration.populationSize, secureAggregation: configuration.secureAggregation,
          privacySeed: configuration.privacySeed, commitAttempts: configuration.commitAttempts,
          commitBackoff: configuration.commitBackoff),
        initial: start, resumingAfter: resumed, committed: committed, modelRound: modelRound,
        store: journal ?? store, link: selector,
        evaluator: evaluator, clock: clock, logger: logger, metrics: metrics)
    }
    (wakeups, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
  }

  /// The run of `plan` that a server started on `store` continues: the last one running or
  /// interrupted (stopped by a signal, killed, or its server lost).
  public static func resumable(in store: ResultsStore, plan: Plan) throws(CohortError) -> RunSummary? {
    try store.runs().last {
      $0.planSHA256 == plan.sha256 && ($0.status == .running || $0.status == .interrupted)
    }
  }

  /// The newest state an asynchronous run stored: the buffer saved at its last acknowledgement,
  /// or the state committed with its last version when that is newer (saved at an earlier
  /// version); nil when it stored none.
  static func asyncState(in store: ResultsStore, run: RunID) throws(CohortError) -> Data? {
    let version = try store.latestSavedState(run)
    if let buffer = try store.asyncBuffer(run), buffer.version >= version?.round ?? 0 { return buffer.state }
    return version?.state
  }

  /// The seed a server of `plan` on `store` runs with when the operator gives none: the seed of
  /// the run it resumes, or a new one from libsodium (stored with the new run).
  public static func seed(in store: ResultsStore, plan: Plan) throws(CohortError) -> UInt64 {
    guard let run = try resumable(in: store, plan: plan) else { return SecureRandom.uint64() }
    return try store.scenario(run.id).seed
  }

  /// Opens the first round and carries the run's deadlines until it finishes, `stop()` is
  /// called or the coordinator gives up. It sleeps on `clock` until the next deadline, and is
  /// woken early when a new, earlier one appears; it never polls. `now` reads the server time
  /// the deadlines are in (the coordinator's clock).
  public func drive<C: Clock>(clock: C, now: any RoundClock = WallClock()) async -> Ending
  where C.Duration == Duration {
    let wake = self.wake
    await coordinator.observeDeadlines { wake.yield() }
    await coordinator.start()
    var iterator = wakeups.makeAsyncIterator()
    var timer: Task<Void, Never>?
    defer { timer?.cancel() }
    while true {
      let status = await coordinator.status
      if let failure = status.failure { return await end(.failed(failure)) }
      if status.isFinished { return await end(.finished) }
      if stopRequested.withLock({ $0 }) { return await end(.stopped) }
      timer?.cancel()
      timer = status.nextDeadline.map { deadline in
        let delay = Duration.seconds(max(0, deadline - now.now))
        return Task {
          try? await clock.sleep(for: delay)
          if !Task.isCancelled { wake.yield() }
        }
      }
      _ = await iterator.next()
      await coordinator.tick()
    }
  }

  /// Asks `drive` to end: the round in flight is abandoned, committed rounds stay.
  public func stop() {
    stopRequested.withLock { $0 = true }
    wake.yield()
  }

  private func end(_ ending: Ending) async -> Ending {
    if ending == .stopped { await coordinator.shutdown() }
    // A stopped or failed run is `interrupted`: the same command resumes it. The store may be
    // what failed, so this write is best effort.
    if let store, let run {
      try? store.setStatus(run, ending == .finished ? .finished : .interrupted, at: Date())
    }
    return ending
  }

  // MARK: FederationHandler

  public func connect(_ device: DeviceID, link: any DeviceLink) async {
    await selector.connect(device, link: link)
  }
  public func disconnect(_ device: DeviceID, link: any DeviceLink) async -> Bool {
    await selector.disconnect(device, link: link)
  }
  public func checkIn(_ checkIn: CheckIn) async -> ServerReply { await coordinator.checkIn(checkIn) }
  public func report(_ report: UpdateReport) async -> ServerReply { await coordinator.report(report) }
  public func dropped(device: DeviceID, round: Int) async {
    await coordinator.dropped(device: device, round: round)
  }
  public var modelLayout: WeightsLayout { get async { await coordinator.global.layout } }
}

/// The server loop as a `Service`: it sleeps on the wall clock between deadlines (tests drive
/// `drive(clock:now:)` with their own clock), ends the run as `interrupted` on graceful shutdown
/// (SIGTERM, SIGINT through a `ServiceGroup`), and throws when the coordinator gives up.
extension ServedRun: Service {
  public func run() async throws {
    let ending = await withGracefulShutdownHandler {
      await drive(clock: ContinuousClock())
    } onGracefulShutdown: {
      self.stop()
    }
    if case .failed(let failure) = ending { throw failure }
  }
}
