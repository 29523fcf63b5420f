public import CohortAggregation
import CohortCompression
public import CohortCore
import CohortPrivacy
public import CohortProtocol
import CohortStore
public import Foundation
public import Logging
public import Metrics

/// Evaluates a global model on the central test set (held by the simulator or the operator).
public protocol CentralEvaluator: Sendable {
  func evaluate(_ weights: Weights) async -> Evaluation
}

/// The population's coordinator: a thin actor around `RoundPipeline` that carries out what it
/// decides — sends tasks, folds accepted updates through the `Aggregator`, turns each round's
/// aggregate into the next global model with the plan's strategy (and central DP noise), and
/// writes each closed round with its checkpoint to the results store in one transaction.
public actor Coordinator {
  public nonisolated let configuration: Configuration
  private var pipeline: RoundPipeline
  private let aggregator: Aggregator
  private let strategy: ServerStrategy
  /// Decodes updates that travel encoded (the plan compresses, without secure aggregation).
  private let codec: UpdateCodec?
  /// What the strategy carries between rounds (momentum, moments, SCAFFOLD's control variate).
  public private(set) var strategyState: StrategyState
  private let store: (any RoundJournal)?
  private let link: any DeviceLink
  private let evaluator: (any CentralEvaluator)?
  private let clock: any RoundClock
  private let logger: Logger
  private let metrics: CoordinatorMetrics
  /// Why the run ends before the plan's last round (its privacy budget), if it does.
  public nonisolated let stopReason: String?
  /// Why the coordinator stopped working (a round it could not commit); nil while it works.
  public private(set) var failure: CohortError?

  /// The current global model and the round that produced it (0 for the initial model).
  public private(set) var global: Weights
  public private(set) var globalRound: Int
  private var globalSHA256: String

  /// Accepted updates not yet handed to the Aggregator, and their values.
  private var unfolded: [ClientUpdate] = []
  private var unfoldedValues = 0
  static let foldBatchUpdates = 32
  static let foldBatchValues = 4 << 20
  private var pending: ClosedRound?
  /// A resumed run's round that was handed over when its snapshot was taken.
  private var pendingRound: Int?
  /// The last error of a commit that is waiting for its retry.
  private var commitError: CohortError?
  private var roundObservers: [@Sendable (RoundRecord) -> Void] = []
  /// Told when the next deadline changes, so a server loop sleeps until it and no longer.
  private var deadlineObserver: (@Sendable () -> Void)?
  private var observedDeadline: Double?

  /// - Parameters:
  ///   - initial: the model to start from: the plan's initial weights, or the latest checkpoint
  ///     of a resumed run together with `resumingAfter` (its last recorded round), `committed`
  ///     (how many rounds the run has committed; by default `resumingAfter`) and `modelRound`
  ///     (the round that produced the checkpoint; by default `resumingAfter`).
  public init(
    configuration: Configuration, initial: Weights, resumingAfter round: Int = 0, committed: Int? = nil,
    modelRound: Int? = nil,
    snapshot: Snapshot? = nil, store: (any RoundJournal)?, link: any DeviceLink,
    evaluator: (any CentralEvaluator)?, clock: any RoundClock, logger: Logger,
    metrics: any MetricsFactory = MetricsSystem.factory
  ) {
    self.configuration = configuration
    let plan = configuration.plan
    stopReason = configuration.roundLimit.reason
    let settings = configuration.pipeline
    pipeline =
      snapshot?.pipeline
      ?? RoundPipeline(
        configuration: settings,
        machine: RoundStateMachine(
          configuration: settings.machine, resumingAfter: round, committed: committed),
        clipNorm: plan.privacy.initialClip)
    pipeline.modelParameters = initial.count
    let serverStrategy = ServerStrategy(
      plan: plan.server.strategy, layout: initial.layout, population: configuration.populationSize,
      equalWeights: plan.privacy.isPrivate)
    strategy = serverStrategy
    codec =
      plan.compression.kind == .none || plan.secureAggregation.enabled
      ? nil : try? UpdateCodec(plan: plan.compression, dimension: initial.count)
    aggregator = Aggregator(strategy: serverStrategy)
    strategyState = snapshot?.strategyState ?? serverStrategy.initialState()
    self.store = store
    self.link = link
    self.evaluator = evaluator
    self.clock = clock
    self.logger = logger
    self.metrics = CoordinatorMetrics(factory: metrics)
    global = initial
    globalRound = modelRound ?? round
    globalSHA256 = initial.sha256
    pendingRound = snapshot?.pendingRound
  }

  /// Runs `body` on this coordinator's executor, so a driver that calls the coordinator after
  /// every event (the simulator) does so without thread hops.
  public func isolated<T: Sendable>(_ body: @Sendable (isolated Coordinator) async -> T) async -> T {
    await body(self)
  }

  /// Calls `observer` with every round record as it is written (progress bars, logs).
  public func observeRounds(_ observer: @escaping @Sendable (RoundRecord) -> Void) {
    roundObservers.append(observer)
  }

  /// Calls `observer` whenever the next deadline changes (a server loop wakes to sleep anew).
  public func observeDeadlines(_ observer: @escaping @Sendable () -> Void) {
    deadlineObserver = observer
  }

  public var status: Status {
    Status(
      isFinished: pipeline.isFinished, globalRound: globalRound, hasPendingCommit: pending != nil,
      nextDeadline: pipeline.nextDeadline, failure: failure)
  }

  public var isFinished: Bool { pipeline.isFinished }
  /// When the next window closes, for the caller's timer or event queue.
  public var nextDeadline: Double? { pipeline.nextDeadline }
  public var hasPendingCommit: Bool { pending != nil }
  /// Rounds committed so far in this run (a resumed run counts those before the resume).
  public var committedRounds: Int { pipeline.committedRounds }
  /// The clip C devices use this round (DP; adaptive clipping moves it after each commit).
  public var clipNorm: Double { pipeline.clipNorm }

  // MARK: Events

  /// Opens the first round's selection (or, for a run resumed from a snapshot, finishes the
  /// commit the snapshot was taken before).
  public func start() async {
    if let round = pendingRound {
      pendingRound = nil
      await perform(pipeline.committed(round: round, now: clock.now))
      return
    }
    await perform(pipeline.start(now: clock.now))
  }

  /// A device checks in: it joins the cohort being gathered, or is told when to come back.
  public func checkIn(_ checkIn: CheckIn) async -> ServerReply {
    metrics.checkIns.increment()
    let (reply, actions) = pipeline.checkIn(checkIn, now: clock.now)
    await perform(actions)
    return reply
  }

  /// A device reports its update; an accepted one is folded into the round's sum.
  public func report(_ report: UpdateReport) async -> ServerReply {
    let report = report.decoded(by: codec, layout: global.layout)
    // Under secure aggregation the update travels only inside the protocol, never in the clear.
    let secure = configuration.secureAggregation != nil
    let wellFormed = secure ? report.isWellFormedWithoutUpdate : report.isWellFormed(for: global.layout)
    let (reply, actions) = pipeline.report(report, isWellFormed: wellFormed, now: clock.now)
    metrics.count(reply)
    if case .accepted = reply, !secure {
      unfolded.append(
        ClientUpdate(
          device: report.device, update: report.update, examples: report.examples,
          lossAtGlobal: report.lossAtGlobal, controlDelta: report.controlDelta))
      unfoldedValues += report.update.count
      // Updates go to the Aggregator in batches: one hop per batch rather than per device,
      // while the batch stays small next to the cohort (the sum is never held per device).
      if unfoldedValues >= Self.foldBatchValues || unfolded.count >= Self.foldBatchUpdates {
        await flushFolds(round: report.round)
      }
    }
    await perform(actions)
    return reply
  }

  /// A device of a round gave up or its connection was lost.
  public func dropped(device: DeviceID, round: Int) async {
    await perform(pipeline.dropped(device: device, round: round, now: clock.now))
  }

  /// Time passed: closes whatever window is due, and retries a failed commit when its time comes.
  public func tick() async {
    await perform(pipeline.tick(now: clock.now))
  }

  /// Abandons whatever is in flight and ends the run.
  public func shutdown() async {
    await perform(pipeline.shutdown(now: clock.now))
  }

  // MARK: Commit

  /// Hands the closed round to the caller to write, and moves on to the next round at once. The
  /// simulator writes rounds in the background, in order, while the next cohort trains.
  public func takePending() async -> ClosedRound? {
    guard var closed = pending else { return nil }
    closed.lateReports = pipeline.takeLateReports()
    pending = nil
    // Counted only once written (or handed over to be): metrics never show a round the store lacks.
    metrics.written(closed.record)
    for observer in roundObservers { observer(closed.record) }
    if closed.record.outcome == .committed {
      await perform(pipeline.committed(round: closed.record.round, now: clock.now))
    }
    return closed
  }

  /// The state to store with the pending round, so a resumed run continues exactly from here.
  public func snapshot() -> Snapshot {
    Snapshot(
      pipeline: pipeline, pendingRound: pending?.record.outcome == .committed ? pending?.record.round : nil,
      strategyState: strategyState)
  }

  /// Writes the pending round with `resumeState` and moves on (for a driver that stores its own
  /// state with each round and writes synchronously).
  public func commitPending(resumeState: Data?) async throws(CohortError) {
    guard let p = pending else { return }
    if let store, let run = configuration.run {
      try store.commitRound(
        run, p.record, checkpoint: p.model, devices: p.participants, lateReports: pipeline.lateReportsPending,
        resumeState: resumeState, secureAggregation: p.secureAggregation)
    }
    _ = await takePending()
  }

  /// Writes the pending round; a committed round that fails to write is retried on the
  /// pipeline's schedule (devices are told to come back meanwhile), an abandoned one is logged.
  private func commitPending() async {
    guard let p = pending else { return }
    do throws(CohortError) {
      try await commitPending(resumeState: nil)
      commitError = nil
    } catch {
      metrics.commitFailures.increment()
      commitError = error
      logger.error(
        "could not commit round", metadata: ["round": "\(p.record.round)", "error": "\(error.message)"])
      guard p.record.outcome == .committed else {
        // Nothing to retry for: the round has no model, and its record is the only loss.
        pending = nil
        return
      }
      await perform(pipeline.commitFailed(round: p.record.round, now: clock.now))
    }
  }

  // MARK: Actions

  private func perform(_ actions: [RoundPipeline.Action]) async {
    defer {
      if pipeline.nextDeadline != observedDeadline || failure != nil {
        observedDeadline = pipeline.nextDeadline
        deadlineObserver?()
      }
    }
    for action in actions {
      switch action {
      case .configure(let start):
        unfolded = []
        unfoldedValues = 0
        await aggregator.begin(round: start.round)
        logger.debug(
          "round configured", metadata: ["round": "\(start.round)", "devices": "\(start.devices.count)"])
        let task = RoundTask(
          round: start.round, checkpointSHA256: globalSHA256, reportingDeadline: start.reportingDeadline)
        await link.assign(
          TaskAssignment(
            task: task, checkpoint: global, evaluate: start.evaluate,
            serverControl: strategyState.serverControl(layout: global.layout), clipNorm: start.clipNorm),
          to: start.devices)
      case .aggregate(let round):
        await aggregate(round: round)
      case .closed(let closed):
        logger.info(
          "round abandoned",
          metadata: ["round": "\(closed.record.round)", "reason": "\(closed.record.abandonReason ?? "")"])
        await hold(
          ClosedRound(
            record: closed.record, model: nil, participants: closed.participants, lateReports: [:],
            secureAggregation: []))
      case .invite(let round, let count):
        await link.invite(round: round, count: count)
      case .release(let device, let window):
        await link.release([device], window: window)
      case .retryCommit:
        await commitPending()
      case .stop(let round, let attempts):
        let cause = commitError?.message ?? "the results store refused the write"
        failure = CohortError(
          .storage, "round \(round) could not be committed after \(attempts) attempts: \(cause)",
          fix: "free disk space or repair the database, make sure no other process writes to it, then start "
            + "the same command again to resume after the last committed round")
        logger.critical("stopping: \(failure!.message)")
      case .finish:
        if let stopReason { logger.notice("\(stopReason)") }
        logger.info("run finished", metadata: ["rounds committed": "\(pipeline.committedRounds)"])
      }
    }
  }

  /// Keeps a closed round until it is written (at once on a server, when the simulator asks).
  private func hold(_ closed: ClosedRound) async {
    pending = closed
    if configuration.autoCommit { await commitPending() }
  }

  private func flushFolds(round: Int) async {
    guard !unfolded.isEmpty else { return }
    let batch = unfolded
    unfolded = []
    unfoldedValues = 0
    await aggregator.fold(batch, round: round)
  }

  /// Turns the round's folded updates (or secure sum) into the next global model.
  private func aggregate(round: Int) async {
    await flushFolds(round: round)
    var result = RoundPipeline.Aggregation(producedModel: false)
    var model: Weights?
    if let driver = configuration.secureAggregation {
      let secure = await driver.secureSum(round: round, devices: pipeline.reported(round: round))
      result.secureSteps = secure.steps
      result.secureRejected = secure.rejectedMessages
      if let sum = secure.weightedSum {
        await aggregator.foldSecureSum(
          sum, totalWeight: secure.totalWeight, count: secure.survivors.count, examples: secure.examples,
          round: round)
      } else {
        result.secureFailure = secure.failure ?? "secure aggregation gave no sum"
      }
    }
    var aggregate = await aggregator.finish(round: round)
    if result.secureFailure == nil {
      if let privacy = pipeline.configuration.privacy, aggregate.count > 0 {
        // DP-FedAvg: noise on the sum of clipped updates, divided by the expected cohort.
        let clip = pipeline.clipNorm
        aggregate.privatize(denominator: Double(privacy.expectedCohort)) {
          privacy.addNoise(to: &$0, clip: clip, round: round)
        }
      }
      model = strategy.nextGlobal(from: global, aggregate, state: &strategyState)
    }
    result.producedModel = model != nil
    let (closed, actions) = pipeline.aggregated(round: round, result, now: clock.now)
    var record = closed.record
    if let model {
      global = model
      globalRound = round
      globalSHA256 = model.sha256
      if let evaluator, closed.evaluate {
        let e = await evaluator.evaluate(model)
        record.evalLoss = e.loss
        record.evalAccuracy = e.accuracy
      }
    } else {
      logger.info(
        "round abandoned",
        metadata: [
          "round": "\(round)", "reason": "\(record.abandonReason ?? "")",
          "detail": "\(result.secureFailure ?? "")",
        ])
    }
    await hold(
      ClosedRound(
        record: record, model: model, participants: closed.participants, lateReports: [:],
        secureAggregation: result.secureSteps))
    await perform(actions)
  }
}
