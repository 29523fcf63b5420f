public import CohortAggregation
public import CohortCore

/// The server side of buffered asynchronous aggregation (FedBuff, Nguyen et al., AISTATS 2022,
/// Algorithm 1) as a pure state machine: admissions, reports and dropouts go in; what to tell
/// devices and when to apply a buffer come out. No clock, no I/O, no randomness: the simulator
/// and the server drive the same machine, and deadlines are the driver's (it reports a device
/// that missed one as `dropped`).
///
/// The model has a version v (0 before the first application). A device admitted while the
/// machine is at v trains on v; when it reports, its staleness is s = v′ − v at the version v′
/// then current. An update with s ≤ `maximumStaleness` is folded in as
/// weight(s) · c · Δ into a running Double sum, where c is its example count (weighted) or 1,
/// and c into the denominator; after `bufferSize` folds the buffer's mean
/// Σ weight(sᵢ)·cᵢ·Δᵢ / Σ cᵢ is applied as version v + 1. The denominator leaves out the
/// staleness weights, as FedBuff's Σ s(τᵢ)Δᵢ / K does, so stale buffers step less far.
///
/// ## Driver contract (crash safety)
/// The whole machine is `snapshot` (Codable); `init(configuration:restoring:)` resumes it.
/// - Before sending the acknowledgement of an `.acknowledge` action, persist `snapshot`. When
///   the same event also returned `.apply`, persist the new model version and the snapshot in
///   one transaction first. Then a crash never loses an acknowledged update (it is in the
///   persisted sum or in the persisted model) and never folds one twice: a report replayed
///   after the restore is refused as `.duplicate`, which the driver may answer as "already
///   counted". A crash before the snapshot is persisted loses only unacknowledged updates.
/// - Carry out `.apply` before handing any later `.train` version to a device: actions are in
///   order, and a device admitted after an application trains on the new version.
/// - Admissions may be persisted lazily: an admission lost in a crash costs only that device's
///   update, refused as `.notInFlight` when it arrives.
public struct AsyncBuffer: Sendable {
  public struct Configuration: Sendable, Hashable {
    /// Values in one update (the model's parameter count).
    public var dimension: Int
    /// Devices training at once, ≥ 1.
    public var concurrency: Int
    /// K: updates folded into one buffer, ≥ 1.
    public var bufferSize: Int
    /// Updates staler than this are refused, ≥ 0.
    public var maximumStaleness: Int
    public var weighting: StalenessWeighting
    /// Whether an update counts in proportion to its examples; false counts each once (DP,
    /// unweighted FedAvg), and the mean then divides by K as FedBuff's does.
    public var weightedByExamples: Bool
    /// The most examples one report may claim (`server.reports.max_examples`).
    public var maximumExamples: Int
    /// Versions to apply before the machine finishes (`server.rounds`), ≥ 1.
    public var versions: Int

    public init(
      dimension: Int, concurrency: Int, bufferSize: Int, maximumStaleness: Int, weighting: StalenessWeighting,
      weightedByExamples: Bool, maximumExamples: Int = ReportsPlan.defaultMaximumExamples, versions: Int
    ) {
      precondition(dimension >= 0 && concurrency >= 1 && bufferSize >= 1, "sizes must be positive")
      precondition(maximumStaleness >= 0 && maximumExamples >= 1 && versions >= 1, "bounds must be positive")
      self.dimension = dimension
      self.concurrency = concurrency
      self.bufferSize = bufferSize
      self.maximumStaleness = maximumStaleness
      self.weighting = weighting
      self.weightedByExamples = weightedByExamples
      self.maximumExamples = maximumExamples
      self.versions = versions
    }

    /// The configuration a plan in async mode asks for (nil for a synchronous plan). Updates
    /// count by examples unless the plan is differentially private (each clipped update then
    /// weighs 1) or its FedAvg/FedProx is unweighted.
    public init?(plan: Plan, dimension: Int) {
      guard let async = plan.server.asynchronous else { return nil }
      self.init(
        dimension: dimension, concurrency: async.concurrency, bufferSize: async.buffer,
        maximumStaleness: async.maximumStaleness, weighting: StalenessWeighting(async.staleness),
        weightedByExamples: !plan.privacy.isPrivate && plan.server.strategy.weighted,
        maximumExamples: plan.server.reports?.examplesCap ?? ReportsPlan.defaultMaximumExamples,
        versions: plan.server.rounds)
    }
  }

