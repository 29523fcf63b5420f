public import CohortCore
public import CohortPrivacy

/// Everything the server decides about rounds, as one pure value: the round machine (selection,
/// pace steering, deadlines, commits), each round's book from configuration to close (who took
/// part, bytes, losses, federated evaluation), late reports, the evaluation schedule, the DP clip
/// and its adaptation, and the record each round ends with.
///
/// The `Coordinator` only carries out what it asks for: sending tasks, folding updates, running
/// the strategy and secure aggregation, evaluating, writing to the store. The simulator and the
/// network server drive the same pipeline, so they decide alike.
public struct RoundPipeline: Sendable {
  public struct Configuration: Sendable {
    public var machine: RoundStateMachine.Configuration
    /// Central evaluation every this many rounds (and after the last round to commit).
    public var evaluationEvery: Int
    /// Central or distributed DP: the clip, its adaptation and the accountant.
    public var privacy: CentralGaussianMechanism?

    public init(
      machine: RoundStateMachine.Configuration, evaluationEvery: Int, privacy: CentralGaussianMechanism?
    ) {
      self.machine = machine
      self.evaluationEvery = max(1, evaluationEvery)
      self.privacy = privacy
    }
  }

  /// What a round's cohort is told when it starts.
  public struct RoundStart: Sendable, Hashable {
    public var round: Int
    public var devices: [DeviceID]
    public var reportingDeadline: Double
    /// Devices also evaluate the model they receive on their own test data.
    public var evaluate: Bool
    /// The clip C devices use (DP), nil without it.
    public var clipNorm: Double?
  }

  /// A round that has ended, ready to be written: its record, and who took part.
  public struct ClosedRound: Sendable, Hashable {
    public var record: RoundRecord
    public var participants: [DeviceParticipation]
    /// The new model is to be evaluated on the central test set.
    public var evaluate: Bool
  }

  /// What aggregation gave, for the record.
  public struct Aggregation: Sendable, Hashable {
    /// The strategy produced a new global model.
    public var producedModel: Bool
    /// Secure aggregation's steps, the bytes they moved and the messages refused.
    public var secureSteps: [SecureAggregationStepRecord]
    public var secureRejected: Int
    /// Why secure aggregation gave no sum.
    public var secureFailure: String?
    /// The strategy's model had a non-finite value and was discarded.
    public var nonFiniteModel = false

    public init(
      producedModel: Bool, secureSteps: [SecureAggregationStepRecord] = [], secureRejected: Int = 0,
      secureFailure: String? = nil
    ) {
      self.producedModel = producedModel
      self.secureSteps = secureSteps
      self.secureRejected = secureRejected
      self.secureFailure = secureFailure
    }
  }

  public enum Action: Sendable, Hashable {
    /// Send the round's task and the current model to its cohort.
    case configure(RoundStart)
    /// Aggregate the round's updates, then call `aggregated(round:_:now:)`.
    case aggregate(round: Int)
    /// The round ended without a model: write this record.
    case closed(ClosedRound)
    case invite(round: Int, count: Int)
    case release(device: DeviceID, window: ClosedRange<Double>)
    case retryCommit(round: Int)
    case stop(round: Int, attempts: Int)
    case finish
  }

  /// What the pipeline keeps about a round from configuration to close.
  struct RoundBook: Sendable, Hashable {
    var startedAt: Double
    var selected: [DeviceID]
    var reported: Set<DeviceID> = []
    var dropped: Set<DeviceID> = []
    /// Counts, bytes and the sums behind the round's losses (what a replica's tally carries).
    var sums = RoundSums()
    /// Each accepted report's evaluation (with examples), by device: the sums above, one by one.
    var evaluations: [DeviceID: Evaluation] = [:]
    /// Adaptive clipping: accepted reports whose update was within the clip.
    var withinClip = 0
  }

  public let configuration: Configuration
  /// Values in the model, for the bytes each task costs (the shell knows the model).
  public var modelParameters = 0
  /// Values of the server's control variate sent with each task beside the model (SCAFFOLD's c;
  /// 0 for other strategies), counted in the bytes each task costs.
  public var controlParameters = 0
  public private(set) var machine: RoundStateMachine
  var books: [Int: RoundBook] = [:]
  /// Reports that arrived after their round closed, by round, until a write takes them.
  var lateReports: [Int: Int] = [:]
  /// The clip C devices use now (adaptive clipping moves it after each round with a model).
  public private(set) var clipNorm: Double

