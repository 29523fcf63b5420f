import CohortAggregation
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
  /// Where the run's status is kept (nil without a store).
  let store: (any FederationStore)?
  /// The leader lease this server holds on a shared store, and how long each grant lasts.
  let lease: (grant: LeaseGrant, seconds: Double)?
  /// This server is one replica of the run (`openReplica`).
  public let replica: ReplicaLink?
  let logger: Logger
  /// Wakes the deadline loop: a deadline changed, its timer fired, or a stop was asked for.
  private let wake: AsyncStream<Void>.Continuation
  private let wakeups: AsyncStream<Void>
  private let stopRequested = Mutex(false)
  /// A replica's lease, heartbeat and look at the others, while it serves.
  private let replication = Mutex<Task<Void, Never>?>(nil)

  /// Where a run stands when a server starts on it: found in the store, or new.
  struct Start {
    var run: RunID?
    var model: Weights
    var resumedAfter = 0
    var committed = 0
    var modelRound = 0
    /// An asynchronous run's stored buffer.
    var saved: Data?
    var replica: ReplicaLink?

    /// Goes on after the run's last recorded round (committed or not: round numbers are never
    /// reused), from `checkpoint`'s model when there is one.
    mutating func resume(after rounds: [RoundRecord], from checkpoint: (round: Int, weights: Weights)?) {
      resumedAfter = rounds.map(\.round).max() ?? 0
      committed = rounds.filter { $0.outcome == .committed }.count
      if let checkpoint {
        model = checkpoint.weights
        modelRound = checkpoint.round
      }
    }
  }

  /// - Parameters:
  ///   - initial: the model a new run starts from (a resumed run starts from its checkpoint).
  ///   - store: where rounds are committed and runs found.
  ///   - journal: where rounds are written, when not `store` itself (tests inject failures).
  ///   - evaluator: evaluates each new model centrally (a server's held-out test set), as the
  ///     simulator does, on the rounds `server.evaluation` names.
  public convenience init(
    configuration: Configuration, initial: Weights, store: ResultsStore?, journal: (any RoundJournal)? = nil,
    evaluator: (any CentralEvaluator)? = nil, clock: any RoundClock = WallClock(), logger: Logger,
    metrics: any MetricsFactory = MetricsSystem.factory
  ) throws(CohortError) {
    var start = Start(model: initial)
    if let store { start = try Self.start(configuration, initial: initial, in: store, logger: logger) }
    // A journal a test injects must take an asynchronous run's buffer writes too: without them
    // nothing acknowledged would be stored.
    var asyncJournal: (any AsyncJournal)? = store
    if let journal, configuration.plan.server.mode == .async {
      guard let j = journal as? any AsyncJournal else {
        throw CohortError(
          .invalidConfiguration, "server.mode: async stores its buffer, but the journal given cannot",
          fix: "give a journal that is an AsyncJournal")
      }
      asyncJournal = j
    }
    try self.init(
      configuration: configuration, start: start, store: store, lease: nil, journal: journal ?? store,
      asyncJournal: asyncJournal, evaluator: evaluator, clock: clock, logger: logger, metrics: metrics)
  }

  /// A run served from a store other servers may share (PostgreSQL): the run of the plan that
  /// did not finish is resumed, or a new one created, and this server takes its leader lease
  /// (named `holder`, renewed while it serves, released when it stops) before it serves; every
  /// round it commits carries the lease's fencing token, so once another server has taken the
  /// lease, no late commit of this one lands. Refused (`fenced`) while another server holds the
  /// lease.
  /// - Parameter run: only this run (a standby's, which must not start a new one): refused
  ///   (`notFound`) once it has finished.
  public static func open(
    configuration: Configuration, initial: Weights, shared store: any FederationStore, holder: String,
    run requested: RunID? = nil, leaseSeconds: Double = 30, evaluator: (any CentralEvaluator)? = nil,
    clock: any RoundClock = WallClock(), logger: Logger, metrics: any MetricsFactory = MetricsSystem.factory
  ) async throws(CohortError) -> ServedRun {
    let plan = configuration.plan
    guard plan.server.mode == .sync else {
      throw CohortError(
        .invalidConfiguration,
        "server.mode: async keeps its buffer in the SQLite results store only, for now",
        fix: "give --db a file for this plan, or use server.mode: sync with PostgreSQL")
    }
    var start = Start(model: initial)
    if let requested {
      guard try await store.run(requested).status != .finished else {
        throw CohortError(
          .notFound, "run \(requested) of plan \(plan.name) has finished",
          fix: "nothing is left to serve; start the server without --standby to begin a new run")
      }
      start.run = requested
    } else if let existing = try await store.resumableRun(planSHA256: plan.sha256) {
      start.run = existing.id
    } else {
      let scenario = Self.scenario(configuration)
      start.run = try await store.createRun(
        name: plan.name, scenario: scenario, createdAt: Date(), labels: RunLabels())
    }
    let run = start.run!
    guard
      let grant = try await store.acquireLease(run: run, holder: holder, now: Date(), duration: leaseSeconds)
    else {
      let current = try await store.lease(run)
      throw CohortError(
        .fenced,
        "run \(run) of plan \(plan.name) is served by another server (\(current?.holder ?? "unknown")), "
          + "whose lease runs until \(current.map { "\($0.expiresAt)" } ?? "now")",
        fix: "stop that server, or wait for its lease to run out (\(Int(leaseSeconds)) s after it stopped "
          + "renewing it), then start this one again: it resumes the run")
    }
    start.resume(after: try await store.rounds(run), from: try await store.latestCheckpoint(run))
    try await store.setStatus(run, .running, at: Date())
    if start.resumedAfter > 0 {
      logger.info("resuming run", metadata: ["run": "\(run)", "after round": "\(start.resumedAfter)"])
    }
    return try ServedRun(
      configuration: configuration, start: start, store: store, lease: (grant, leaseSeconds),
      journal: LeasedJournal(store: store, lease: grant), asyncJournal: nil, evaluator: evaluator,
      clock: clock, logger: logger, metrics: metrics)
  }

  /// Opens `run` as one replica of it: every replica of the run accepts devices, shares each
  /// round's cohort through the store, and the one holding the run's lease leads the round
  /// (`ReplicaLink`). Resumes after the run's last decided round with its committed model and
  /// strategy state.
  public static func openReplica(
    configuration: Configuration, initial: Weights, store: any ReplicaStore, replica: String, run: RunID,
    leaseSeconds: Double = 30, syncInterval: Double = 0.2, evaluator: (any CentralEvaluator)? = nil,
    clock: any RoundClock = WallClock(), logger: Logger, metrics: any MetricsFactory = MetricsSystem.factory
  ) async throws(CohortError) -> ServedRun {
    let plan = configuration.plan
    if let refusal = ReplicaRules.refusal(plan) { throw refusal }
    let status = try await store.run(run).status
    guard status != .finished else {
      throw CohortError(
        .notFound, "run \(run) of plan \(plan.name) has finished",
        fix: "start the replicas again to begin a new run")
    }
    // A run every replica had left (interrupted) is served again.
    if status != .running { try await store.setStatus(run, .running, at: Date()) }
    if let lease = try await store.lease(run), lease.expiresAt > Date(),
      !(try await store.replicas(run)).contains(where: { $0.replica == lease.holder })
    {
      throw CohortError(
        .fenced,
        "run \(run) of plan \(plan.name) is served by a server that is not a replica (\(lease.holder))",
        fix: "stop that server and start every server of the run with --replica, or serve without --replica")
    }
    var start = Start(run: run, model: initial)
    // The rounds first, then the model of the last committed one: a round committed between
    // the two reads is then played again here, not skipped with an older model.
    let rounds = try await store.rounds(run)
    var checkpoint: (round: Int, weights: Weights)?
    if let last = rounds.last(where: { $0.outcome == .committed })?.round {
      checkpoint = try await store.checkpoint(run, through: last)
    }
    start.resume(after: rounds, from: checkpoint)
    start.replica = ReplicaLink(
      configuration: .init(
        run: run, replica: replica, leaseSeconds: leaseSeconds, syncInterval: syncInterval, plan: plan),
      store: store, logger: logger, metrics: metrics)
    let served = try ServedRun(
      configuration: configuration, start: start, store: store, lease: nil, journal: nil, asyncJournal: nil,
      evaluator: evaluator, clock: clock, logger: logger, metrics: metrics)
    if let last = rounds.last(where: { $0.outcome == .committed }),
      let saved = try await store.resumeState(run, round: last.round),
      let coordinator = served.coordinator as? Coordinator
    {
      var r = SnapshotReader([UInt8](saved))
      if let state = try? StrategyState(restoring: &r) { await coordinator.resumeStrategy(state) }
    }
    if start.resumedAfter > 0 {
      logger.info("joining run", metadata: ["run": "\(run)", "after round": "\(start.resumedAfter)"])
    }
    return served
  }

  private init(
    configuration: Configuration, start: Start, store: (any FederationStore)?,
    lease: (grant: LeaseGrant, seconds: Double)?, journal: (any RoundJournal)?,
    asyncJournal: (any AsyncJournal)?,
    evaluator: (any CentralEvaluator)?, clock: any RoundClock, logger: Logger, metrics: any MetricsFactory
  ) throws(CohortError) {
    let plan = configuration.plan
    self.run = start.run
    self.store = store
    self.lease = lease
    self.replica = start.replica
    self.logger = logger
    resumedAfter = start.resumedAfter
    selector = Selector()
    if plan.server.mode == .async {
      coordinator = try AsyncCoordinator(
        configuration: .init(
          plan: plan, population: configuration.population, run: start.run,
          populationSize: configuration.populationSize, privacySeed: configuration.privacySeed,
          commitAttempts: configuration.commitAttempts),
        initial: start.model, committed: start.committed, saved: start.saved, store: asyncJournal,
        link: selector,
        evaluator: evaluator, clock: clock, logger: logger, metrics: metrics)
    } else {
      coordinator = Coordinator(
        configuration: .init(
          plan: plan, population: configuration.population, run: start.run, autoCommit: true,
          populationSize: configuration.populationSize, secureAggregation: configuration.secureAggregation,
          privacySeed: configuration.privacySeed, commitAttempts: configuration.commitAttempts,
          commitBackoff: configuration.commitBackoff, replica: start.replica),
        initial: start.model, resumingAfter: start.resumedAfter, committed: start.committed,
        modelRound: start.modelRound, store: journal, link: selector,
        evaluator: evaluator, clock: clock, logger: logger, metrics: metrics)
    }
    (wakeups, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
  }

  /// The run a server of this configuration continues in the SQLite `store`, or a new one there.
  static func start(_ configuration: Configuration, initial: Weights, in store: ResultsStore, logger: Logger)
    throws(CohortError) -> Start
  {
    let plan = configuration.plan
    var start = Start(model: initial)
    guard let existing = try Self.resumable(in: store, plan: plan) else {
      start.run = try store.createRun(
        name: plan.name, scenario: Self.scenario(configuration), createdAt: Date())
      return start
    }
    start.run = existing.id
    start.resume(after: try store.rounds(existing.id), from: try store.latestCheckpoint(existing.id))
    if plan.server.mode == .async { start.saved = try Self.asyncState(in: store, run: existing.id) }
    try store.setStatus(existing.id, .running, at: Date())
    logger.info("resuming run", metadata: ["run": "\(existing.id)", "after round": "\(start.resumedAfter)"])
    return start
  }

  /// What a served run records as its scenario: the plan, its path and the seed (a server has no
  /// data or population description of its own).
  public static func scenario(_ configuration: Configuration) -> Scenario {
    Scenario(
      planPath: configuration.planPath, plan: configuration.plan,
      data: .syntheticFedProx(DataSource.SyntheticData(alpha: 0, beta: 0, devices: 0)), partition: .natural,
      devices: PopulationPlan(), seed: configuration.seed)
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

  /// The seed a server of `plan` on a shared `store` runs with when the operator gives none: the
  /// seed of the run it resumes, or a new one from libsodium.
  public static func seed(inShared store: any FederationStore, plan: Plan) async throws(CohortError) -> UInt64
  {
    guard let run = try await store.resumableRun(planSHA256: plan.sha256) else {
      return SecureRandom.uint64()
    }
    return try await store.scenario(run.id).seed
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
    let replicating = await maintainingReplica(clock: clock)
    replication.withLock { $0 = replicating }
    defer { replicating?.cancel() }
    await coordinator.start()
    var iterator = wakeups.makeAsyncIterator()
    var timer: Task<Void, Never>?
    let renewal = renewingLease(clock: clock)
    defer {
      timer?.cancel()
      renewal?.cancel()
    }
    while true {
      let status = await coordinator.status
      // The lease is released in `end`: no renewal may land after it.
      if let failure = status.failure { return await end(.failed(failure), renewal: renewal) }
      if status.isFinished { return await end(.finished, renewal: renewal) }
      if stopRequested.withLock({ $0 }) { return await end(.stopped, renewal: renewal) }
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

  /// Renews the leader lease every third of its length while the run is served. A renewal that
  /// is refused (another server took the lease) is logged; this server's next commit is then
  /// fenced, and the coordinator stops after its attempts.
  private func renewingLease<C: Clock>(clock: C) -> Task<Void, Never>? where C.Duration == Duration {
    guard let lease, let store, let run else { return nil }
    let logger = self.logger
    return Task {
      while !Task.isCancelled {
        try? await clock.sleep(for: .seconds(lease.seconds / 3))
        if Task.isCancelled { return }
        do throws(CohortError) {
          let renewed = try await store.acquireLease(
            run: run, holder: lease.grant.holder, now: Date(), duration: lease.seconds)
          if renewed?.token != lease.grant.token {
            // Its commits would be refused: stop serving, so devices move to the new leader.
            logger.error(
              "another server has taken the lease on this run; stopping", metadata: ["run": "\(run)"])
            self.stop()
            return
          }
        } catch {
          logger.warning(
            "could not renew the lease", metadata: ["run": "\(run)", "error": "\(error.message)"])
        }
      }
    }
  }

  /// Asks `drive` to end: the round in flight is abandoned, committed rounds stay.
  /// A replica's look at the others, every sync interval: the lease and heartbeat (a third of the
  /// lease), the other replicas' check-in rate, and whether they filled the cohort gathering here
  /// or met the goal of the round training here.
  private func maintainingReplica<C: Clock>(clock: C) async -> Task<Void, Never>?
  where C.Duration == Duration {
    guard let replica, let coordinator = coordinator as? Coordinator else { return nil }
    let interval = replica.configuration.syncInterval
    let beat = replica.configuration.leaseSeconds / 3
    // The first beat before the first round: the lease is taken (or its holder known) at once.
    await coordinator.setOtherCheckInRate(await replica.beat(checkInRate: 0))
    return Task {
      await withDiscardingTaskGroup { group in
        // The lease and heartbeat on their own: a slow look at the cohort never delays a renewal.
        group.addTask {
          while !Task.isCancelled {
            try? await clock.sleep(for: .seconds(beat))
            if Task.isCancelled { return }
            await coordinator.setOtherCheckInRate(
              await replica.beat(checkInRate: await coordinator.checkInRate))
          }
        }
        group.addTask {
          while !Task.isCancelled {
            try? await clock.sleep(for: .seconds(interval))
            let (selecting, reporting) = await coordinator.replicaRounds
            if let round = selecting, await replica.cohortState(round: round).filled {
              await coordinator.cohortFilledElsewhere(round: round)
            }
            if let round = reporting, await replica.cohortState(round: round).goalMet {
              await coordinator.goalMetElsewhere(round: round)
            }
          }
        }
      }
    }
  }

  /// Gives the run's lease back when the server fails before it serves (its port is taken, say),
  /// so that another server need not wait for the lease to run out. Harmless once another server
  /// holds the lease: a release names this server's holder and token.
  public func releaseWithoutServing() async {
    if let lease, let store, let run {
      try? await store.releaseLease(run: run, holder: lease.grant.holder, token: lease.grant.token)
    }
    await replica?.resign()
  }

  public func stop() {
    stopRequested.withLock { $0 = true }
    wake.yield()
  }

  private func end(_ ending: Ending, renewal: Task<Void, Never>?) async -> Ending {
    renewal?.cancel()
    await renewal?.value
    if ending == .stopped { await coordinator.shutdown() }
    // A stopped or failed run is `interrupted`: the same command resumes it. The store may be
    // what failed, so this write is best effort.
    if let store, let run {
      // On a shared store, only a server that still holds the lease speaks for the run: a deposed
      // one must not mark the new leader's run interrupted (or finished).
      var leads = true
      if let lease { leads = (try? await store.lease(run))??.token == lease.grant.token }
      if let replica {
        // Stopped first, so that no renewal lands after the release.
        let replicating = replication.withLock { $0 }
        replicating?.cancel()
        await replicating?.value
        // A replica says the run finished (true whoever says it), or that it stopped when it is
        // the last replica alive; while others serve it, the run stays theirs.
        let alone = await !replica.othersAlive()
        leads = ending == .finished || alone
        await replica.resign()
      }
      if leads {
        try? await store.setStatus(run, ending == .finished ? .finished : .interrupted, at: Date())
      }
      // Another server may take the run over at once.
      if let lease, leads {
        try? await store.releaseLease(run: run, holder: lease.grant.holder, token: lease.grant.token)
      }
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
