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
///
/// Round r moves from selection (devices check in and wait) to reporting (selected devices train
/// and report) to closed (aggregated or abandoned). Selection of round r + 1 opens when round r
/// starts reporting, so the next cohort gathers while the current one trains; round r + 1 is
/// configured as soon as round r's new checkpoint is committed.
public struct RoundStateMachine: Sendable {
  public struct Configuration: Sendable, Hashable {
    public var rounds: Int
    public var goal: Int
    public var selectionTarget: Int
    public var minimumReports: Int
    public var selectionWindow: Double
    public var reportingWindow: Double
    /// The population this server serves; check-ins from others are refused.
    public var population: String

    public init(plan: ServerPlan, population: String) {
      rounds = plan.rounds
      goal = plan.cohort.goal
      selectionTarget = plan.cohort.selectionTarget
      minimumReports = min(plan.cohort.minimumReports, plan.cohort.goal)
      selectionWindow = plan.windows.selection
      reportingWindow = plan.windows.reporting
      self.population = population
    }
  }

  /// What the shell must do.
  public enum Action: Sendable, Hashable {
    /// Send each device the round's task with the current global checkpoint.
    case configure(round: Int, devices: [DeviceID], reportingDeadline: Double)
    /// The round met its goal or its deadline with enough reports: aggregate the accepted
    /// updates into the next global model, commit it, then call `committed(round:now:)`.
    case aggregate(round: Int, counts: RoundCounts)
    /// The round ends without a new model; nothing to commit but its record.
    case abandon(round: Int, reason: AbandonReason, counts: RoundCounts)
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
  }

  struct Reporting: Sendable {
    var round: Int
    var deadline: Double
    var selected: Set<DeviceID>
    var reported: Set<DeviceID> = []
    var dropped: Set<DeviceID> = []
    var counts: RoundCounts
  }

  public let configuration: Configuration
  /// The round whose cohort is gathering, if any.
  private(set) var selection: Selection?
  /// The round whose cohort is training, if any.
  private(set) var reporting: Reporting?
  /// A round whose updates are being aggregated and committed by the shell.
  private(set) var closing: Int?
  /// The number the next round to open will get.
  private(set) var nextRound = 1
  private(set) var finished = false
  /// Rounds that have closed (committed or abandoned), to tell late reports from unknown rounds.
  private(set) var lastClosedRound = 0
  /// Round numbers start after this, for a run resumed from its last committed round.
  public init(configuration: Configuration, resumingAfter round: Int = 0) {
    self.configuration = configuration
    nextRound = round + 1
    lastClosedRound = round
  }

  /// The round currently gathering devices.
  public var selectingRound: Int? { selection?.round }
  /// The round currently training and reporting.
  public var reportingRound: Int? { reporting?.round }
  public var isFinished: Bool { finished }

  /// The earliest time at which `tick` has something to do, for the shell's timer. A selection
  /// window that ends while the previous round still reports or aggregates cannot close then
  /// (the round closing does it), so its deadline is not offered: a timer set to it would fire,
  /// find nothing to do and be set to the same past time again, forever.
  public var nextDeadline: Double? {
    let selectionDeadline = reporting == nil && closing == nil ? selection?.deadline : nil
    return [selectionDeadline, reporting?.deadline].compactMap { $0 }.min()
  }

  // MARK: Events

  /// Opens selection for the first round.
  public mutating func start(now: Double) -> [Action] {
    guard selection == nil, reporting == nil, closing == nil, !finished else { return [] }
    return openSelection(now: now)
  }

  /// A device checks in. It joins the cohort being selected if there is room; otherwise the
  /// caller answers it with a pace-steering retry window.
  public mutating func checkIn(_ checkIn: CheckIn, now: Double) -> (reply: ServerReply?, actions: [Action]) {
    if checkIn.protocolVersion != protocolVersion { return (.rejected(.protocolVersion), []) }
    if checkIn.population != configuration.population { return (.rejected(.wrongPopulation), []) }
    // The cohorts are mutated in place (`selection!.…`): copying them out and back would copy
    // every member on every check-in and report.
    // A device still owing its report for the round in flight is busy; one that has reported
    // may join the next round's cohort at once.
    let busy = reporting.map { $0.selected.contains(checkIn.device) && !$0.reported.contains(checkIn.device) }
    guard let round = selection?.round, busy != true else {
      return (nil, [])
    }
    if selection!.members.contains(checkIn.device) { return (.waitForTask(round: round), []) }
    guard selection!.devices.count < configuration.selectionTarget else { return (nil, []) }
    selection!.devices.append(checkIn.device)
    selection!.members.insert(checkIn.device)
    var actions: [Action] = []
    if selection!.devices.count == configuration.selectionTarget {
      actions = closeSelectionIfPossible(now: now)
    }
    return (.waitForTask(round: round), actions)
  }

