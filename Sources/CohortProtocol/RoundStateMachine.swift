public import CohortCore

/// Why a round ended without a new model.
public enum AbandonReason: String, Sendable, Hashable, CustomStringConvertible {
  /// Fewer devices checked in during the selection window than the round's minimum.
  case tooFewCheckIns = "too_few_check_ins"
  /// The reporting deadline passed with fewer reports than the round's minimum.
  case tooFewReports = "too_few_reports"
  /// The server was shut down with the round in flight.
  case shutdown
  /// Secure aggregation could not produce the sum (too few devices survived the protocol).
  case secureAggregationFailed = "secure_aggregation_failed"
  /// The strategy's next model had a value that is not a number or infinite (updates large
  /// enough to overflow Float32 without a norm bound): the model stays as it was.
  case nonFiniteModel = "non_finite_model"

  public var description: String { rawValue }
}

/// Counts for one round, as the results store records them.
public struct RoundCounts: Sendable, Hashable {
  public var selected = 0
  public var reported = 0
  /// Selected devices that told the server they gave up, or whose connection was lost.
  public var dropped = 0
  /// Duplicate, unselected and malformed reports while the round was open. Reports that arrive
  /// after the round closed are answered `.rejected(.late)` and tallied by the shell, which
  /// knows the round they name.
  public var rejected = 0

  public init() {}
}

/// The server's rounds as a pure state machine: check-ins, reports and the time go in; replies
/// and instructions for the shell (configure devices, aggregate, abandon) come out. It holds no
/// model, no socket and no clock, so the network server and the simulator drive the same logic.
/// Its one source of randomness (which waiting devices a uniform cohort keeps) is a stream it
/// owns, seeded by the caller and saved with its state.
///
/// Round r moves from selection (devices check in and wait) to reporting (selected devices train
/// and report) to closed (aggregated or abandoned). Selection of round r + 1 opens when round r
/// starts reporting, so the next cohort gathers while the current one trains; round r + 1 is
/// configured as soon as round r's new checkpoint is committed. Rounds are numbered by attempt;
/// the run ends when `rounds` have committed, or after `maximumAttempts` attempts.
///
/// Check-ins that find no place are answered by pace steering, from a check-in rate that a burst
/// cannot inflate and within the plan's bound on retry windows. While a commit has failed and
/// waits for its retry, every check-in is told to come back after that retry.
public struct RoundStateMachine: Sendable {
  public struct Configuration: Sendable, Hashable {
    /// Rounds to commit.
    public var rounds: Int
    /// Rounds that may be started, committed or not, before the run gives up.
    public var maximumAttempts: Int
    public var goal: Int
    public var selectionTarget: Int
    public var minimumReports: Int
    public var selectionWindow: Double
    public var reportingWindow: Double
    /// The latest a retry window may end after the check-in it answers.
    public var maximumRetry: Double
    public var sampling: CohortSampling
    /// The population this server serves; check-ins from others are refused.
    public var population: String
    /// Seeds the stream that draws uniform cohorts.
    public var seed: UInt64
    /// Commit attempts for one round before the shell is told to stop, and the first wait
    /// between them (doubling, at most a minute).
    public var commitAttempts: Int
    public var commitBackoff: Double
    /// A replica of a run served by several servers: the cohort is shared. Places are claimed
    /// by the shell before a check-in comes here, the shell says when the other replicas filled
    /// the cohort or met the goal, and the minimum of reports is the leader's to apply to the
    /// whole cohort, so this machine closes a round with whatever it gathered, even nothing.
    public var sharedCohort = false
    /// With `sharedCohort`, a replica whose part of the cohort is smaller than this sends its
    /// devices away instead (secure aggregation among too few devices would not hide them).
    public var minimumGroup = 0

    /// - Parameters:
    ///   - sampling: used when the plan does not say (`server.cohort.sampling`).
    ///   - populationSize: the devices there are, when the driver knows (the simulator): a
    ///     population no larger than the goal puts every device in every round.
    public init(
      plan: ServerPlan, population: String, sampling: CohortSampling = .checkIn, populationSize: Int? = nil,
      seed: UInt64 = 0, commitAttempts: Int = 6, commitBackoff: Double = 1
    ) {
      let cap = populationSize.map { max(1, $0) } ?? Int.max
      rounds = plan.rounds
      maximumAttempts = plan.attemptBudget
      goal = min(plan.cohort.goal, cap)
      selectionTarget = min(plan.cohort.selectionTarget, cap)
      minimumReports = min(plan.cohort.minimumReports, goal)
      selectionWindow = plan.windows.selection
      reportingWindow = plan.windows.reporting
      maximumRetry = plan.windows.retryBound
      self.sampling = plan.cohort.sampling ?? sampling
      self.population = population
      self.seed = seed
      self.commitAttempts = max(1, commitAttempts)
      self.commitBackoff = commitBackoff
    }
  }