  /// One device's participation: the device and the version it trains (or trained) on.
  public struct Participation: Sendable, Hashable, Codable, Comparable {
    public var device: DeviceID
    public var version: Int

    public init(device: DeviceID, version: Int) {
      self.device = device
      self.version = version
    }

    public static func < (a: Self, b: Self) -> Bool { (a.version, a.device) < (b.version, b.device) }
  }

  /// The updates folded since the last application.
  public struct Buffer: Sendable, Hashable, Codable {
    /// Σ weight(sᵢ)·cᵢ·Δᵢ.
    public var sum: [Double]
    /// Σ cᵢ (examples, or 1 each).
    public var denominator: Double = 0
    /// The devices folded, in order.
    public var devices: [DeviceID] = []
    /// Σ examples, whatever the weighting.
    public var examples = 0
    public var stalenessSum = 0
    public var maximumStaleness = 0

    public init(dimension: Int) { sum = [Double](repeating: 0, count: dimension) }
  }

  /// Admitting devices and folding their updates.
  public struct Collecting: Sendable, Hashable {
    /// v: the current model version.
    public var version: Int
    /// Devices training, with the version each was handed.
    public var inFlight: [DeviceID: Int] = [:]
    /// Updates folded whose version is within `maximumStaleness` of v: a replay of one is
    /// refused as a duplicate, and a device is not admitted twice to the same version. Older
    /// ones are forgotten: their replays are refused anyway (not in flight, too stale).
    public var reported: Set<Participation> = []
    /// Devices whose connection ended while they trained: their slot is free, but the update
    /// may still come, on a new stream (a device resends an upload it could not finish), until
    /// the driver `forget`s it (its reporting deadline). The most recent `leftLimit` are kept,
    /// oldest first; one that comes too stale is refused as such.
    public var left: [Participation] = []
    public var buffer: Buffer

    public init(version: Int, dimension: Int) {
      self.version = version
      buffer = Buffer(dimension: dimension)
    }
  }

  public enum State: Sendable, Hashable, Codable {
    case collecting(Collecting)
    /// The last version is applied: nothing is admitted or folded.
    case finished(version: Int)
  }

  /// Why a device is not admitted now (the driver tells it to come back later).
  public enum AdmissionRefusal: String, Sendable, Hashable, Codable, CaseIterable {
    /// `concurrency` devices are training.
    case full
    /// The device is training already.
    case inFlight = "in_flight"
    /// The device's update on the current version is folded; it may train on the next one.
    case alreadyReported = "already_reported"
    /// The run has applied its last version.
    case finished
  }

  /// Why a report is not folded in.
  public enum Refusal: String, Sendable, Hashable, Codable, CaseIterable {
    /// Trained on a version more than `maximumStaleness` behind.
    case tooStale = "too_stale"
    /// The device is not training (never admitted, dropped, or admitted just before a crash
    /// that lost the admission).
    case notInFlight = "not_in_flight"
    /// This device's update on this version is folded already.
    case duplicate
    /// The device is training, but on another version than the report names.
    case wrongVersion = "wrong_version"
    /// Not `dimension` finite values.
    case malformed
    /// Examples outside 1...`maximumExamples`.
    case outOfRange = "out_of_range"
    /// The run has applied its last version.
    case finished

    /// The refusal of a report the plan's report rules (`ReportRules`) turned away before it
    /// reached the buffer: an update that is not well formed, or figures out of range.
    public init(rule rejection: Rejection) {
      self = rejection == .malformed ? .malformed : .outOfRange
    }

