import CohortAggregation
import CohortCompression
public import CohortCore
public import CohortProtocol
public import CohortStore
public import Foundation
public import Logging
public import Metrics

/// Where a served asynchronous run persists what it acknowledges: the buffer's state at every
/// acknowledgement, each version with its state in one transaction (`RoundJournal`), and the
/// central evaluation of a version, measured after its commit.
public protocol AsyncJournal: Sendable {
  func commitRound(
    _ run: RunID, _ record: RoundRecord, checkpoint: Weights?, devices: [DeviceParticipation],
    lateReports: [Int: Int], resumeState: Data?, secureAggregation: [SecureAggregationStepRecord]
  ) throws(CohortError)
  func saveAsyncBuffer(_ run: RunID, version: Int, state: Data) throws(CohortError)
  func recordEvaluation(_ run: RunID, round: Int, _ evaluation: Evaluation) throws(CohortError)
}

extension ResultsStore: AsyncJournal {}

/// The coordinator of a run in `server.mode: async` (FedBuff): a thin actor around the pure
/// `AsyncBuffer`, the machine `cohort simulate` drives too, and `AsyncModelStep`, which makes
/// each version from a full buffer as the simulator does.
///
/// A device that checks in while a slot is free is handed the current version at once (its
/// task's `round` is that version) and has `server.windows.reporting` seconds to report. One
/// whose stream ends frees its slot, but the update it resends on a new stream still counts
/// until that deadline; one that misses it loses both. Every `server.async.buffer` folded
/// updates make the next version, committed as one row of `rounds` (round = version) with its
/// checkpoint.
///
/// Crash safety (the buffer's driver contract): an update is acknowledged only after the
/// buffer holding it is stored (`AsyncJournal.saveAsyncBuffer`), or, when it fills the buffer,
/// after the new version is committed with the buffer's state in one transaction. A write that
/// fails is rolled back in memory as well, and the device is not acknowledged (it may send the
/// same upload again); after `commitAttempts` failed writes in a row the coordinator stops.
/// A resumed run restores the last stored state: no acknowledged update is lost, and a replay
/// of one is refused as a duplicate.
public actor AsyncCoordinator: RunCoordinator {
  public struct Configuration: Sendable {
    public var plan: Plan
    public var population: String
    /// The run this coordinator commits versions to, when it has a store.
    public var run: RunID?
    /// Devices in the population, when known.
    public var populationSize: Int?
    /// The seed of central DP noise; nil draws it from libsodium (a served run).
    public var privacySeed: UInt64?
    /// Failed writes in a row before the coordinator gives up (see `failure`).
    public var commitAttempts: Int

    public init(
      plan: Plan, population: String = "default", run: RunID? = nil, populationSize: Int? = nil,
      privacySeed: UInt64? = nil, commitAttempts: Int = 6
    ) {
      self.plan = plan
      self.population = population
      self.run = run
      self.populationSize = populationSize
      self.privacySeed = privacySeed
      self.commitAttempts = commitAttempts
    }
  }

  /// What a resumed run restores: stored at every acknowledgement and with every version.
  struct SavedState: Sendable {
    var buffer: AsyncBuffer.Snapshot
    var strategy: StrategyState
    var clip: Double?
    var interval: AsyncVersionBook

    /// JSON, with the vectors as long as the model (the buffer's sum, the server optimizer's
    /// moments) as raw little-endian doubles in base64: about 11 bytes a parameter per vector,
    /// not 20 as JSON numbers, since the state is written at every acknowledgement.
    private struct Stored: Codable {
      var buffer: AsyncBuffer.Snapshot
      var sum: Data?
      var velocity: Data?
      var firstMoment: Data?
      var secondMoment: Data?
      var control: [Float]?
      var clip: Double?
      var interval: AsyncVersionBook
    }

    init(buffer: AsyncBuffer.Snapshot, strategy: StrategyState, clip: Double?, interval: AsyncVersionBook) {
      self.buffer = buffer
      self.strategy = strategy
      self.clip = clip
      self.interval = interval
    }

    func encoded() throws -> Data {
      var buffer = self.buffer
      var sum: Data?
      if case .collecting(var c) = buffer.state {
        sum = Self.raw(c.buffer.sum)
        c.buffer.sum = []
        buffer.state = .collecting(c)
      }
      return try JSONEncoder().encode(
        Stored(
          buffer: buffer, sum: sum, velocity: strategy.velocity.map(Self.raw),
          firstMoment: strategy.firstMoment.map(Self.raw), secondMoment: strategy.secondMoment.map(Self.raw),
          control: strategy.control, clip: clip, interval: interval))
    }

    init(decoding data: Data) throws {
      let stored = try JSONDecoder().decode(Stored.self, from: data)
      buffer = stored.buffer
      if case .collecting(var c) = buffer.state {
        c.buffer.sum = try Self.doubles(stored.sum ?? Data())
        buffer.state = .collecting(c)
      }
      strategy = StrategyState(
        velocity: try stored.velocity.map(Self.doubles),
        firstMoment: try stored.firstMoment.map(Self.doubles),
        secondMoment: try stored.secondMoment.map(Self.doubles), control: stored.control)
      clip = stored.clip
      interval = stored.interval
    }

    static func raw(_ values: [Double]) -> Data {
      var data = Data(capacity: values.count * 8)
      for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { data.append(contentsOf: $0) } }
      return data
    }

    static func doubles(_ data: Data) throws -> [Double] {
      guard data.count % 8 == 0 else { throw AsyncCoordinator.corrupt("a vector of \(data.count) bytes") }
      var values: [Double] = []
      values.reserveCapacity(data.count / 8)
      var bits: UInt64 = 0
      for (i, byte) in data.enumerated() {
        bits |= UInt64(byte) << (8 * UInt64(i % 8))
        if i % 8 == 7 {
          values.append(Double(bitPattern: bits))
          bits = 0
        }
      }
      return values
    }
  }

  /// A stored state the coordinator cannot use.
  static func corrupt(_ detail: String) -> CohortError {
    CohortError(
      .storage, "the stored state of the asynchronous run is unreadable: \(detail)",
      fix: "restore the results database from a backup, or start a new run with another --db")
  }

  public nonisolated let configuration: Configuration
  private var buffer: AsyncBuffer
  private let step: AsyncModelStep
  private let codec: UpdateCodec?
  private let rules: ReportRules
  private var strategyState: StrategyState
  private var clip: Double?
  private var interval: AsyncVersionBook
  /// When each training device must have reported (server time).
  private var deadlines = ReportingDeadlines()
  /// The earliest of them, kept as they change (`deadlinesChanged`).
  private var earliestDeadline: Double?
  private var rate: CheckInRate
  private let pace: PaceSteering
  private let store: (any AsyncJournal)?
  private let link: any DeviceLink
  private let evaluator: (any CentralEvaluator)?
  private let clock: any RoundClock
  private let logger: Logger
  private let metrics: CoordinatorMetrics
  public private(set) var global: Weights
  private var globalSHA256: String
  public private(set) var committedRounds: Int
  public private(set) var failure: CohortError?
  private var failedWrites = 0
  /// Versions committed and not yet evaluated and published: the run is not finished before.
  private var publishing = 0
  /// Committed versions' rows waiting for an earlier one to be published, and the next version
  /// to publish.
  private var ready: [Int: RoundRecord] = [:]
  private var nextToPublish: Int
  /// When the current interval started, on the machine's clock (a row's `realSeconds`).
  private var realStart = ContinuousClock.now
  private var roundObservers: [@Sendable (RoundRecord) -> Void] = []
  private var deadlineObserver: (@Sendable () -> Void)?
  private var observedDeadline: Double?

  /// - Parameters:
  ///   - initial: the model to start from: the plan's, or a resumed run's latest checkpoint.
  ///   - committed: versions the run has committed already (a resumed run).
  ///   - saved: the state stored by the run being resumed (`AsyncJournal`), nil for a new run.
  public init(
    configuration: Configuration, initial: Weights, committed: Int = 0, saved: Data? = nil,
    store: (any AsyncJournal)?, link: any DeviceLink, evaluator: (any CentralEvaluator)?,
    clock: any RoundClock, logger: Logger, metrics: any MetricsFactory = MetricsSystem.factory
  ) throws(CohortError) {
    let plan = configuration.plan
    guard let settings = AsyncBuffer.Configuration(plan: plan, dimension: initial.count),
      let step = AsyncModelStep(
        plan: plan, layout: initial.layout, population: configuration.populationSize,
        privacySeed: configuration.privacySeed)
    else {
      throw CohortError(
        .invalidConfiguration, "the asynchronous coordinator runs only plans with server.mode: async")
    }
    if let refusal = AsyncModelStep.refusal(of: plan) { throw refusal }
    self.configuration = configuration
    self.step = step
    let now = clock.now
    if let saved {
      let state: SavedState
      do {
        state = try SavedState(decoding: saved)
      } catch let error as CohortError {
        throw error
      } catch {
        throw Self.corrupt("\(error)")
      }
      buffer = try AsyncBuffer(configuration: settings, restoring: state.buffer)
      let dimension = initial.count
      for vector in [state.strategy.velocity, state.strategy.firstMoment, state.strategy.secondMoment] {
        guard (vector?.count ?? dimension) == dimension else {
          throw Self.corrupt(
            "a server optimizer state of \(vector!.count) values for \(dimension) parameters")
        }
      }
      guard state.clip.map({ $0.isFinite && $0 > 0 }) ?? true else {
        throw Self.corrupt("a clip of \(state.clip!)")
      }
      guard state.interval.isPlausible else { throw Self.corrupt("the counts since the last version") }
      strategyState = state.strategy
      clip = state.clip
      interval = state.interval.restored
      // Devices that were training when the server stopped may still report (on a new stream):
      // they have a reporting window from now.
      for device in buffer.training.keys.sorted() { deadlines[device] = now + plan.server.windows.reporting }
    } else {
      buffer = AsyncBuffer(configuration: settings)
      strategyState = step.strategy.initialState()
      clip = plan.privacy.isPrivate ? plan.privacy.initialClip : nil
      interval = AsyncVersionBook(startedAt: now)
    }
    codec =
      plan.compression.kind == .none
      ? nil : try? UpdateCodec(plan: plan.compression, dimension: initial.count)
    rules = ReportRules(plan: plan, layout: initial.layout, secure: false)
    let windows = plan.server.windows
    rate = CheckInRate(bucketSeconds: max(1, windows.selection))
    pace = PaceSteering(
      wanted: settings.bufferSize, selectionWindow: max(1, windows.selection),
      maximumRetry: windows.retryBound)
    self.store = store
    self.link = link
    self.evaluator = evaluator
    self.clock = clock
    self.logger = logger
    self.metrics = CoordinatorMetrics(
      factory: metrics, evaluated: evaluator != nil, asynchronous: true)
    self.committedRounds = committed
    nextToPublish = buffer.version + 1
    global = initial
    globalSHA256 = initial.sha256
  }

  // MARK: RunCoordinator

  public func observeRounds(_ observer: @escaping @Sendable (RoundRecord) -> Void) {
    roundObservers.append(observer)
  }

  public func observeDeadlines(_ observer: @escaping @Sendable () -> Void) {
    deadlineObserver = observer
  }

  public var status: Coordinator.Status {
    Coordinator.Status(
      isFinished: isFinished, globalRound: buffer.version, hasPendingCommit: false,
      nextDeadline: nextDeadline, failure: failure)
  }

  /// The last version is applied, and evaluated where the plan asks.
  public var isFinished: Bool {
    if case .finished = buffer.state { return publishing == 0 }
    return false
  }

  /// The current model version.
  public var globalRound: Int { buffer.version }
  public var nextDeadline: Double? { failure == nil ? earliestDeadline : nil }

  /// Nothing to open: devices are admitted as they check in.
  public func start() async {
    logger.info(
      "asynchronous run started",
      metadata: [
        "version": "\(buffer.version)", "concurrency": "\(buffer.configuration.concurrency)",
        "buffer": "\(buffer.configuration.bufferSize)",
      ])
    metrics.lastRound.record(buffer.version)
    metrics.training?.record(buffer.inFlightCount)
    deadlinesChanged()
  }

  /// A device checks in: it is handed the current version if a slot is free, or told when to
  /// come back.
  public func checkIn(_ checkIn: CheckIn) async -> ServerReply {
    metrics.checkIns.increment()
    if checkIn.protocolVersion != protocolVersion { return .rejected(.protocolVersion) }
    if checkIn.population != configuration.population { return .rejected(.wrongPopulation) }
    let now = clock.now
    rate.record(now: now)
    guard failure == nil else { return .retry(window: retryWindow(now: now)) }
    var assignment: TaskAssignment?
    for case .train(_, let version) in buffer.admit(checkIn.device) {
      let deadline = now + configuration.plan.server.windows.reporting
      deadlines[checkIn.device] = deadline
      interval.bytesDown += global.count * MemoryLayout<Float>.size
      assignment = TaskAssignment(
        task: RoundTask(round: version, checkpointSHA256: globalSHA256, reportingDeadline: deadline),
        checkpoint: global, evaluate: false, clipNorm: clip)
    }
    guard let assignment else { return .retry(window: retryWindow(now: now)) }
    metrics.training?.record(buffer.inFlightCount)
    deadlinesChanged()
    // The task is built before this suspension, so it carries the version the device was
    // admitted to even if a version is applied meanwhile.
    await link.assign(assignment, to: [checkIn.device])
    return .waitForTask(round: assignment.task.round)
  }

  /// A device reports the update it trained on the version its report names.
  public func report(_ report: UpdateReport) async -> ServerReply {
    let now = clock.now
    guard failure == nil else { return .retry(window: retryWindow(now: now)) }
    var refusal: Rejection?
    let admitted = rules.admit(report.decoded(by: codec, layout: global.layout)).get(else: report, &refusal)
    let device = report.device
    // Rolled back if what must be stored before the answer cannot be. Holding this copy makes the
    // fold copy the buffer's sum once: the same order of work as storing it, which follows.
    let before = (buffer: buffer, interval: interval, deadline: deadlines[device])
    interval.bytesUp += report.bytes
    let actions =
      refusal.map { buffer.refused(device, version: report.round, AsyncBuffer.Refusal(rule: $0)) }
      ?? buffer.report(
        AsyncBuffer.Report(
          device: device, version: report.round, update: admitted.update.values, examples: admitted.examples))
    var reply = ServerReply.rejected(.malformed)
    var staleness: Int?
    var application: AsyncBuffer.Application?
    var cancelled: [DeviceID] = []
    for action in actions {
      switch action {
      case .acknowledge(_, let s, _):
        reply = .accepted(round: report.round)
        staleness = s
        interval.folded(trainLoss: admitted.trainLoss, withinClip: admitted.withinClip)
      case .refuse(_, let reason):
        reply = .rejected(reason.rejection)
        interval.refused(reason)
      case .apply(let a):
        application = a
      case .cancel(let d):
        cancelled.append(d)
      case .train, .turnAway, .finish:
        break
      }
    }
    if buffer.trainingVersion(of: device) == nil { deadlines[device] = nil }
    var committed: (record: RoundRecord, model: Weights?)?
    if case .accepted = reply {
      do throws(CohortError) {
        if let application {
          committed = try commit(application, now: now)
        } else if let store, let run = configuration.run {
          try store.saveAsyncBuffer(run, version: buffer.version, state: try encodedState())
        }
        failedWrites = 0
      } catch {
        buffer = before.buffer
        interval = before.interval
        deadlines[device] = before.deadline
        return writeFailed(error, version: report.round, now: now)
      }
      if let staleness { metrics.staleness?.record(staleness) }
    }
    metrics.count(reply)
    metrics.training?.record(buffer.inFlightCount)
    for d in cancelled { deadlines[d] = nil }
    deadlinesChanged()
    if !cancelled.isEmpty { await link.release(cancelled, window: retryWindow(now: now)) }
    if let committed { await evaluateAndPublish(committed.record, model: committed.model) }
    return reply
  }

  /// A device's stream ended before it reported: its slot is free, but the update it was
  /// training may still come on a new stream (docs/PROTOCOL.md §2.7) while it is not too stale.
  public func dropped(device: DeviceID, round: Int) async {
    guard buffer.trainingVersion(of: device) == round else { return }
    drop(device, mayStillReport: true)
    metrics.training?.record(buffer.inFlightCount)
    deadlinesChanged()
  }

  /// Time passed: devices past their reporting deadline are dropped, and their updates refused.
  public func tick() async {
    let now = clock.now
    for device in deadlines.due(now: now) {
      if buffer.trainingVersion(of: device) != nil {
        drop(device, mayStillReport: false)
      } else {
        buffer.forget(device)
      }
    }
    metrics.training?.record(buffer.inFlightCount)
    deadlinesChanged()
  }

  /// Nothing to abandon: what was acknowledged is stored, and devices still training may report
  /// to the resumed run.
  public func shutdown() async {
    logger.info("asynchronous run stopped", metadata: ["version": "\(buffer.version)"])
  }

  // MARK: Internals

  /// A device that was training is gone. One whose stream ended keeps its deadline: its resent
  /// update counts until then (`tick` forgets it).
  private func drop(_ device: DeviceID, mayStillReport: Bool) {
    if !mayStillReport { deadlines[device] = nil }
    guard buffer.dropped(device, mayStillReport: mayStillReport) else { return }
    interval.dropped(device)
  }

  private func encodedState() throws(CohortError) -> Data {
    let state = SavedState(buffer: buffer.snapshot, strategy: strategyState, clip: clip, interval: interval)
    do {
      return try state.encoded()
    } catch {
      throw CohortError(.storage, "the asynchronous buffer's state could not be encoded: \(error)")
    }
  }

  /// Makes the next version from a full buffer and commits it with the buffer's state; moves
  /// the coordinator on only once the commit holds.
  private func commit(_ application: AsyncBuffer.Application, now: Double) throws(CohortError) -> (
    record: RoundRecord, model: Weights?
  ) {
    var state = strategyState
    var nextClip = clip
    let model = step.apply(
      application, to: global, state: &state, clip: &nextClip, unclipped: interval.unclipped)
    var record = interval.record(application, endedAt: now, model: model, evaluation: nil)
    record.realSeconds = (ContinuousClock.now - realStart) / .seconds(1)
    let devices = interval.devices(application)
    let previous = (strategyState, clip, interval)
    (strategyState, clip, interval) = (state, nextClip, AsyncVersionBook(startedAt: now))
    do {
      if let store, let run = configuration.run {
        try store.commitRound(
          run, record, checkpoint: model, devices: devices, lateReports: [:], resumeState: try encodedState(),
          secureAggregation: [])
      }
    } catch {
      (strategyState, clip, interval) = previous
      throw error
    }
    realStart = ContinuousClock.now
    // Evaluated and published after this returns; the run is not finished before.
    publishing += 1
    if let model {
      global = model
      globalSHA256 = model.sha256
      committedRounds += 1
    } else {
      logger.info("version abandoned", metadata: ["version": "\(record.round)", "reason": "not finite"])
    }
    return (record, model)
  }

  /// Evaluates a committed version where the plan asks and records the evaluation, then tells
  /// the observers and metrics of the rows in version order (a version evaluated slowly holds
  /// back the ones after it).
  private func evaluateAndPublish(_ record: RoundRecord, model: Weights?) async {
    var record = record
    if let model, let evaluator, step.evaluates(version: record.round) {
      let evaluation = await evaluator.evaluate(model)
      record.evalLoss = evaluation.loss
      record.evalAccuracy = evaluation.accuracy
      if let store, let run = configuration.run {
        do throws(CohortError) {
          try store.recordEvaluation(run, round: record.round, evaluation)
        } catch {
          // A measurement, not state: the version stays committed without it.
          logger.error(
            "could not record the evaluation",
            metadata: ["version": "\(record.round)", "error": "\(error.message)"])
        }
      }
    }
    ready[record.round] = record
    while let next = ready.removeValue(forKey: nextToPublish) {
      nextToPublish += 1
      metrics.written(next)
      logger.info(
        "version committed",
        metadata: [
          "version": "\(next.round)", "folded": "\(next.reported)",
          "mean staleness": "\(next.meanStaleness ?? 0)",
        ])
      for observer in roundObservers { observer(next) }
      publishing -= 1
    }
    if case .finished = buffer.state, publishing == 0 {
      logger.info("run finished", metadata: ["versions committed": "\(committedRounds)"])
    }
    deadlineObserver?()
  }

  /// A write that had to precede an answer failed: the device is not acknowledged (it may send
  /// the same upload again) and, after `commitAttempts` failures in a row, the run stops.
  private func writeFailed(_ error: CohortError, version: Int, now: Double) -> ServerReply {
    metrics.commitFailures.increment()
    failedWrites += 1
    logger.error(
      "could not store the asynchronous buffer",
      metadata: ["version": "\(version)", "error": "\(error.message)"])
    if failedWrites >= configuration.commitAttempts {
      failure = CohortError(
        .storage,
        "the asynchronous buffer could not be stored after \(failedWrites) attempts: \(error.message)",
        fix: "free disk space or repair the database, make sure no other process writes to it, then start "
          + "the same command again to resume from the last stored buffer")
      logger.critical("stopping: \(failure!.message)")
      deadlineObserver?()
    }
    return .retry(window: retryWindow(now: now))
  }

  private func retryWindow(now: Double) -> ClosedRange<Double> {
    if case .finished = buffer.state {
      let bound = configuration.plan.server.windows.retryBound
      return (now + bound / 2)...(now + bound)
    }
    return pace.retryWindow(now: now, nextSelectionOpens: now, checkInRate: rate.perSecond(now: now))
  }

  /// Wakes the server loop when the next deadline moved.
  private func deadlinesChanged() {
    earliestDeadline = deadlines.earliest()
    let next = nextDeadline
    guard next != observedDeadline else { return }
    observedDeadline = next
    deadlineObserver?()
  }
}