  public init(configuration: Configuration, machine: RoundStateMachine, clipNorm: Double) {
    self.configuration = configuration
    self.machine = machine
    self.clipNorm = clipNorm
  }

  public var committedRounds: Int { machine.committedRounds }
  /// Devices whose report for `round` was accepted, in device order (secure aggregation's cohort).
  public func reported(round: Int) -> [DeviceID] { books[round]?.reported.sorted() ?? [] }
  public var isFinished: Bool { machine.isFinished }
  public var nextDeadline: Double? { machine.nextDeadline }

  // MARK: Events

  public mutating func start(now: Double) -> [Action] { translate(machine.start(now: now), now: now) }

  public mutating func checkIn(_ checkIn: CheckIn, now: Double) -> (reply: ServerReply, actions: [Action]) {
    let (reply, actions) = machine.checkIn(checkIn, now: now)
    return (reply, translate(actions, now: now))
  }

  /// A report arrives; `isWellFormed` is the caller's check of its update against the model.
  public mutating func report(_ report: UpdateReport, isWellFormed: Bool, now: Double) -> (
    reply: ServerReply, actions: [Action]
  ) {
    self.report(report, refusal: isWellFormed ? nil : .malformed, now: now)
  }

  /// A report arrives; `refusal` is the caller's verdict on its content (`ReportRules`), nil
  /// when it may count. Bytes count whatever the answer; an accepted report's losses and
  /// evaluation enter the book.
  public mutating func report(_ report: UpdateReport, refusal: Rejection?, now: Double) -> (
    reply: ServerReply, actions: [Action]
  ) {
    let (reply, actions) = machine.report(
      device: report.device, round: report.round, refusal: refusal, now: now)
    books[report.round]?.sums.bytesUp += report.bytes
    switch reply {
    case .accepted:
      guard var book = books[report.round] else { break }
      book.reported.insert(report.device)
      if report.withinClip == true { book.withinClip += 1 }
      book.sums.trainLossSum += report.trainLoss * Double(report.examples)
      book.sums.trainExamples += report.examples
      if let e = report.evaluation, e.examples > 0 {
        book.sums.evaluationLossSum += e.loss * Double(e.examples)
        book.sums.evaluationCorrect += e.accuracy * Double(e.examples)
        book.sums.evaluationExamples += e.examples
        book.evaluations[report.device] = e
      }
      books[report.round] = book
    case .rejected(.late):
      lateReports[report.round, default: 0] += 1
    default:
      break
    }
    return (reply, translate(actions, now: now))
  }

  // MARK: Replicas

  /// Shared cohort (`RoundStateMachine.Configuration.sharedCohort`): see the machine's methods.
  public func openPlace(for device: DeviceID) -> Int? { machine.openPlace(for: device) }

  public mutating func cohortFilledElsewhere(round: Int, now: Double) -> [Action] {
    translate(machine.cohortFilledElsewhere(round: round, now: now), now: now)
  }

  public mutating func goalMetElsewhere(round: Int, now: Double) -> [Action] {
    translate(machine.goalMetElsewhere(round: round, now: now), now: now)
  }

  public mutating func setOtherCheckInRate(_ rate: Double) {
    machine.otherCheckInRate = rate.isFinite ? max(0, rate) : 0
  }

  public func checkInRate(now: Double) -> Double { machine.checkInRate(now: now) }

  /// Whether `device` waits in `round`'s selection (it has a place, the round has not started).
  public func isWaiting(_ device: DeviceID, round: Int) -> Bool { machine.isWaiting(device, round: round) }

  /// When a device turned away now should come back (pace steering).
  public func retryWindow(now: Double) -> ClosedRange<Double> { machine.retryWindow(now: now) }

  /// The round currently gathering devices, and the one training.
  public var selectingRound: Int? { machine.selectingRound }
  public var reportingRound: Int? { machine.reportingRound }

  /// What this replica saw of `round` (an aggregated round's book), for the leader to combine.
  public func tally(round: Int) -> RoundTally {
    guard let book = books[round] else { return RoundTally() }
    var t = RoundTally()
    t.sums = book.sums
    t.participants = book.selected.map {
      DeviceParticipation(
        device: $0, reported: book.reported.contains($0), dropped: book.dropped.contains($0),
        evaluation: book.evaluations[$0])
    }
    return t
  }