  /// What the shell must do.
  public enum Action: Sendable, Hashable {
    /// Send each device the round's task with the current global checkpoint.
    case configure(round: Int, devices: [DeviceID], reportingDeadline: Double)
    /// Uniform sampling: the round can start and wants `count` more devices. A driver that knows
    /// its available devices (the simulator) has that many, drawn uniformly, check in now.
    case invite(round: Int, count: Int)
    /// A device waiting for a task will not get one (a uniform cohort drew others, or the run
    /// ended): tell it to come back in this window.
    case release(device: DeviceID, window: ClosedRange<Double>)
    /// The round met its goal or its deadline with enough reports: aggregate the accepted
    /// updates into the next global model, commit it, then call `committed(round:now:)` (or
    /// `commitFailed(round:now:)`).
    case aggregate(round: Int, counts: RoundCounts)
    /// The round ends without a new model; nothing to commit but its record.
    case abandon(round: Int, reason: AbandonReason, counts: RoundCounts)
    /// A failed commit's retry is due: write the round again.
    case retryCommit(round: Int)
    /// The round could not be committed after every attempt: stop serving.
    case stop(round: Int, attempts: Int)
    /// Every round has ended.
    case finish
  }

  struct Selection: Sendable {
    var round: Int
    var opened: Double
    var deadline: Double
    /// In check-in order, which is the order tasks go out in.
    var devices: [DeviceID] = []
    var members: Set<DeviceID> = []
    /// Uniform sampling: devices offered a place so far (the reservoir's denominator), and
    /// whether the driver was already asked for devices.
    var candidates = 0
    var invited = false
    /// Shared cohort: the other replicas took the remaining places.
    var filledElsewhere = false
  }

  struct Reporting: Sendable {
    var round: Int
    var deadline: Double
    var selected: Set<DeviceID>
    var reported: Set<DeviceID> = []
    var dropped: Set<DeviceID> = []
    var counts: RoundCounts
  }

  /// A round handed to the shell to commit, and how its commit attempts have gone.
  struct Closing: Sendable, Hashable {
    var round: Int
    var failures = 0
    /// When the next attempt is due after a failure.
    var retryAt: Double?
  }

  public let configuration: Configuration
  /// The round whose cohort is gathering, if any.
  private(set) var selection: Selection?
  /// The round whose cohort is training, if any.
  private(set) var reporting: Reporting?
  /// A round whose updates are being aggregated and committed by the shell.
  private(set) var closing: Closing?
  /// The number the next round to open will get; rounds before it were attempted.
  private(set) var nextRound = 1
  public private(set) var committedRounds = 0
  private(set) var finished = false
  /// Rounds that have closed (committed or abandoned), to tell late reports from unknown rounds.
  private(set) var lastClosedRound = 0
  private(set) var rate: CheckInRate
  private(set) var sampler: RandomStream
  private let pace: PaceSteering

  /// Round numbers start after `round`, for a run resumed from its last committed round, of
  /// which `committed` rounds had committed.
  public init(configuration: Configuration, resumingAfter round: Int = 0, committed: Int? = nil) {
    self.configuration = configuration
    nextRound = round + 1
    lastClosedRound = round
    committedRounds = committed ?? round
    rate = CheckInRate(bucketSeconds: max(1, configuration.selectionWindow))
    sampler = RandomStream(seed: configuration.seed, purpose: "cohort-sampling")
    pace = PaceSteering(
      wanted: max(1, configuration.selectionTarget), selectionWindow: configuration.selectionWindow,
      maximumRetry: configuration.maximumRetry)
  }