/// The reporting deadlines of the devices training, with the earliest found in amortised O(1)
/// however many train: every deadline is its admission time plus the same window, so admission
/// order is deadline order (a clock set back is the rare case, kept in order by an insertion).
struct ReportingDeadlines {
  private var byDevice: [DeviceID: Double] = [:]
  /// Deadlines in order; an entry whose device has another deadline now (or none) is stale and
  /// skipped.
  private var order: [(device: DeviceID, deadline: Double)] = []
  private var head = 0

  subscript(device: DeviceID) -> Double? {
    get { byDevice[device] }
    set {
      byDevice[device] = newValue
      guard let deadline = newValue else { return }
      if let last = order.last, last.deadline > deadline {
        let at = order[head...].firstIndex { $0.deadline > deadline } ?? order.endIndex
        order.insert((device, deadline), at: at)
      } else {
        order.append((device, deadline))
      }
    }
  }

  /// The earliest deadline, dropping stale entries from the front.
  mutating func earliest() -> Double? {
    while head < order.count, byDevice[order[head].device] != order[head].deadline { head += 1 }
    // Give the dropped front back once it is most of the array.
    if head > 64, head * 2 > order.count {
      order.removeFirst(head)
      head = 0
    }
    return head < order.count ? order[head].deadline : nil
  }

  /// The devices whose deadline is at or before `now`, earliest first; they are removed.
  mutating func due(now: Double) -> [DeviceID] {
    var due: [DeviceID] = []
    while let next = earliest(), next <= now {
      let device = order[head].device
      byDevice[device] = nil
      due.append(device)
    }
    return due
  }
}