  /// The leader: the round's book becomes the whole cohort's (every replica's tally combined), so
  /// the record it writes counts every device, loss and byte of the round.
  public mutating func adopt(_ tally: RoundTally, round: Int) {
    guard var book = books[round] else { return }
    book.sums = tally.sums
    book.selected = tally.participants.map(\.device)
    book.reported = Set(tally.participants.filter(\.reported).map(\.device))
    book.dropped = Set(tally.participants.filter(\.dropped).map(\.device))
    book.evaluations = Dictionary(
      tally.participants.compactMap { p in p.evaluation.map { (p.device, $0) } },
      uniquingKeysWith: { a, _ in a })
    books[round] = book
  }

  public mutating func dropped(device: DeviceID, round: Int, now: Double) -> [Action] {
    if books[round]?.selected.contains(device) == true { books[round]?.dropped.insert(device) }
    return translate(machine.dropped(device: device, round: round, now: now), now: now)
  }

  public mutating func tick(now: Double) -> [Action] { translate(machine.tick(now: now), now: now) }

  public mutating func shutdown(now: Double) -> [Action] { translate(machine.shutdown(now: now), now: now) }

  /// The shell aggregated the round it was told to: its record, with ε and the next clip when DP
  /// applies. A round without a model closes here; one with a model waits for `committed`.
  public mutating func aggregated(round: Int, _ aggregation: Aggregation, now: Double) -> (
    closed: ClosedRound, actions: [Action]
  ) {
    let counts = books[round]?.sums.counts ?? RoundCounts()
    let withinClip = books[round]?.withinClip ?? 0
    var closed = close(round: round, counts: counts, abandoned: nil, now: now)
    closed.record.bytesUp += aggregation.secureSteps.reduce(0) { $0 + $1.bytesUp }
    closed.record.bytesDown += aggregation.secureSteps.reduce(0) { $0 + $1.bytesDown }
    closed.record.rejected += aggregation.secureRejected
    guard aggregation.producedModel else {
      closed.record.outcome = .abandoned
      closed.record.abandonReason =
        (aggregation.secureFailure != nil
        ? AbandonReason.secureAggregationFailed
        : aggregation.nonFiniteModel ? .nonFiniteModel : .tooFewReports)
        .rawValue
      return (closed, translate(machine.closedWithoutModel(round: round, now: now), now: now))
    }
    let released = machine.committedRounds + 1
    if let privacy = configuration.privacy {
      // ε counts the rounds released so far, this one included (abandoned attempts release nothing).
      closed.record.epsilon = privacy.epsilon(afterRounds: released)
      clipNorm = privacy.nextClip(after: round, clip: clipNorm, unclipped: withinClip)
    }
    closed.evaluate = round % configuration.evaluationEvery == 0 || released == configuration.machine.rounds
    return (closed, [])
  }

  public mutating func committed(round: Int, now: Double) -> [Action] {
    translate(machine.committed(round: round, now: now), now: now)
  }

  public mutating func commitFailed(round: Int, now: Double) -> [Action] {
    translate(machine.commitFailed(round: round, now: now), now: now)
  }

  /// Late reports for rounds already closed, by round, not yet written.
  public var lateReportsPending: [Int: Int] { lateReports }

  /// Late reports for rounds already written, handed to the next write and forgotten.
  public mutating func takeLateReports() -> [Int: Int] {
    defer { lateReports = [:] }
    return lateReports
  }

  // MARK: Transitions

  private mutating func translate(_ actions: [RoundStateMachine.Action], now: Double) -> [Action] {
    actions.map { action -> Action in
      switch action {
      case .configure(let round, let devices, let deadline):
        var book = RoundBook(startedAt: now, selected: devices)
        book.sums.bytesDown = devices.count * (modelParameters + controlParameters) * MemoryLayout<Float>.size
        book.sums.counts.selected = devices.count
        books[round] = book
        return .configure(
          RoundStart(
            round: round, devices: devices, reportingDeadline: deadline,
            evaluate: round % configuration.evaluationEvery == 0,
            clipNorm: configuration.privacy.map { _ in clipNorm }))
      case .aggregate(let round, let counts):
        books[round]?.sums.counts = counts
        return .aggregate(round: round)
      case .abandon(let round, let reason, let counts):
        return .closed(close(round: round, counts: counts, abandoned: reason, now: now))
      case .invite(let round, let count): return .invite(round: round, count: count)
      case .release(let device, let window): return .release(device: device, window: window)
      case .retryCommit(let round): return .retryCommit(round: round)
      case .stop(let round, let attempts): return .stop(round: round, attempts: attempts)
      case .finish: return .finish
      }
    }
  }