  /// The round currently gathering devices.
  public var selectingRound: Int? { selection?.round }
  /// The round currently training and reporting.
  public var reportingRound: Int? { reporting?.round }
  public var isFinished: Bool { finished }
  /// Rounds started so far (committed, abandoned or in flight).
  public var attempts: Int { nextRound - 1 }
  /// Whether a commit failed and waits for its retry.
  public var isRetryingCommit: Bool { closing?.retryAt != nil }

  /// The earliest time at which `tick` has something to do, for the shell's timer. A selection
  /// window that ends while the previous round still reports or aggregates cannot close then
  /// (the round closing does it), so its deadline is not offered: a timer set to it would fire,
  /// find nothing to do and be set to the same past time again, forever.
  public var nextDeadline: Double? {
    let selectionDeadline = reporting == nil && closing == nil ? selection?.deadline : nil
    return [selectionDeadline, reporting?.deadline, closing?.retryAt].compactMap { $0 }.min()
  }

  // MARK: Events

  /// Opens selection for the first round.
  public mutating func start(now: Double) -> [Action] {
    guard selection == nil, reporting == nil, closing == nil, !finished else { return [] }
    return openSelection(now: now) + closeSelectionIfPossible(now: now)
  }

  /// A device checks in: it joins the cohort being gathered, or is told when to come back.
  public mutating func checkIn(_ checkIn: CheckIn, now: Double) -> (reply: ServerReply, actions: [Action]) {
    if checkIn.protocolVersion != protocolVersion { return (.rejected(.protocolVersion), []) }
    if checkIn.population != configuration.population { return (.rejected(.wrongPopulation), []) }
    rate.record(now: now)
    // The cohorts are mutated in place (`selection!.…`): copying them out and back would copy
    // every member on every check-in and report.
    // A device still owing its report for the round in flight is busy; one that has reported
    // may join the next round's cohort at once.
    let busy = reporting.map { $0.selected.contains(checkIn.device) && !$0.reported.contains(checkIn.device) }
    guard let round = selection?.round, busy != true, !isRetryingCommit else {
      return (.retry(window: retryWindow(now: now)), [])
    }
    if selection!.members.contains(checkIn.device) { return (.waitForTask(round: round), []) }
    if selection!.filledElsewhere { return (.retry(window: retryWindow(now: now)), []) }
    var actions: [Action] = []
    if selection!.devices.count >= configuration.selectionTarget {
      // Uniform sampling keeps a uniform sample of every device offered (reservoir sampling):
      // the k-th newcomer takes a random place with probability target / k.
      guard configuration.sampling == .uniform else { return (.retry(window: retryWindow(now: now)), []) }
      selection!.candidates += 1
      let place = sampler.int(below: selection!.candidates)
      guard place < configuration.selectionTarget else { return (.retry(window: retryWindow(now: now)), []) }
      let evicted = selection!.devices[place]
      selection!.members.remove(evicted)
      selection!.devices[place] = checkIn.device
      selection!.members.insert(checkIn.device)
      actions.append(.release(device: evicted, window: retryWindow(now: now)))
    } else {
      selection!.candidates += 1
      selection!.devices.append(checkIn.device)
      selection!.members.insert(checkIn.device)
    }
    if selection!.devices.count == configuration.selectionTarget {
      actions += closeSelectionIfPossible(now: now)
    }
    return (.waitForTask(round: round), actions)
  }

  /// A device reports its update. Accepted reports are for the shell to fold into the round's
  /// aggregate; everything else is refused with its reason and counted.
  public mutating func report(
    device: DeviceID, round: Int, isWellFormed: Bool, now: Double
  ) -> (reply: ServerReply, actions: [Action]) {
    report(device: device, round: round, refusal: isWellFormed ? nil : .malformed, now: now)
  }

  /// A report of `device` for `round`; `refusal` is the server's verdict on its content (nil:
  /// it may count). The machine decides the rest: late, unknown round, not selected, duplicate.
  public mutating func report(
    device: DeviceID, round: Int, refusal contentRefusal: Rejection?, now: Double
  ) -> (reply: ServerReply, actions: [Action]) {
    guard let deadline = reporting?.deadline, reporting?.round == round else {
      if round <= lastClosedRound || round == closing?.round { return (.rejected(.late), []) }
      return (.rejected(.unknownRound), [])
    }
    if now > deadline { return (.rejected(.late), tick(now: now)) }
    let refusal: Rejection? =
      if !reporting!.selected.contains(device) {
        .notSelected
      } else if reporting!.reported.contains(device) {
        .duplicate
      } else {
        contentRefusal
      }
    if let refusal {
      reporting!.counts.rejected += 1
      return (.rejected(refusal), [])
    }
    reporting!.reported.insert(device)
    reporting!.dropped.remove(device)
    reporting!.counts.reported += 1
    var actions: [Action] = []
    let r = reporting!
    // The goal is met, or nobody else can still report (the rest dropped): close now.
    if r.reported.count >= configuration.goal || r.reported.count + r.dropped.count == r.selected.count {
      actions = closeReporting(now: now)
    }
    return (.accepted(round: round), actions)
  }

