public import CohortAggregation
public import CohortCore
import CohortPrivacy
public import CohortProtocol
public import CohortStore
public import Foundation
public import Logging
public import Metrics

/// Evaluates a global model on the central test set (held by the simulator or the operator).
public protocol CentralEvaluator: Sendable {
  func evaluate(_ weights: Weights) async -> Evaluation
}

/// The population's coordinator: a thin actor around `RoundStateMachine` that carries out its
/// actions — sends tasks, folds accepted updates through the `Aggregator`, turns each closed
/// round into the next global model with the plan's strategy, and commits the round, its
/// metrics and its checkpoint to the results store in one transaction.
public actor Coordinator {
  public struct Configuration: Sendable {
    public var plan: Plan
    public var population: String
    /// The run this coordinator commits rounds to, when it has a store.
    public var run: RunID?
    /// Commit each closed round at once (network server). The simulator turns this off and
    /// calls `commitPending(resumeState:)` at a quiet point, so it can store its own state with
    /// the round.
    public var autoCommit: Bool
    /// Devices in the population, N; SCAFFOLD needs it.
    public var populationSize: Int?
    /// Runs secure aggregation when the plan enables it: reports then carry no update, and the
    /// round's sum comes from the protocol.
    public var secureAggregation: (any SecureAggregationDriver)?
    /// The seed of central DP noise (the simulator passes the scenario's, so runs reproduce);
    /// nil draws one from the system's generator.
    public var privacySeed: UInt64?
    /// How cohorts are drawn when the plan does not say (`server.cohort.sampling`).
    public var sampling: CohortSampling
    /// Seeds the draw of uniform cohorts.
    public var samplingSeed: UInt64
    /// Commit attempts for a round before the coordinator gives up (see `failure`), and the
    /// first wait between them in seconds (it doubles).
    public var commitAttempts: Int
    public var commitBackoff: Double

    public init(
      plan: Plan, population: String = "default", run: RunID? = nil, autoCommit: Bool = true,
      populationSize: Int? = nil, secureAggregation: (any SecureAggregationDriver)? = nil,
      privacySeed: UInt64? = nil, sampling: CohortSampling = .checkIn, samplingSeed: UInt64 = 0,
      commitAttempts: Int = 6, commitBackoff: Double = 1
    ) {
      self.privacySeed = privacySeed
      self.sampling = sampling
      self.samplingSeed = samplingSeed
      self.commitAttempts = commitAttempts
      self.commitBackoff = commitBackoff
      self.plan = plan
      self.population = population
      self.run = run
      self.autoCommit = autoCommit
      self.populationSize = populationSize
      self.secureAggregation = secureAggregation
    }

    /// The round machine's settings: the plan's server part (its rounds cut to the privacy
    /// budget) with this coordinator's population, sampling and seed.
    public var machine: RoundStateMachine.Configuration {
      RoundStateMachine.Configuration(
        plan: Coordinator.limitedServerPlan(plan, populationSize: populationSize).server,
        population: population,
        sampling: sampling, populationSize: populationSize, seed: samplingSeed,
        commitAttempts: commitAttempts,
        commitBackoff: commitBackoff)
    }
  }

  /// What the coordinator keeps about a round from configuration to commit.
  struct RoundBook: Sendable {
    var startedAt: Double
    var selected: [DeviceID]
    var reported: Set<DeviceID> = []
    var dropped: Set<DeviceID> = []
    var bytesDown = 0
    var bytesUp = 0
    var trainLossSum = 0.0
    var trainExamples = 0
    var evaluationLossSum = 0.0
    var evaluationCorrect = 0.0
    var evaluationExamples = 0
    /// Adaptive clipping: accepted reports whose update was within the clip.
    var withinClip = 0
  }

  /// A closed round whose record (and model) waits for `commitPending`.
  struct PendingCommit: Sendable {
    var record: RoundRecord
    var model: Weights?
    var participants: [DeviceParticipation]
    var secureAggregation: [SecureAggregationStepRecord] = []
  }

  /// The state a coordinator needs to continue exactly where it stood before `commitPending`.
  public struct Snapshot: Sendable {
    var machine: RoundStateMachine
    var books: [Int: RoundBook]
    var lateReports: [Int: Int]
    var pendingRound: Int?
    var strategyState: StrategyState
    /// Adaptive clipping's current clip C; nil without it.
    var clipNorm: Double?

    init(
      machine: RoundStateMachine, books: [Int: RoundBook], lateReports: [Int: Int], pendingRound: Int?,
      strategyState: StrategyState, clipNorm: Double?
    ) {
      self.strategyState = strategyState
      self.clipNorm = clipNorm
      self.machine = machine
      self.books = books
      self.lateReports = lateReports
      self.pendingRound = pendingRound
    }

    /// Writes the snapshot in the binary form of `SnapshotWriter`, dictionaries in key order.
    public func save(into w: inout SnapshotWriter) {
      machine.save(into: &w)
      w.write(books.count)
      for (round, b) in books.sorted(by: { $0.key < $1.key }) {
        w.write(round)
        w.write(b.startedAt)
        w.write(b.selected)
        w.write(b.reported.sorted())
        w.write(b.dropped.sorted())
        for v in [b.bytesDown, b.bytesUp, b.trainExamples, b.evaluationExamples] { w.write(v) }
        for v in [b.trainLossSum, b.evaluationLossSum, b.evaluationCorrect] { w.write(v) }
        if clipNorm != nil { w.write(b.withinClip) }
      }
      w.write(lateReports.count)
      for (round, n) in lateReports.sorted(by: { $0.key < $1.key }) {
        w.write(round)
        w.write(n)
      }
      w.write(pendingRound)
      for vector in [strategyState.velocity, strategyState.firstMoment, strategyState.secondMoment] {
        w.write(vector != nil)
        if let vector { w.write(vector) }
      }
      w.write(strategyState.control != nil)
      if let control = strategyState.control { w.write(control) }
      // Only plans with adaptive clipping carry a clip, so other snapshots keep their form.
      if let clipNorm { w.write(clipNorm) }
    }

    /// The snapshot `save` wrote, for a coordinator of `configuration`.
    public init(configuration: Configuration, restoring r: inout SnapshotReader) throws(CohortError) {
      let plan = configuration.plan
      let adaptive = plan.privacy.isCentral && plan.privacy.adaptiveClipping != nil
      machine = try RoundStateMachine(configuration: configuration.machine, restoring: &r)
      books = [:]
      for _ in 0..<(try r.count()) {
        let round = try r.int()
        var b = RoundBook(startedAt: try r.double(), selected: try r.ints())
        b.reported = Set(try r.ints())
        b.dropped = Set(try r.ints())
        b.bytesDown = try r.int()
        b.bytesUp = try r.int()
        b.trainExamples = try r.int()
        b.evaluationExamples = try r.int()
        b.trainLossSum = try r.double()
        b.evaluationLossSum = try r.double()
        b.evaluationCorrect = try r.double()
        if adaptive { b.withinClip = try r.int() }
        books[round] = b
      }
      lateReports = [:]
      for _ in 0..<(try r.count()) {
        let round = try r.int()
        lateReports[round] = try r.int()
      }
      pendingRound = try r.optionalInt()
      func vector() throws(CohortError) -> [Double]? { try r.bool() ? try r.doubles() : nil }
      strategyState = StrategyState(
        velocity: try vector(), firstMoment: try vector(), secondMoment: try vector(),
        control: try r.bool() ? try r.floats() : nil)
      clipNorm = adaptive ? try r.double() : nil
    }
  }

  /// The plan's server part with its rounds cut to what the privacy budget (`target_epsilon`)
  /// allows, and why it was cut.
  static func limitedServerPlan(_ plan: Plan, populationSize: Int?) -> (server: ServerPlan, reason: String?) {
    var server = plan.server
    guard
      let mechanism = CentralGaussianMechanism(
        plan: plan.privacy, expectedCohort: server.cohort.goal, populationSize: populationSize, seed: 0)
    else { return (server, nil) }
    let limit = mechanism.roundLimit(rounds: server.rounds)
    server.rounds = limit.rounds
    return (server, limit.reason)
  }

  public nonisolated let configuration: Configuration
  private var machine: RoundStateMachine
  private let aggregator: Aggregator
  private let strategy: ServerStrategy
  /// What the strategy carries between rounds (momentum, moments, SCAFFOLD's control variate).
  public private(set) var strategyState: StrategyState
  private let store: (any RoundJournal)?
  private let link: any DeviceLink
  private let evaluator: (any CentralEvaluator)?
  private let clock: any RoundClock
  private let logger: Logger
  /// Central DP: noise on each round's sum, the clip, the accountant.
  private let privacy: CentralGaussianMechanism?
  /// The clip C devices use this round (adaptive clipping moves it after each commit).
  public private(set) var clipNorm: Double
  /// Why the run ends before the plan's last round (its privacy budget), if it does.
  public nonisolated let stopReason: String?
  /// Why the coordinator stopped working (a round it could not commit); nil while it works.
  public private(set) var failure: CohortError?

  /// The current global model and the round that produced it (0 for the initial model).
  public private(set) var global: Weights
  public private(set) var globalRound: Int
  private var globalSHA256: String

  private var books: [Int: RoundBook] = [:]
  /// Accepted updates not yet handed to the Aggregator.
  private var unfolded: [ClientUpdate] = []
  private var unfoldedValues = 0
  static let foldBatchUpdates = 32
  static let foldBatchValues = 4 << 20
  /// Reports that arrived after their round closed, by round, until the next commit records them.
  private var lateReports: [Int: Int] = [:]
  private var pending: PendingCommit?
  private var pendingRound: Int?
  /// The last error of a commit that is waiting for its retry.
  private var commitError: CohortError?
  private var roundObservers: [@Sendable (RoundRecord) -> Void] = []

  private let checkIns: Counter
  private let reportsAccepted: Counter
  private let roundsCommitted: Counter
  private let roundsAbandoned: Counter
  private let commitFailures: Counter
  private let roundDuration: Metrics.Timer
  /// One counter per reason, so a rejection costs an increment, not a registration.
  private let reportsRejected: [Rejection: Counter]

  /// - Parameters:
  ///   - initial: the model to start from: the plan's initial weights, or the latest checkpoint
  ///     of a resumed run together with `resumingAfter` (its round) and `committed` (how many
  ///     rounds the run has committed; by default `resumingAfter`).
  public init(
    configuration: Configuration, initial: Weights, resumingAfter round: Int = 0, committed: Int? = nil,
    snapshot: Snapshot? = nil, store: (any RoundJournal)?, link: any DeviceLink,
    evaluator: (any CentralEvaluator)?, clock: any RoundClock, logger: Logger,
    metrics: any MetricsFactory = MetricsSystem.factory
  ) {
    self.configuration = configuration
    let plan = configuration.plan
    stopReason = Self.limitedServerPlan(plan, populationSize: configuration.populationSize).reason
    machine =
      snapshot?.machine
      ?? RoundStateMachine(configuration: configuration.machine, resumingAfter: round, committed: committed)
    privacy = CentralGaussianMechanism(
      plan: plan.privacy, expectedCohort: plan.server.cohort.goal,
      populationSize: configuration.populationSize,
      seed: configuration.privacySeed ?? UInt64.random(in: .min ... .max))
    clipNorm = snapshot?.clipNorm ?? plan.privacy.initialClip
    let serverStrategy = ServerStrategy(
      plan: plan.server.strategy, layout: initial.layout, population: configuration.populationSize,
      equalWeights: plan.privacy.isPrivate)
    strategy = serverStrategy
    aggregator = Aggregator(strategy: serverStrategy)
    strategyState = snapshot?.strategyState ?? serverStrategy.initialState()
    self.store = store
    self.link = link
    self.evaluator = evaluator
    self.clock = clock
    self.logger = logger
    global = initial
    globalRound = round
    globalSHA256 = initial.sha256
    if let snapshot {
      books = snapshot.books
      lateReports = snapshot.lateReports
      pendingRound = snapshot.pendingRound
    }
    checkIns = Counter(label: "cohort_check_ins_total", factory: metrics)
    reportsAccepted = Counter(label: "cohort_reports_accepted_total", factory: metrics)
    roundsCommitted = Counter(label: "cohort_rounds_committed_total", factory: metrics)
    roundsAbandoned = Counter(label: "cohort_rounds_abandoned_total", factory: metrics)
    commitFailures = Counter(label: "cohort_commit_failures_total", factory: metrics)
    roundDuration = Metrics.Timer(label: "cohort_round_duration_seconds", factory: metrics)
    reportsRejected = Dictionary(
      uniqueKeysWithValues: Rejection.allCases.map {
        (
          $0,
          Counter(
            label: "cohort_reports_rejected_total", dimensions: [("reason", $0.rawValue)], factory: metrics)
        )
      })
  }

  /// Runs `body` on this coordinator's executor, so a driver that calls the coordinator after
  /// every event (the simulator) does so without thread hops.
  public func isolated<T: Sendable>(_ body: @Sendable (isolated Coordinator) async -> T) async -> T {
    await body(self)
  }

  // MARK: Observation

  /// Calls `observer` with every round record as it is committed (progress bars, logs).
  public func observeRounds(_ observer: @escaping @Sendable (RoundRecord) -> Void) {
    roundObservers.append(observer)
  }

  /// What a driver checks after each event, in one call.
  public struct Status: Sendable {
    public var isFinished: Bool
    public var globalRound: Int
    public var hasPendingCommit: Bool
    public var nextDeadline: Double?
    /// Set once the coordinator has stopped working (see `Coordinator.failure`).
    public var failure: CohortError?
  }

  public var status: Status {
    Status(
      isFinished: machine.isFinished, globalRound: globalRound, hasPendingCommit: pending != nil,
      nextDeadline: machine.nextDeadline, failure: failure)
  }

  public var isFinished: Bool { machine.isFinished }
  /// When the next window closes, for the caller's timer or event queue.
  public var nextDeadline: Double? { machine.nextDeadline }
  public var hasPendingCommit: Bool { pending != nil }
  /// Rounds committed so far in this run (a resumed run counts those before the resume).
  public var committedRounds: Int { machine.committedRounds }

  // MARK: Events

  /// Opens the first round's selection (or, for a run resumed from a snapshot, finishes the
  /// commit the snapshot was taken before).
  public func start() async {
    if let round = pendingRound {
      pendingRound = nil
      await afterCommit(round: round)
      return
    }
    await perform(machine.start(now: clock.now))
  }

  /// A device checks in: it joins the cohort being gathered, or is told when to come back.
  public func checkIn(_ checkIn: CheckIn) async -> ServerReply {
    checkIns.increment()
    let (reply, actions) = machine.checkIn(checkIn, now: clock.now)
    await perform(actions)
    return reply
  }

  /// A device reports its update; an accepted one is folded into the round's sum.
  public func report(_ report: UpdateReport) async -> ServerReply {
    let now = clock.now
    // Under secure aggregation the update travels only inside the protocol, never in the clear.
    let secure = configuration.secureAggregation != nil
    let wellFormed = secure ? report.isWellFormedWithoutUpdate : report.isWellFormed(for: global.layout)
    let (reply, actions) = machine.report(
      device: report.device, round: report.round, isWellFormed: wellFormed, now: now)
    if var book = books[report.round] {
      book.bytesUp += report.bytes
      books[report.round] = book
    }
    switch reply {
    case .accepted:
      reportsAccepted.increment()
      if var book = books[report.round] {
        book.reported.insert(report.device)
        if report.withinClip == true { book.withinClip += 1 }
        book.trainLossSum += report.trainLoss * Double(report.examples)
        book.trainExamples += report.examples
        if let e = report.evaluation, e.examples > 0 {
          book.evaluationLossSum += e.loss * Double(e.examples)
          book.evaluationCorrect += e.accuracy * Double(e.examples)
          book.evaluationExamples += e.examples
        }
        books[report.round] = book
      }
      if secure { break }
      unfolded.append(
        ClientUpdate(
          device: report.device, update: report.update, examples: report.examples,
          lossAtGlobal: report.lossAtGlobal,
          controlDelta: report.controlDelta))
      unfoldedValues += report.update.count
      // Updates go to the Aggregator in batches: one hop per batch rather than per device,
      // while the batch stays small next to the cohort (the sum is never held per device).
      if unfoldedValues >= Self.foldBatchValues || unfolded.count >= Self.foldBatchUpdates {
        await flushFolds(round: report.round)
      }
    case .rejected(let reason):
      reportsRejected[reason]?.increment()
      if reason == .late { lateReports[report.round, default: 0] += 1 }
      logger.debug(
        "report rejected",
        metadata: ["device": "\(report.device)", "round": "\(report.round)", "reason": "\(reason)"])
    default:
      break
    }
    await perform(actions)
    return reply
  }

  /// A device of a round gave up or its connection was lost.
  public func dropped(device: DeviceID, round: Int) async {
    let now = clock.now
    if books[round]?.selected.contains(device) == true { books[round]?.dropped.insert(device) }
    await perform(machine.dropped(device: device, round: round, now: now))
  }

  /// Time passed: closes whatever window is due, and retries a failed commit when its time comes.
  public func tick() async {
    await perform(machine.tick(now: clock.now))
  }

  /// Abandons whatever is in flight and ends the run.
  public func shutdown() async {
    await perform(machine.shutdown(now: clock.now))
  }

  // MARK: Commit

  /// A closed round ready to be written: its record, its model (nil when abandoned), who took
  /// part, and late reports that arrived for earlier rounds since the last write.
  public struct ClosedRound: Sendable {
    public var record: RoundRecord
    public var model: Weights?
    public var participants: [DeviceParticipation]
    public var lateReports: [Int: Int]
    /// The round's secure-aggregation steps; empty without secure aggregation.
    public var secureAggregation: [SecureAggregationStepRecord]
  }

  /// Writes the closed round to the store with `resumeState`, then moves on to the next round.
  public func commitPending(resumeState: Data?) async throws(CohortError) {
    guard let p = pending else { return }
    if let store, let run = configuration.run {
      try store.commitRound(
        run, p.record, checkpoint: p.model, devices: p.participants, lateReports: lateReports,
        resumeState: resumeState, secureAggregation: p.secureAggregation)
    }
    _ = await advance()
  }

  /// Hands the closed round to the caller to write, and moves on to the next round at once. The
  /// simulator writes rounds in the background, in order, while the next cohort trains.
  public func takePending() async -> ClosedRound? {
    await advance()
  }

  /// Writes the pending round; a committed round that fails to write is retried by the machine's
  /// schedule (devices are told to come back meanwhile), an abandoned one is only logged.
  private func commitAutomatically() async {
    guard let p = pending else { return }
    do {
      try await commitPending(resumeState: nil)
      commitError = nil
    } catch {
      commitFailures.increment()
      commitError = error
      logger.error(
        "could not commit round", metadata: ["round": "\(p.record.round)", "error": "\(error.message)"])
      guard p.record.outcome == .committed else {
        // Nothing to retry for: the round has no model, and its record is the only loss.
        pending = nil
        return
      }
      await perform(machine.commitFailed(round: p.record.round, now: clock.now))
    }
  }

  private func advance() async -> ClosedRound? {
    guard let p = pending else { return nil }
    let closed = ClosedRound(
      record: p.record, model: p.model, participants: p.participants, lateReports: lateReports,
      secureAggregation: p.secureAggregation)
    lateReports = [:]
    pending = nil
    // Counted only once written: metrics never show a round the store does not have.
    if p.record.outcome == .committed {
      roundsCommitted.increment()
      roundDuration.recordSeconds(p.record.endedAt - p.record.startedAt)
    } else {
      roundsAbandoned.increment()
    }
    for observer in roundObservers { observer(p.record) }
    if p.record.outcome == .committed {
      await afterCommit(round: p.record.round)
    } else if machine.closingRound == p.record.round {
      // Aggregation gave no model (secure aggregation failed): the round closes without one.
      await perform(machine.closedWithoutModel(round: p.record.round, now: clock.now))
    }
    return closed
  }

  /// The state to store with the pending round, so a resumed run continues exactly from here.
  public func snapshot() -> Snapshot {
    Snapshot(
      machine: machine, books: books, lateReports: lateReports,
      pendingRound: pending?.record.outcome == .committed ? pending?.record.round : nil,
      strategyState: strategyState,
      clipNorm: configuration.plan.privacy.adaptiveClipping != nil && privacy != nil ? clipNorm : nil)
  }

  private func afterCommit(round: Int) async {
    await perform(machine.committed(round: round, now: clock.now))
  }

  // MARK: Actions

  private func perform(_ actions: [RoundStateMachine.Action]) async {
    for action in actions {
      switch action {
      case .configure(let round, let devices, let deadline):
        await configure(round: round, devices: devices, deadline: deadline)
      case .invite(let round, let count):
        await link.invite(round: round, count: count)
      case .release(let device, let window):
        await link.release([device], window: window)
      case .aggregate(let round, let counts):
        await close(round: round, counts: counts, abandoned: nil)
      case .abandon(let round, let reason, let counts):
        await close(round: round, counts: counts, abandoned: reason)
      case .retryCommit:
        await commitAutomatically()
      case .stop(let round, let attempts):
        let cause = commitError?.message ?? "the results store refused the write"
        failure = CohortError(
          .storage, "round \(round) could not be committed after \(attempts) attempts: \(cause)",
          fix: "free disk space or repair the database, make sure no other process writes to it, then start "
            + "the same command again to resume after the last committed round")
        logger.critical("stopping: \(failure!.message)")
      case .finish:
        if let stopReason { logger.notice("\(stopReason)") }
        logger.info("run finished", metadata: ["rounds committed": "\(machine.committedRounds)"])
      }
    }
  }

  private func flushFolds(round: Int) async {
    guard !unfolded.isEmpty else { return }
    let batch = unfolded
    unfolded = []
    unfoldedValues = 0
    await aggregator.fold(batch, round: round)
  }

  private func configure(round: Int, devices: [DeviceID], deadline: Double) async {
    let now = clock.now
    unfolded = []
    unfoldedValues = 0
    await aggregator.begin(round: round)
    let every = configuration.plan.server.evaluation.every
    let task = RoundTask(round: round, checkpointSHA256: globalSHA256, reportingDeadline: deadline)
    var book = RoundBook(startedAt: now, selected: devices)
    book.bytesDown = devices.count * global.count * MemoryLayout<Float>.size
    books[round] = book
    logger.debug("round configured", metadata: ["round": "\(round)", "devices": "\(devices.count)"])
    await link.assign(
      TaskAssignment(
        task: task, checkpoint: global, evaluate: round % every == 0,
        serverControl: strategyState.serverControl(layout: global.layout),
        clipNorm: privacy.map { _ in clipNorm }),
      to: devices)
  }

  private func close(round: Int, counts: RoundCounts, abandoned: AbandonReason?) async {
    let now = clock.now
    let book = books.removeValue(forKey: round)
    var record = RoundRecord(round: round, startedAt: book?.startedAt ?? now, endedAt: now)
    record.selected = counts.selected
    record.reported = counts.reported
    record.dropped = counts.dropped
    record.rejected = counts.rejected
    record.late = lateReports.removeValue(forKey: round) ?? 0
    record.bytesDown = book?.bytesDown ?? 0
    record.bytesUp = book?.bytesUp ?? 0
    if let book, book.trainExamples > 0 { record.trainLoss = book.trainLossSum / Double(book.trainExamples) }
    if let book, book.evaluationExamples > 0 {
      record.federatedEvalLoss = book.evaluationLossSum / Double(book.evaluationExamples)
      record.federatedEvalAccuracy = book.evaluationCorrect / Double(book.evaluationExamples)
      record.federatedEvalExamples = book.evaluationExamples
    }
    record.wallSeconds = now - record.startedAt
    var model: Weights?
    var secureSteps: [SecureAggregationStepRecord] = []
    var secureFailure: String?
    if abandoned == nil, let book {
      await flushFolds(round: round)
      if let driver = configuration.secureAggregation {
        let result = await driver.secureSum(round: round, devices: book.reported.sorted())
        secureSteps = result.steps
        record.bytesUp += result.steps.reduce(0) { $0 + $1.bytesUp }
        record.bytesDown += result.steps.reduce(0) { $0 + $1.bytesDown }
        record.rejected += result.rejectedMessages
        if let sum = result.weightedSum {
          await aggregator.foldSecureSum(
            sum, totalWeight: result.totalWeight, count: result.survivors.count, examples: result.examples,
            round: round)
        } else {
          secureFailure = result.failure ?? "secure aggregation gave no sum"
        }
      }
      var aggregate = await aggregator.finish(round: round)
      if secureFailure == nil {
        if let privacy, aggregate.count > 0 {
          // DP-FedAvg: noise on the sum of clipped updates, divided by the expected cohort.
          let clip = clipNorm
          aggregate.privatize(denominator: Double(privacy.expectedCohort)) {
            privacy.addNoise(to: &$0, clip: clip, round: round)
          }
        }
        model = strategy.nextGlobal(from: global, aggregate, state: &strategyState)
      }
    }
    if let model {
      record.outcome = .committed
      if let privacy {
        // ε counts the rounds released so far, this one included (abandoned attempts release nothing).
        record.epsilon = privacy.epsilon(afterRounds: machine.committedRounds + 1)
        let next = privacy.nextClip(after: round, clip: clipNorm, unclipped: book?.withinClip ?? 0)
        if next != clipNorm {
          logger.debug("clip adapted", metadata: ["round": "\(round)", "clip": "\(next)"])
        }
        clipNorm = next
      }
      global = model
      globalRound = round
      globalSHA256 = model.sha256
      if let evaluator,
        round % configuration.plan.server.evaluation.every == 0
          || machine.committedRounds + 1 == machine.configuration.rounds
      {
        let e = await evaluator.evaluate(model)
        record.evalLoss = e.loss
        record.evalAccuracy = e.accuracy
      }
    } else {
      record.outcome = .abandoned
      record.abandonReason =
        (abandoned ?? (secureFailure != nil ? .secureAggregationFailed : .tooFewReports)).rawValue
      logger.info(
        "round abandoned",
        metadata: [
          "round": "\(round)", "reason": "\(record.abandonReason ?? "")", "detail": "\(secureFailure ?? "")",
        ])
    }
    let participants = (book?.selected ?? []).map {
      DeviceParticipation(
        device: $0, reported: book?.reported.contains($0) ?? false,
        dropped: book?.dropped.contains($0) ?? false)
    }
    pending = PendingCommit(
      record: record, model: model, participants: participants, secureAggregation: secureSteps)
    if configuration.autoCommit { await commitAutomatically() }
  }
}