  /// The round's record from its book and counts; the book is done with.
  private mutating func close(round: Int, counts: RoundCounts, abandoned: AbandonReason?, now: Double)
    -> ClosedRound
  {
    let book = books.removeValue(forKey: round)
    var record = RoundRecord(round: round, startedAt: book?.startedAt ?? now, endedAt: now)
    record.selected = counts.selected
    record.reported = counts.reported
    record.dropped = counts.dropped
    record.rejected = counts.rejected
    record.late = lateReports.removeValue(forKey: round) ?? 0
    record.bytesDown = book?.sums.bytesDown ?? 0
    record.bytesUp = book?.sums.bytesUp ?? 0
    if let book, book.sums.trainExamples > 0 {
      record.trainLoss = book.sums.trainLossSum / Double(book.sums.trainExamples)
    }
    if let book, book.sums.evaluationExamples > 0 {
      record.federatedEvalLoss = book.sums.evaluationLossSum / Double(book.sums.evaluationExamples)
      record.federatedEvalAccuracy = book.sums.evaluationCorrect / Double(book.sums.evaluationExamples)
      record.federatedEvalExamples = book.sums.evaluationExamples
    }
    record.durationSeconds = now - record.startedAt
    if let abandoned {
      record.outcome = .abandoned
      record.abandonReason = abandoned.rawValue
    }
    let participants = (book?.selected ?? []).map {
      DeviceParticipation(
        device: $0, reported: book?.reported.contains($0) ?? false,
        dropped: book?.dropped.contains($0) ?? false, evaluation: book?.evaluations[$0])
    }
    return ClosedRound(record: record, participants: participants, evaluate: false)
  }
}

// MARK: - Saving and restoring

extension RoundPipeline {
  /// Writes the pipeline's state (not its configuration, which comes from the plan), maps in
  /// key order, so the same state always gives the same bytes.
  ///
  /// A book's per-device evaluations are not written (the format stays as it was): the state is
  /// saved between one round's close and the next round's configuration, when no open book holds
  /// a report.
  public func save(into w: inout SnapshotWriter) {
    machine.save(into: &w)
    w.write(books.count)
    for (round, b) in books.sorted(by: { $0.key < $1.key }) {
      w.write(round)
      w.write(b.startedAt)
      w.write(b.selected)
      w.write(b.reported.sorted())
      w.write(b.dropped.sorted())
      for v in [
        b.sums.bytesDown, b.sums.bytesUp, b.sums.trainExamples, b.sums.evaluationExamples, b.withinClip,
      ] { w.write(v) }
      for v in [b.sums.trainLossSum, b.sums.evaluationLossSum, b.sums.evaluationCorrect] { w.write(v) }
      b.sums.counts.save(into: &w)
    }
    w.write(lateReports.count)
    for (round, n) in lateReports.sorted(by: { $0.key < $1.key }) {
      w.write(round)
      w.write(n)
    }
    w.write(clipNorm)
  }

  public init(configuration: Configuration, restoring r: inout SnapshotReader) throws(CohortError) {
    let machine = try RoundStateMachine(configuration: configuration.machine, restoring: &r)
    self.init(configuration: configuration, machine: machine, clipNorm: 0)
    for _ in 0..<(try r.count()) {
      let round = try r.int()
      var b = RoundBook(startedAt: try r.double(), selected: try r.ints())
      b.reported = Set(try r.ints())
      b.dropped = Set(try r.ints())
      b.sums.bytesDown = try r.int()
      b.sums.bytesUp = try r.int()
      b.sums.trainExamples = try r.int()
      b.sums.evaluationExamples = try r.int()
      b.withinClip = try r.int()
      b.sums.trainLossSum = try r.double()
      b.sums.evaluationLossSum = try r.double()
      b.sums.evaluationCorrect = try r.double()
      b.sums.counts = try RoundCounts(restoring: &r)
      books[round] = b
    }
    for _ in 0..<(try r.count()) {
      let round = try r.int()
      lateReports[round] = try r.int()
    }
    clipNorm = try r.double()
  }
}

