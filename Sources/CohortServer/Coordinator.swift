public import CohortAggregation
import CohortCompression
public import CohortCore
public import CohortProtocol
import CohortStore
public import Logging
public import Metrics

/// The population's coordinator: a thin actor around `RoundPipeline` that carries out what it
/// decides — sends tasks, hands accepted updates (or the round's secure sum) to the `Aggregator`,
/// which makes the next global model, and writes each closed round with its checkpoint to the
/// results store in one transaction.
public actor Coordinator {
  public nonisolated let configuration: Configuration
  var pipeline: RoundPipeline
  let aggregator: Aggregator
  /// Decodes updates that travel encoded (the plan compresses, without secure aggregation).
  private let codec: UpdateCodec?
  /// What a report may say (`server.reports`); under secure aggregation it carries no update.
  private let rules: ReportRules
  /// What the strategy carries between rounds (momentum, moments, SCAFFOLD's control variate), as
  /// the Aggregator last reported it.
  public internal(set) var strategyState: StrategyState
  let store: (any RoundJournal)?
  private let link: any DeviceLink
  let evaluator: (any CentralEvaluator)?
  let clock: any RoundClock
  let logger: Logger
  let metrics: CoordinatorMetrics
  /// Why the run ends before the plan's last round (its privacy budget), if it does.
  public nonisolated let stopReason: String?
  /// Why the coordinator stopped working (a round it could not commit); nil while it works.
  public internal(set) var failure: CohortError?

  /// The current global model and the round that produced it (0 for the initial model).
  public private(set) var global: Weights
  public private(set) var globalRound: Int
  private var globalSHA256: String

  /// Accepted updates not yet handed to the Aggregator.
  private var batch = UpdateBatch()
  var pending: ClosedRound?
  /// A resumed run's round that was handed over when its snapshot was taken.
  private var pendingRound: Int?
  /// The last error of a commit that is waiting for its retry.
  var commitError: CohortError?
  var roundObservers: [@Sendable (RoundRecord) -> Void] = []
  /// When each open round was configured, on the machine's clock: a record's `realSeconds`. A
  /// measurement only; no decision reads it.
  var realStarts: [Int: ContinuousClock.Instant] = [:]
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
    let strategy = ServerStrategy(
      plan: plan.server.strategy, layout: initial.layout, population: configuration.populationSize,
      equalWeights: plan.privacy.isPrivate)
    codec =
      plan.compression.kind == .none || plan.secureAggregation.enabled
      ? nil : try? UpdateCodec(plan: plan.compression, dimension: initial.count)
    rules = ReportRules(plan: plan, layout: initial.layout, secure: configuration.secureAggregation != nil)
    strategyState = snapshot?.strategyState ?? strategy.initialState()
    pipeline.controlParameters = strategyState.serverControl(layout: initial.layout)?.count ?? 0
    aggregator = Aggregator(strategy: strategy, state: strategyState)
    self.store = store
    self.link = link
    self.evaluator = evaluator
    self.clock = clock
    self.logger = logger
    self.metrics = CoordinatorMetrics(
      factory: metrics, evaluated: evaluator != nil, isPrivate: plan.privacy.isPrivate)
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
    // A replica claims the place from the others first: the cohort's target is the run's. The
    // selection may move on while the claim is in flight; a device only ever gets a place in
    // the round whose place it holds.
    if let link = configuration.replica, checkIn.protocolVersion == protocolVersion,
      checkIn.population == configuration.population
    {
      while let round = pipeline.openPlace(for: checkIn.device) {
        switch await link.claimPlace(round: round) {
        case .granted:
          if pipeline.openPlace(for: checkIn.device) == round {
            let (reply, actions) = pipeline.checkIn(checkIn, now: clock.now)
            await perform(actions)
            return reply
          }
          await link.releasePlace(round: round)
        case .full:
          await perform(pipeline.cohortFilledElsewhere(round: round, now: clock.now))
        case .unavailable:
          return .retry(window: pipeline.retryWindow(now: clock.now))
        }
      }
    }
    let (reply, actions) = pipeline.checkIn(checkIn, now: clock.now)
    await perform(actions)
    return reply
  }

  /// A device reports its update; an accepted one is folded into the round's sum.
  public func report(_ report: UpdateReport) async -> ServerReply {
    var refusal: Rejection?
    let report = rules.admit(report.decoded(by: codec, layout: global.layout)).get(else: report, &refusal)
    let (reply, actions) = pipeline.report(report, refusal: refusal, now: clock.now)
    metrics.count(reply)
    if case .accepted = reply, !rules.secure,
      let full = batch.add(
        ClientUpdate(
          device: report.device, update: report.update, examples: report.examples,
          lossAtGlobal: report.lossAtGlobal, controlDelta: report.controlDelta))
    {
      await aggregator.fold(full, round: report.round)
    }
    // Counted toward the shared goal only once the update is in the batch: a report that waited
    // here before would let another close the round without it.
    if case .accepted = reply, let link = configuration.replica {
      await link.countReport(round: report.round)
    }
    await perform(actions)
    return reply
  }

  /// A device of a round gave up or its connection was lost.
  public func dropped(device: DeviceID, round: Int) async {
    // A replica gives back the place of a device that leaves before its round starts.
    let waiting = configuration.replica != nil && pipeline.isWaiting(device, round: round)
    await perform(pipeline.dropped(device: device, round: round, now: clock.now))
    if waiting { await configuration.replica?.releasePlace(round: round) }
  }

  /// Time passed: closes whatever window is due, and retries a failed commit when its time comes.
  public func tick() async {
    await perform(pipeline.tick(now: clock.now))
  }

  /// Abandons whatever is in flight and ends the run.
  public func shutdown() async {
    await perform(pipeline.shutdown(now: clock.now))
  }

  // MARK: Actions

  func perform(_ actions: [RoundPipeline.Action]) async {
    defer {
      // A finished run wakes the loop too: with a store that commits asynchronously, the loop
      // may have read the status while the last commit was in flight, with no deadline left.
      if pipeline.nextDeadline != observedDeadline || failure != nil || pipeline.isFinished {
        observedDeadline = pipeline.nextDeadline
        deadlineObserver?()
      }
    }
    for action in actions {
      switch action {
      case .configure(let start):
        realStarts[start.round] = ContinuousClock.now
        _ = batch.take()
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
        if let link = configuration.replica {
          // The round's decision may wait for the other replicas: the device whose report closed
          // the round, and the server loop, must not.
          Task { await self.aggregateAsReplica(round: round, link: link) }
        } else {
          await aggregate(round: round)
        }
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
        failure = .commitAbandoned(round: round, attempts: attempts, cause: commitError)
        logger.critical("stopping: \(failure!.message)")
      case .finish:
        if let stopReason { logger.notice("\(stopReason)") }
        logger.info("run finished", metadata: ["rounds committed": "\(pipeline.committedRounds)"])
      }
    }
  }

  /// Accepted updates not yet folded, taken out of the batch.
  func takeBatch() -> [ClientUpdate] { batch.take() }

  /// The model `round` produced becomes the global model.
  func adoptGlobal(_ model: Weights, round: Int) {
    global = model
    globalRound = round
    globalSHA256 = model.sha256
  }

  /// Has the Aggregator turn the round's updates (or secure sum) into the next global model.
  private func aggregate(round: Int) async {
    let secure = await configuration.secureAggregation?.secureSum(
      round: round, devices: pipeline.reported(round: round))
    let result = await aggregator.finish(
      round: round, last: batch.take(), secureSum: secure, global: global,
      privacy: pipeline.configuration.privacy, clip: pipeline.clipNorm)
    strategyState = result.strategyState
    let (closed, actions) = pipeline.aggregated(round: round, result.aggregation, now: clock.now)
    var record = closed.record
    if let model = result.model {
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
          "detail": "\(result.aggregation.secureFailure ?? "")",
        ])
    }
    await hold(
      ClosedRound(
        record: record, model: result.model, participants: closed.participants, lateReports: [:],
        secureAggregation: result.aggregation.secureSteps))
    await perform(actions)
  }
}