  /// Shared cohort: the round `checkIn` would give `device` a place in, if any; the shell claims
  /// that place from the other replicas first.
  public func openPlace(for device: DeviceID) -> Int? {
    guard configuration.sharedCohort, let s = selection, !s.filledElsewhere, !isRetryingCommit,
      s.devices.count < configuration.selectionTarget, !s.members.contains(device)
    else { return nil }
    if let r = reporting, r.selected.contains(device), !r.reported.contains(device) { return nil }
    return s.round
  }

  /// Shared cohort: the other replicas took the last places of `round`, so its selection ends with
  /// the devices gathered here (as soon as the previous round has closed).
  public mutating func cohortFilledElsewhere(round: Int, now: Double) -> [Action] {
    guard selection?.round == round, !selection!.filledElsewhere else { return [] }
    selection!.filledElsewhere = true
    return closeSelectionIfPossible(now: now)
  }

  /// Shared cohort: the replicas together received the goal's reports for `round`: it closes here
  /// without waiting for the rest of this replica's devices.
  public mutating func goalMetElsewhere(round: Int, now: Double) -> [Action] {
    guard reporting?.round == round else { return [] }
    return closeReporting(now: now)
  }

  /// Shared cohort: the check-in rate at the other replicas, which pace steering adds to this one's
  /// so that retry windows steer the whole population.
  public var otherCheckInRate = 0.0

  /// Whether `device` waits in `round`'s selection.
  public func isWaiting(_ device: DeviceID, round: Int) -> Bool {
    selection?.round == round && selection!.members.contains(device)
  }

  /// Check-ins per second arriving here (the rate a replica tells the others).
  public func checkInRate(now: Double) -> Double { rate.perSecond(now: now) }

  /// A device in the round gave up or lost its connection.
  public mutating func dropped(device: DeviceID, round: Int, now: Double) -> [Action] {
    if selection?.round == round, selection!.members.contains(device),
      let i = selection!.devices.firstIndex(of: device)
    {
      selection!.devices.remove(at: i)
      selection!.members.remove(device)
      return []
    }
    guard reporting?.round == round, reporting!.selected.contains(device),
      !reporting!.reported.contains(device)
    else { return [] }
    reporting!.dropped.insert(device)
    // Once every selected device has reported or dropped, waiting for the deadline is pointless.
    let r = reporting!
    if r.reported.count + r.dropped.count == r.selected.count { return closeReporting(now: now) }
    return []
  }

  /// Time passes: closes windows whose deadline is due, and asks for a failed commit's retry.
  public mutating func tick(now: Double) -> [Action] {
    var actions: [Action] = []
    if let r = reporting, now >= r.deadline { actions += closeReporting(now: now) }
    if let c = closing, let due = c.retryAt, now >= due {
      closing!.retryAt = nil
      actions.append(.retryCommit(round: c.round))
    }
    if let s = selection, now >= s.deadline { actions += closeSelectionIfPossible(now: now) }
    return actions
  }

  /// The shell committed the round it was told to aggregate.
  public mutating func committed(round: Int, now: Double) -> [Action] {
    precondition(
      closing?.round == round,
      "committed round \(round) but round \(closing.map { String($0.round) } ?? "none") was closing")
    closing = nil
    lastClosedRound = round
    committedRounds += 1
    return afterClose(now: now)
  }

  /// The round the shell was told to aggregate gave no model (secure aggregation failed): it
  /// closes as abandoned and the run goes on.
  public mutating func closedWithoutModel(round: Int, now: Double) -> [Action] {
    guard closing?.round == round else { return [] }
    closing = nil
    lastClosedRound = round
    return afterClose(now: now)
  }