/// A round's counts, bytes and the sums behind its losses: what the pipeline's book of a round
/// keeps, and what replicas' tallies add up.
public struct RoundSums: Sendable, Hashable {
  public var counts = RoundCounts()
  public var bytesDown = 0
  public var bytesUp = 0
  public var trainLossSum = 0.0
  public var trainExamples = 0
  public var evaluationLossSum = 0.0
  public var evaluationCorrect = 0.0
  public var evaluationExamples = 0

  public init() {}

  public mutating func add(_ other: RoundSums) {
    counts.selected += other.counts.selected
    counts.reported += other.counts.reported
    counts.dropped += other.counts.dropped
    counts.rejected += other.counts.rejected
    bytesDown += other.bytesDown
    bytesUp += other.bytesUp
    trainLossSum += other.trainLossSum
    trainExamples += other.trainExamples
    evaluationLossSum += other.evaluationLossSum
    evaluationCorrect += other.evaluationCorrect
    evaluationExamples += other.evaluationExamples
  }
}

/// One replica's view of a round: its devices and the round's sums as it saw them (`t.bytesUp`
/// reads `t.sums.bytesUp`). Tallies of every replica add up to the round's record.
@dynamicMemberLookup
public struct RoundTally: Sendable, Hashable {
  public var sums = RoundSums()
  public var participants: [DeviceParticipation] = []

  public init() {}

  public subscript<Value>(dynamicMember path: WritableKeyPath<RoundSums, Value>) -> Value {
    get { sums[keyPath: path] }
    set { sums[keyPath: path] = newValue }
  }

  /// Adds another replica's tally of the same round. A device counted by two replicas (it moved
  /// between them) is kept once: as the tally that accepted its report has it, else the first.
  public mutating func add(_ other: RoundTally) {
    sums.add(other.sums)
    var index = Dictionary(participants.enumerated().map { ($1.device, $0) }, uniquingKeysWith: { a, _ in a })
    for p in other.participants {
      if let i = index[p.device] {
        // A device two replicas list (it moved between them) is recorded as reported if either
        // accepted its report.
        if p.reported && !participants[i].reported { participants[i] = p }
      } else {
        index[p.device] = participants.count
        participants.append(p)
      }
    }
  }

  public func save(into w: inout SnapshotWriter) {
    sums.counts.save(into: &w)
    for v in [sums.bytesDown, sums.bytesUp, sums.trainExamples, sums.evaluationExamples] { w.write(v) }
    for v in [sums.trainLossSum, sums.evaluationLossSum, sums.evaluationCorrect] { w.write(v) }
    w.write(participants.count)
    for p in participants {
      w.write(p.device)
      w.write(p.reported)
      w.write(p.dropped)
      w.write(p.evaluation != nil)
      if let e = p.evaluation {
        w.write(e.loss)
        w.write(e.accuracy)
        w.write(e.examples)
      }
    }
  }

  public init(restoring r: inout SnapshotReader) throws(CohortError) {
    sums.counts = try RoundCounts(restoring: &r)
    sums.bytesDown = try r.int()
    sums.bytesUp = try r.int()
    sums.trainExamples = try r.int()
    sums.evaluationExamples = try r.int()
    sums.trainLossSum = try r.double()
    sums.evaluationLossSum = try r.double()
    sums.evaluationCorrect = try r.double()
    let n = try r.count()
    for _ in 0..<n {
      let device = try r.int()
      let reported = try r.bool()
      let dropped = try r.bool()
      let evaluation =
        try r.bool() ? Evaluation(loss: try r.double(), accuracy: try r.double(), examples: try r.int()) : nil
      participants.append(
        DeviceParticipation(device: device, reported: reported, dropped: dropped, evaluation: evaluation))
    }
    let values =
      [
        sums.counts.selected, sums.counts.reported, sums.counts.dropped, sums.counts.rejected, sums.bytesDown,
        sums.bytesUp,
      ]
      + [sums.trainExamples, sums.evaluationExamples]
    guard values.allSatisfy({ $0 >= 0 && $0 < 1 << 48 }),
      [sums.trainLossSum, sums.evaluationLossSum, sums.evaluationCorrect].allSatisfy(\.isFinite)
    else { throw SnapshotReader.corrupt("a replica's tally has a negative or absurd count") }
  }
}