    /// The wire's rejection for it.
    public var rejection: Rejection {
      switch self {
      case .tooStale, .finished: .late
      case .notInFlight: .notSelected
      case .duplicate: .duplicate
      case .wrongVersion: .unknownRound
      case .malformed: .malformed
      case .outOfRange: .outOfRange
      }
    }
  }

  /// A device's report: the version it trained on, its update (local − global, decoded and
  /// checked against the report rules) and its example count.
  public struct Report: Sendable, Hashable {
    public var device: DeviceID
    public var version: Int
    public var update: [Float]
    public var examples: Int

    public init(device: DeviceID, version: Int, update: [Float], examples: Int) {
      self.device = device
      self.version = version
      self.update = update
      self.examples = examples
    }
  }

  /// A full buffer, to be applied as `version`.
  public struct Application: Sendable, Hashable {
    /// The version this application makes (the previous one + 1).
    public var version: Int
    /// Σ weight(sᵢ)·cᵢ·Δᵢ over the buffer (central DP adds its noise here).
    public var sum: [Double]
    /// Σ cᵢ: examples, or K when each update counts once.
    public var denominator: Double
    /// K, the updates folded.
    public var folded: Int
    /// Σ examples over the folded updates.
    public var examples: Int
    public var meanStaleness: Double
    public var maximumStaleness: Int
    /// The devices folded, in order.
    public var devices: [DeviceID]

    /// The buffered mean Δ̄ = sum / denominator, which the strategy steps along.
    public var mean: [Float] {
      let scale = denominator > 0 ? 1 / denominator : 0
      return sum.map { Float($0 * scale) }
    }
  }

  public enum Action: Sendable, Hashable {
    /// Hand `device` the model of `version` to train on.
    case train(device: DeviceID, version: Int)
    /// Tell `device` to come back later.
    case turnAway(device: DeviceID, AdmissionRefusal)
    /// The update counted (with this staleness and weight): persist `snapshot`, then acknowledge.
    case acknowledge(device: DeviceID, staleness: Int, weight: Double)
    /// The report is refused (and counted).
    case refuse(device: DeviceID, Refusal)
    /// The buffer is full: make `application.version` from it and persist it with `snapshot`.
    case apply(Application)
    /// The run finished while `device` was training: its update can no longer count; tell it
    /// to stop.
    case cancel(device: DeviceID)
    /// The last version is applied.
    case finish(version: Int)
  }

  /// What happened, for metrics; part of the snapshot so a resumed run counts on.
  public struct Counts: Sendable, Hashable, Codable {
    public var admitted = 0
    public var folded = 0
    public var applications = 0
    public var dropped = 0
    public var cancelled = 0
    public var turnedAway = 0
    public var tooStale = 0
    public var notInFlight = 0
    public var duplicate = 0
    public var wrongVersion = 0
    public var malformed = 0
    public var outOfRange = 0
    public var finished = 0

    public init() {}

    public func refusals(_ reason: Refusal) -> Int {
      switch reason {
      case .tooStale: tooStale
      case .notInFlight: notInFlight
      case .duplicate: duplicate
      case .wrongVersion: wrongVersion
      case .malformed: malformed
      case .outOfRange: outOfRange
      case .finished: finished
      }
    }

    mutating func count(_ reason: Refusal) {
      switch reason {
      case .tooStale: tooStale += 1
      case .notInFlight: notInFlight += 1
      case .duplicate: duplicate += 1
      case .wrongVersion: wrongVersion += 1
      case .malformed: malformed += 1
      case .outOfRange: outOfRange += 1
      case .finished: finished += 1
      }
    }
  }

  /// Everything the machine holds: persist it per the driver contract.
  public struct Snapshot: Sendable, Hashable, Codable {
    public var state: State
    public var counts: Counts

    public init(state: State, counts: Counts) {
      self.state = state
      self.counts = counts
    }
  }

  public let configuration: Configuration
  public private(set) var state: State
  public private(set) var counts = Counts()

  /// A machine at version 0 with an empty buffer.
  public init(configuration: Configuration) {
    self.configuration = configuration
    state = .collecting(Collecting(version: 0, dimension: configuration.dimension))
  }