  /// The shell could not commit the round it was told to aggregate (a full disk, a lost
  /// database). The commit is retried with back-off, check-ins are told to come back after the
  /// retry, and after `commitAttempts` failures the shell is told to stop.
  public mutating func commitFailed(round: Int, now: Double) -> [Action] {
    guard closing?.round == round else { return [] }
    closing!.failures += 1
    let failures = closing!.failures
    if failures >= configuration.commitAttempts {
      closing!.retryAt = nil
      return [.stop(round: round, attempts: failures)]
    }
    let wait = min(60, configuration.commitBackoff * Double(1 << min(failures - 1, 20)))
    closing!.retryAt = now + wait
    return []
  }

  /// Abandons everything in flight (shutdown). A round being committed is the shell's to finish.
  public mutating func shutdown(now: Double) -> [Action] {
    var actions: [Action] = []
    if let r = reporting {
      actions.append(.abandon(round: r.round, reason: .shutdown, counts: finalCounts(r)))
      lastClosedRound = r.round
    }
    if let s = selection {
      var counts = RoundCounts()
      counts.selected = s.devices.count
      actions.append(.abandon(round: s.round, reason: .shutdown, counts: counts))
    }
    reporting = nil
    selection = nil
    finished = true
    return actions
  }

  // MARK: Transitions

  /// When a device turned away now should come back.
  public func retryWindow(now: Double) -> ClosedRange<Double> {
    if let retryAt = closing?.retryAt {
      return pace.retryWindow(now: now, nextSelectionOpens: retryAt, checkInRate: populationRate(now: now))
    }
    let nextOpens = selection == nil ? (nextDeadline ?? now) : now
    return pace.retryWindow(now: now, nextSelectionOpens: nextOpens, checkInRate: populationRate(now: now))
  }

  private func populationRate(now: Double) -> Double { rate.perSecond(now: now) + otherCheckInRate }

  /// The reports a round needs to aggregate here: a replica's part of a shared cohort may be empty.
  private var minimumHere: Int {
    configuration.sharedCohort ? 0 : configuration.minimumReports
  }

  /// Rounds that may still commit without another attempt: the one reporting and the one closing.
  private var roundsInFlight: Int { (reporting == nil ? 0 : 1) + (closing == nil ? 0 : 1) }

  private mutating func openSelection(now: Double) -> [Action] {
    guard selection == nil else { return [] }
    let enough = committedRounds + roundsInFlight >= configuration.rounds
    guard !enough, attempts < configuration.maximumAttempts else {
      if reporting == nil && closing == nil && !finished {
        finished = true
        return [.finish]
      }
      return []
    }
    selection = Selection(round: nextRound, opened: now, deadline: now + configuration.selectionWindow)
    nextRound += 1
    return []
  }

  /// Selection ends when the target has checked in, or at the deadline. The cohort can only be
  /// configured once the previous round has committed its model; until then it keeps gathering.
  /// Under uniform sampling the driver is asked, once, for the devices still missing as soon as
  /// the round could start.
  private mutating func closeSelectionIfPossible(now: Double) -> [Action] {
    guard let s = selection else { return [] }
    guard reporting == nil, closing == nil else { return [] }
    let full = s.devices.count >= configuration.selectionTarget || s.filledElsewhere
    if configuration.sampling == .uniform, !s.invited, !full {
      // The invited devices get a whole selection window from now: the window that passed
      // while the previous round still reported could not be used.
      selection!.invited = true
      selection!.deadline = max(s.deadline, now + configuration.selectionWindow)
      return [.invite(round: s.round, count: configuration.selectionTarget - s.devices.count)]
    }
    guard full || now >= s.deadline else { return [] }
    selection = nil
    if s.devices.count < minimumHere {
      lastClosedRound = s.round
      var counts = RoundCounts()
      counts.selected = s.devices.count
      var actions = [Action.abandon(round: s.round, reason: .tooFewCheckIns, counts: counts)]
      actions += openSelection(now: now)
      // The devices that did come keep waiting, for the next round: sending them away would
      // only make the next selection start from nothing again.
      if selection != nil {
        selection!.devices = s.devices
        selection!.members = s.members
        selection!.candidates = s.devices.count
        actions += closeSelectionIfPossible(now: now)
      } else {
        let window = retryWindow(now: now)
        actions += s.devices.map { .release(device: $0, window: window) }
      }
      return actions
    }
    var devices = s.devices
    var released: [Action] = []
    if configuration.sharedCohort, !devices.isEmpty, devices.count < configuration.minimumGroup {
      let window = retryWindow(now: now)
      released = devices.map { .release(device: $0, window: window) }
      devices = []
    }
    var counts = RoundCounts()
    counts.selected = devices.count
    let deadline = now + configuration.reportingWindow
    reporting = Reporting(round: s.round, deadline: deadline, selected: Set(devices), counts: counts)
    var actions = released + [.configure(round: s.round, devices: devices, reportingDeadline: deadline)]
    // A replica with no part in the round has nothing to wait for.
    if configuration.sharedCohort, devices.isEmpty { actions += closeReporting(now: now) }
    return actions + openSelection(now: now)
  }