  /// A device reports its update. Accepted reports are for the shell to fold into the round's
  /// aggregate; everything else is refused with its reason and counted.
  public mutating func report(
    device: DeviceID, round: Int, isWellFormed: Bool, now: Double
  ) -> (reply: ServerReply, actions: [Action]) {
    guard let deadline = reporting?.deadline, reporting?.round == round else {
      if round <= lastClosedRound || round == closing { return (.rejected(.late), []) }
      return (.rejected(.unknownRound), [])
    }
    if now > deadline { return (.rejected(.late), tick(now: now)) }
    let refusal: Rejection? =
      if !reporting!.selected.contains(device) {
        .notSelected
      } else if reporting!.reported.contains(device) {
        .duplicate
      } else if !isWellFormed {
        .malformed
      } else {
        nil
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

  /// Time passes: closes windows whose deadline is due.
  public mutating func tick(now: Double) -> [Action] {
    var actions: [Action] = []
    if let r = reporting, now >= r.deadline { actions += closeReporting(now: now) }
    if let s = selection, now >= s.deadline { actions += closeSelectionIfPossible(now: now) }
    return actions
  }

  /// The shell committed the round it was told to aggregate.
  public mutating func committed(round: Int, now: Double) -> [Action] {
    precondition(
      closing == round, "committed round \(round) but round \(closing.map(String.init) ?? "none") was closing"
    )
    closing = nil
    lastClosedRound = round
    return afterClose(now: now)
  }

  /// Abandons everything in flight (shutdown).
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

  private mutating func openSelection(now: Double) -> [Action] {
    guard selection == nil else { return [] }
    guard nextRound <= configuration.rounds else {
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
  private mutating func closeSelectionIfPossible(now: Double) -> [Action] {
    guard let s = selection else { return [] }
    let full = s.devices.count >= configuration.selectionTarget
    let due = now >= s.deadline
    guard full || due else { return [] }
    guard reporting == nil, closing == nil else { return [] }
    selection = nil
    if s.devices.count < configuration.minimumReports {
      lastClosedRound = s.round
      var counts = RoundCounts()
      counts.selected = s.devices.count
      let actions =
        [Action.abandon(round: s.round, reason: .tooFewCheckIns, counts: counts)] + openSelection(now: now)
      // The devices that did come keep waiting, for the next round: sending them away would
      // only make the next selection start from nothing again.
      if selection != nil {
        selection!.devices = s.devices
        selection!.members = s.members
      }
      return actions
    }
    var counts = RoundCounts()
    counts.selected = s.devices.count
    let deadline = now + configuration.reportingWindow
    reporting = Reporting(round: s.round, deadline: deadline, selected: Set(s.devices), counts: counts)
    return [.configure(round: s.round, devices: s.devices, reportingDeadline: deadline)]
      + openSelection(now: now)
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
    if r.reported.count >= configuration.minimumReports {
      closing = r.round
      return [.aggregate(round: r.round, counts: counts)]
    }
    lastClosedRound = r.round
    return [.abandon(round: r.round, reason: .tooFewReports, counts: counts)] + afterClose(now: now)
  }

  private mutating func afterClose(now: Double) -> [Action] {
    var actions = closeSelectionIfPossible(now: now)
    if selection == nil && reporting == nil && closing == nil {
      actions += openSelection(now: now)
    }
    return actions
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
    w.write(closing)
    w.write(nextRound)
    w.write(finished)
    w.write(lastClosedRound)
  }

  public init(configuration: Configuration, restoring r: inout SnapshotReader) throws(CohortError) {
    self.init(configuration: configuration)
    if try r.bool() {
      var s = Selection(round: try r.int(), opened: try r.double(), deadline: try r.double())
      s.devices = try r.ints()
      s.members = Set(s.devices)
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
    closing = try r.optionalInt()
    nextRound = try r.int()
    finished = try r.bool()
    lastClosedRound = try r.int()
  }
}