  /// A machine resumed from `snapshot`, checked against the configuration (the snapshot is read
  /// from disk). A finished snapshot below `configuration.versions` (a run extended) collects
  /// again from its last version, with nothing in flight.
  public init(configuration: Configuration, restoring snapshot: Snapshot) throws(CohortError) {
    self.configuration = configuration
    counts = snapshot.counts
    func bad(_ what: String) -> CohortError {
      CohortError(
        .storage, "the asynchronous buffer's saved state does not fit the plan: \(what)",
        fix: "resume with the plan the run was started with")
    }
    let tallies = [
      counts.admitted, counts.folded, counts.applications, counts.dropped, counts.cancelled,
      counts.turnedAway,
      counts.tooStale, counts.notInFlight, counts.duplicate, counts.wrongVersion, counts.malformed,
      counts.outOfRange, counts.finished,
    ]
    guard tallies.allSatisfy({ (0..<Int.max / 2).contains($0) }) else { throw bad("counts \(tallies)") }
    switch snapshot.state {
    case .finished(let version):
      guard version >= 0 else { throw bad("version \(version)") }
      state =
        version < configuration.versions
        ? .collecting(Collecting(version: version, dimension: configuration.dimension))
        : .finished(version: version)
    case .collecting(var c):
      let b = c.buffer
      guard c.version >= 0, c.version < configuration.versions else { throw bad("version \(c.version)") }
      guard b.sum.count == configuration.dimension, b.sum.allSatisfy(\.isFinite) else {
        throw bad("a sum of \(b.sum.count) values for a model of \(configuration.dimension)")
      }
      guard b.devices.count < configuration.bufferSize, b.denominator.isFinite, b.denominator >= 0 else {
        throw bad("\(b.devices.count) updates in a buffer of \(configuration.bufferSize)")
      }
      // The figures a later fold adds to: bounded by what the folded updates can have brought, so
      // no `+=` on a corrupt snapshot can overflow.
      let folded = b.devices.count
      guard (0...configuration.maximumStaleness).contains(b.maximumStaleness),
        (0...folded.multipliedReportingOverflow(by: configuration.maximumStaleness).partialValue)
          .contains(b.stalenessSum),
        (0...folded.multipliedReportingOverflow(by: configuration.maximumExamples).partialValue)
          .contains(b.examples)
      else {
        throw bad(
          "staleness \(b.stalenessSum) (max \(b.maximumStaleness)) and \(b.examples) examples for \(folded) updates"
        )
      }
      guard c.inFlight.count <= configuration.concurrency,
        c.inFlight.values.allSatisfy({ (0...c.version) ~= $0 })
      else {
        throw bad("\(c.inFlight.count) devices in flight for a concurrency of \(configuration.concurrency)")
      }
      // A longer list (an older limit) is cut to the newest, not refused.
      c.left = Array(c.left.suffix(Self.leftLimit(configuration)))
      guard c.left.allSatisfy({ (0...c.version) ~= $0.version }) else {
        throw bad("a device that left on a version after \(c.version)")
      }
      state = .collecting(c)
    }
  }

  public var snapshot: Snapshot { Snapshot(state: state, counts: counts) }

  /// The current model version.
  public var version: Int {
    switch state {
    case .collecting(let c): c.version
    case .finished(let v): v
    }
  }

  /// Devices training now.
  public var inFlightCount: Int {
    switch state {
    case .collecting(let c): c.inFlight.count
    case .finished: 0
    }
  }

  /// The version `device` trains on, nil when it is not training.
  public func trainingVersion(of device: DeviceID) -> Int? {
    guard case .collecting(let c) = state else { return nil }
    return c.inFlight[device]
  }

  /// The devices training now, with their versions (a resumed driver gives them new deadlines).
  public var training: [DeviceID: Int] {
    guard case .collecting(let c) = state else { return [:] }
    return c.inFlight
  }

  /// Free concurrency slots.
  public var freeSlots: Int { configuration.concurrency - inFlightCount }

  // MARK: Events