  private func finalCounts(_ r: Reporting) -> RoundCounts {
    var counts = r.counts
    counts.dropped = r.dropped.count
    return counts
  }

  private mutating func closeReporting(now: Double) -> [Action] {
    guard let r = reporting else { return [] }
    reporting = nil
    let counts = finalCounts(r)
    if r.reported.count >= minimumHere {
      closing = Closing(round: r.round)
      return [.aggregate(round: r.round, counts: counts)]
    }
    lastClosedRound = r.round
    return [.abandon(round: r.round, reason: .tooFewReports, counts: counts)] + afterClose(now: now)
  }

  private mutating func afterClose(now: Double) -> [Action] {
    var actions: [Action] = []
    if selection == nil && reporting == nil && closing == nil { actions += openSelection(now: now) }
    return actions + closeSelectionIfPossible(now: now)
  }
}

// MARK: - Saving and restoring

extension RoundCounts {
  func save(into w: inout SnapshotWriter) {
    for v in [selected, reported, dropped, rejected] { w.write(v) }
  }

  init(restoring r: inout SnapshotReader) throws(CohortError) {
    self.init()
    selected = try r.int()
    reported = try r.int()
    dropped = try r.int()
    rejected = try r.int()
  }
}

extension RoundStateMachine {
  /// Writes the machine's state (not its configuration, which comes from the plan). Sets are
  /// written sorted, so the same state always gives the same bytes.
  public func save(into w: inout SnapshotWriter) {
    w.write(selection != nil)
    if let s = selection {
      w.write(s.round)
      w.write(s.opened)
      w.write(s.deadline)
      w.write(s.devices)
      w.write(s.candidates)
      w.write(s.invited)
    }
    w.write(reporting != nil)
    if let r = reporting {
      w.write(r.round)
      w.write(r.deadline)
      w.write(r.selected.sorted())
      w.write(r.reported.sorted())
      w.write(r.dropped.sorted())
      r.counts.save(into: &w)
    }
    w.write(closing?.round)
    w.write(closing?.failures ?? 0)
    w.write(closing?.retryAt)
    w.write(nextRound)
    w.write(committedRounds)
    w.write(finished)
    w.write(lastClosedRound)
    rate.save(into: &w)
    w.write(sampler)
  }

  public init(configuration: Configuration, restoring r: inout SnapshotReader) throws(CohortError) {
    self.init(configuration: configuration)
    if try r.bool() {
      var s = Selection(round: try r.int(), opened: try r.double(), deadline: try r.double())
      s.devices = try r.ints()
      s.members = Set(s.devices)
      s.candidates = try r.int()
      s.invited = try r.bool()
      selection = s
    }
    if try r.bool() {
      let round = try r.int()
      let deadline = try r.double()
      let selected = Set(try r.ints())
      let reported = Set(try r.ints())
      let dropped = Set(try r.ints())
      reporting = Reporting(
        round: round, deadline: deadline, selected: selected, reported: reported, dropped: dropped,
        counts: try RoundCounts(restoring: &r))
    }
    let closingRound = try r.optionalInt()
    let failures = try r.int()
    let retryAt = try r.optionalDouble()
    closing = closingRound.map { Closing(round: $0, failures: failures, retryAt: retryAt) }
    nextRound = try r.int()
    committedRounds = try r.int()
    finished = try r.bool()
    lastClosedRound = try r.int()
    rate = try CheckInRate(bucketSeconds: rate.bucketSeconds, restoring: &r)
    sampler = try r.randomStream()
  }
}