  /// A device asks for work.
  public mutating func admit(_ device: DeviceID) -> [Action] {
    switch state {
    case .finished:
      return turnAway(device, .finished)
    case .collecting(var c):
      if c.inFlight[device] != nil { return turnAway(device, .inFlight) }
      if c.reported.contains(Participation(device: device, version: c.version)) {
        return turnAway(device, .alreadyReported)
      }
      guard c.inFlight.count < configuration.concurrency else { return turnAway(device, .full) }
      // Admitted again to the version it left: the new participation stands for it.
      if let left = c.left.firstIndex(of: Participation(device: device, version: c.version)) {
        c.left.remove(at: left)
      }
      c.inFlight[device] = c.version
      counts.admitted += 1
      state = .collecting(c)
      return [.train(device: device, version: c.version)]
    }
  }

  /// A device's update arrived. See the driver contract for what to persist before answering.
  public mutating func report(_ report: Report) -> [Action] {
    switch state {
    case .finished:
      return refuse(report.device, .finished)
    case .collecting(var c):
      let device = report.device
      let participation = Participation(device: device, version: report.version)
      if c.reported.contains(participation) { return refuse(device, .duplicate) }
      let trainingOn = report.version
      let left = c.inFlight[device] == trainingOn ? nil : c.left.firstIndex(of: participation)
      if c.inFlight[device] != trainingOn, left == nil {
        return refuse(device, c.inFlight[device] == nil ? .notInFlight : .wrongVersion)
      }
      // Leave `state` without the buffer so the sum is changed in place, not copied; every
      // path below sets it again.
      state = .finished(version: c.version)
      // From here the participation is over, counted or not: its slot is freed.
      if let left { c.left.remove(at: left) } else { c.inFlight[device] = nil }
      let refusal: Refusal? = {
        guard report.update.count == configuration.dimension, report.update.allSatisfy(\.isFinite) else {
          return .malformed
        }
        guard (1...configuration.maximumExamples).contains(report.examples) else { return .outOfRange }
        return c.version - trainingOn > configuration.maximumStaleness ? .tooStale : nil
      }()
      if let refusal {
        state = .collecting(c)
        return refuse(device, refusal)
      }
      let staleness = c.version - trainingOn
      let weight = configuration.weighting.weight(staleness: staleness)
      let count = configuration.weightedByExamples ? Double(report.examples) : 1
      let scale = weight * count
      report.update.withUnsafeBufferPointer { u in
        c.buffer.sum.withUnsafeMutableBufferPointer { s in
          for i in 0..<s.count { s[i] += scale * Double(u[i]) }
        }
      }
      c.buffer.denominator += count
      c.buffer.devices.append(device)
      // Bounded: examples ≤ maximumExamples and K ≤ the plan's 10^6 buffers.
      c.buffer.examples += report.examples
      c.buffer.stalenessSum += staleness
      c.buffer.maximumStaleness = Swift.max(c.buffer.maximumStaleness, staleness)
      c.reported.insert(participation)
      counts.folded += 1
      var actions: [Action] = [.acknowledge(device: device, staleness: staleness, weight: weight)]
      if c.buffer.devices.count == configuration.bufferSize {
        actions += apply(&c)
      } else {
        state = .collecting(c)
      }
      return actions
    }
  }

  /// How many devices that left are remembered: enough for a fleet's reconnections, few enough
  /// that looking one up and storing the state at each acknowledgement stay cheap.
  public var leftLimit: Int { Self.leftLimit(configuration) }

  static func leftLimit(_ configuration: Configuration) -> Int { Swift.min(configuration.concurrency, 1_000) }

  /// A device that left may no longer send its update (its reporting deadline passed).
  public mutating func forget(_ device: DeviceID) {
    guard case .collecting(var c) = state, c.left.contains(where: { $0.device == device }) else { return }
    c.left.removeAll { $0.device == device }
    state = .collecting(c)
  }

  /// A report the driver refused before it reached the buffer (the plan's report rules: an
  /// out-of-range figure, an undecodable update): the participation is over, so a device
  /// training on the version it names gets its slot freed, and the refusal is counted.
  public mutating func refused(_ device: DeviceID, version: Int, _ reason: Refusal) -> [Action] {
    if case .collecting(var c) = state {
      if c.inFlight[device] == version {
        c.inFlight[device] = nil
      } else if let left = c.left.firstIndex(of: Participation(device: device, version: version)) {
        c.left.remove(at: left)
      }
      state = .collecting(c)
    }
    return refuse(device, reason)
  }

  /// A device in flight dropped out or missed its deadline: its slot is free. With
  /// `mayStillReport` (its connection ended, which a device survives), its update on that
  /// version is still taken until the driver `forget`s the device. Returns whether it was in flight.
  @discardableResult
  public mutating func dropped(_ device: DeviceID, mayStillReport: Bool = false) -> Bool {
    guard case .collecting(var c) = state, let version = c.inFlight.removeValue(forKey: device) else {
      return false
    }
    counts.dropped += 1
    let participation = Participation(device: device, version: version)
    if mayStillReport, !c.left.contains(participation) {
      c.left.append(participation)
      if c.left.count > leftLimit { c.left.removeFirst(c.left.count - leftLimit) }
    }
    state = .collecting(c)
    return true
  }

  // MARK: Internals

  private mutating func apply(_ c: inout Collecting) -> [Action] {
    let b = c.buffer
    let next = c.version + 1
    let application = Application(
      version: next, sum: b.sum, denominator: b.denominator, folded: b.devices.count, examples: b.examples,
      meanStaleness: Double(b.stalenessSum) / Double(b.devices.count), maximumStaleness: b.maximumStaleness,
      devices: b.devices)
    counts.applications += 1
    var actions: [Action] = [.apply(application)]
    guard next < configuration.versions else {
      counts.cancelled += c.inFlight.count
      actions += c.inFlight.keys.sorted().map { .cancel(device: $0) }
      state = .finished(version: next)
      return actions + [.finish(version: next)]
    }
    c.version = next
    c.buffer = Buffer(dimension: configuration.dimension)
    // Devices still training on a version now beyond `maximumStaleness` keep their slot until
    // they report (refused, counted as too stale) or drop, as in FedBuff.
    let oldest = next - configuration.maximumStaleness
    c.reported = c.reported.filter { $0.version >= oldest }
    state = .collecting(c)
    return actions
  }

  private mutating func turnAway(_ device: DeviceID, _ reason: AdmissionRefusal) -> [Action] {
    counts.turnedAway += 1
    return [.turnAway(device: device, reason)]
  }

  private mutating func refuse(_ device: DeviceID, _ reason: Refusal) -> [Action] {
    counts.count(reason)
    return [.refuse(device: device, reason)]
  }
}

// Deterministic bytes: the in-flight map and the reported set are written sorted, so equal
// states encode equally under an encoder with sorted keys (the simulator compares saved state
// across runs).
extension AsyncBuffer.Collecting: Codable {
  private enum CodingKeys: String, CodingKey { case version, inFlight, reported, left, buffer }

  public init(from decoder: any Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    version = try c.decode(Int.self, forKey: .version)
    let flying = try c.decode([AsyncBuffer.Participation].self, forKey: .inFlight)
    inFlight = [:]
    for p in flying {
      guard inFlight.updateValue(p.version, forKey: p.device) == nil else {
        throw DecodingError.dataCorruptedError(
          forKey: .inFlight, in: c, debugDescription: "device \(p.device) is in flight twice")
      }
    }
    reported = Set(try c.decode([AsyncBuffer.Participation].self, forKey: .reported))
    left = try c.decodeIfPresent([AsyncBuffer.Participation].self, forKey: .left) ?? []
    buffer = try c.decode(AsyncBuffer.Buffer.self, forKey: .buffer)
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(version, forKey: .version)
    try c.encode(
      inFlight.map { AsyncBuffer.Participation(device: $0.key, version: $0.value) }.sorted(),
      forKey: .inFlight)
    try c.encode(reported.sorted(), forKey: .reported)
    try c.encode(left, forKey: .left)
    try c.encode(buffer, forKey: .buffer)
  }
}
