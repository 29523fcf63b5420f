public import CohortAggregation
public import CohortCore
public import CohortProtocol
public import CohortStore
public import Foundation
public import Logging
public import Metrics

// Replicas: several `cohort serve` processes share one run through PostgreSQL. Each holds its own
// devices' connections, claims places in each round's shared cohort, folds its devices' updates
// (or runs secure aggregation among them) into a partial aggregate and stores it as its
// contribution. The replica holding the run's lease is the round's leader: it combines every
// contribution, steps the strategy and commits the round under its fencing token. The others
// take the committed model from the store and go on to the next round with it.

/// What a plan must not ask of replicas, and why; nil when replicas can serve it.
public enum ReplicaRules {
  public static func refusal(_ plan: Plan) -> CohortError? {
    let fix = "serve this plan from one server (cohort serve without --replica), or change the plan"
    if plan.server.mode == .async {
      return CohortError(
        .invalidConfiguration, "server.mode: async is served by one server; replicas run synchronous rounds",
        fix: fix)
    }
    if plan.server.strategy.needsIndividualUpdates {
      return CohortError(
        .invalidConfiguration,
        "server.strategy: \(plan.server.strategy.kind.rawValue) needs every update of a round in one place, "
          + "but each replica sees only its own devices' updates",
        fix: fix + " to a strategy that sums updates (fedavg, fedprox, fedavgm, fedadam, …)")
    }
    if plan.server.cohort.sampling == .uniform {
      return CohortError(
        .invalidConfiguration,
        "server.cohort.sampling: uniform draws one sample of every device offered, which replicas do not share",
        fix: fix + " to sampling: check_in")
    }
    if plan.secureAggregation.enabled,
      plan.secureAggregation.minimumGroup > plan.server.cohort.selectionTarget
    {
      return CohortError(
        .invalidConfiguration,
        "secure_aggregation.minimum_group is \(plan.secureAggregation.minimumGroup), more than the "
          + "\(plan.server.cohort.selectionTarget) devices a round selects: every replica would send its devices away",
        fix: "lower secure_aggregation.minimum_group (at least 2), or raise server.cohort.goal")
    }
    if plan.privacy.adaptiveClipping != nil {
      return CohortError(
        .invalidConfiguration,
        "privacy.adaptive_clipping moves the clip from every device's report, which replicas do not share",
        fix: fix + " to a fixed privacy.clip")
    }
    return nil
  }
}

/// One replica's contribution to a round: its devices' partial aggregate (or their sum in secure
/// aggregation's ring) and its tally of the round. Stored as bytes for the leader to combine.
public struct ReplicaContribution: Sendable {
  public var aggregate: RoundAggregate
  public var tally: RoundTally
  /// Secure aggregation among this replica's devices: the survivors' sum in the ring (nil when
  /// the protocol gave none), the ring's width, the survivors and their examples.
  public var ringSum: [UInt32]?
  public var ringBits = 0
  public var ringDevices: [DeviceID] = []
  public var ringExamples = 0
  public var secureSteps: [SecureAggregationStepRecord] = []
  public var secureRejected = 0
  public var secureFailure: String?

  public init(aggregate: RoundAggregate, tally: RoundTally, secure: SecureSum? = nil) {
    self.aggregate = aggregate
    self.tally = tally
    guard let secure else { return }
    ringSum = secure.weightedSum == nil ? nil : secure.ringSum
    ringBits = secure.ringBits ?? 0
    ringDevices = secure.weightedSum == nil ? [] : secure.survivors
    ringExamples = secure.examples
    secureSteps = secure.steps
    secureRejected = secure.rejectedMessages
    secureFailure = secure.failure
  }

  public func encoded() -> Data {
    var w = SnapshotWriter()
    w.write(UInt8(1))
    aggregate.save(into: &w)
    tally.save(into: &w)
    w.write(ringSum != nil)
    if let ringSum { w.write(ringSum.map { Int($0) }) }
    w.write(ringDevices)
    for v in [ringBits, ringExamples, secureRejected] { w.write(v) }
    w.write(secureSteps.count)
    for s in secureSteps {
      w.write(Array(s.step.utf8).map { Int($0) })
      for v in [s.entered, s.dropped, s.bytesUp, s.bytesDown] { w.write(v) }
      w.write(s.serverSeconds)
    }
    w.write(secureFailure != nil)
    if let secureFailure { w.write(Array(secureFailure.utf8).map { Int($0) }) }
    return Data(w.bytes)
  }

  /// Reads a contribution another replica stored; anything that does not fit `strategy`'s model
  /// or is out of range is refused.
  public init(decoding data: Data, strategy: ServerStrategy) throws(CohortError) {
    do throws(CohortError) {
      self = try Self.parse(data, strategy: strategy)
    } catch {
      let detail = error.message.replacingOccurrences(of: "the saved simulation state is damaged: ", with: "")
      throw CohortError(
        .storage, "a replica's stored contribution is damaged: \(detail)",
        fix: "the round goes on without that replica's devices; if it recurs, check that every replica runs "
          + "the same version of Cohort and the same plan")
    }
  }

  private init(aggregate: RoundAggregate, tally: RoundTally) {
    self.aggregate = aggregate
    self.tally = tally
  }

  private static func parse(_ data: Data, strategy: ServerStrategy) throws(CohortError) -> ReplicaContribution
  {
    var r = SnapshotReader([UInt8](data))
    guard try r.byte() == 1 else { throw SnapshotReader.corrupt("a contribution of an unknown version") }
    var c = ReplicaContribution(
      aggregate: try RoundAggregate(restoring: &r, strategy: strategy), tally: try RoundTally(restoring: &r))
    func text() throws(CohortError) -> String {
      let bytes = try r.ints()
      guard bytes.allSatisfy({ (0...255).contains($0) }) else {
        throw SnapshotReader.corrupt("text that is not bytes")
      }
      return String(decoding: bytes.map { UInt8($0) }, as: UTF8.self)
    }
    if try r.bool() {
      let values = try r.ints()
      guard values.allSatisfy({ (0...Int(UInt32.max)).contains($0) }) else {
        throw SnapshotReader.corrupt("a ring sum outside 32 bits")
      }
      c.ringSum = values.map { UInt32($0) }
    }
    c.ringDevices = try r.ints()
    c.ringBits = try r.int()
    c.ringExamples = try r.int()
    c.secureRejected = try r.int()
    // Counts the leader adds across replicas: bounded far below overflow.
    let limit = 1 << 48
    guard (0...32).contains(c.ringBits), (0..<limit).contains(c.ringExamples),
      (0..<limit).contains(c.secureRejected)
    else {
      throw SnapshotReader.corrupt("secure aggregation counts out of range")
    }
    let steps = try r.count()
    for _ in 0..<steps {
      let name = try text()
      let (entered, dropped, up, down) = (try r.int(), try r.int(), try r.int(), try r.int())
      let seconds = try r.double()
      guard [entered, dropped, up, down].allSatisfy({ (0..<limit).contains($0) }), seconds >= 0,
        seconds.isFinite
      else { throw SnapshotReader.corrupt("a secure aggregation step with a negative or absurd count") }
      c.secureSteps.append(
        SecureAggregationStepRecord(
          step: name, entered: entered, dropped: dropped, bytesUp: up, bytesDown: down, serverSeconds: seconds
        ))
    }
    if try r.bool() { c.secureFailure = try text() }
    guard r.isAtEnd else { throw SnapshotReader.corrupt("bytes after the contribution") }
    return c
  }

  /// Every replica's contribution to a round combined, in replica order.
  public struct Combined: Sendable {
    public var aggregate: RoundAggregate
    public var tally = RoundTally()
    public var ringSum: [UInt32]?
    public var ringDevices: [DeviceID] = []
    public var ringExamples = 0
    public var secureSteps: [SecureAggregationStepRecord] = []
    public var secureRejected = 0
    /// Why no replica's secure aggregation gave a sum, when none did.
    public var secureFailures: [String] = []
  }

  /// Adds the contributions up: sums add in Double, ring sums add in their ring (exactly, so a
  /// secure round gives the same sum however its devices were spread), tallies add, and each
  /// secure-aggregation step's counts add across replicas.
  public static func combine(_ contributions: [ReplicaContribution], strategy: ServerStrategy) -> Combined {
    var out = Combined(aggregate: strategy.makeRound())
    var steps: [String: SecureAggregationStepRecord] = [:]
    var order: [String] = []
    // The ring's length is the one most devices' sums have: a damaged sum of another length is
    // left out, whichever replica comes first.
    var devicesByLength: [Int: Int] = [:]
    for c in contributions {
      if let ring = c.ringSum { devicesByLength[ring.count, default: 0] += c.ringDevices.count }
    }
    let ringLength = devicesByLength.max { ($0.value, -$0.key) < ($1.value, -$1.key) }?.key
    for c in contributions {
      out.aggregate.merge(c.aggregate)
      out.tally.add(c.tally)
      out.secureRejected += c.secureRejected
      if let failure = c.secureFailure, c.ringSum == nil, c.tally.counts.reported > 0 {
        out.secureFailures.append(failure)
      }
      if let ring = c.ringSum {
        // A sum of another length is damaged: neither it nor its devices count.
        guard ring.count == ringLength else { continue }
        let mask: UInt32 = c.ringBits >= 32 || c.ringBits <= 0 ? .max : (1 << UInt32(c.ringBits)) - 1
        if var total = out.ringSum {
          for i in 0..<total.count { total[i] = (total[i] &+ ring[i]) & mask }
          out.ringSum = total
        } else {
          out.ringSum = ring.map { $0 & mask }
        }
        out.ringDevices += c.ringDevices
        out.ringExamples += c.ringExamples
      }
      for s in c.secureSteps {
        if var known = steps[s.step] {
          known.entered += s.entered
          known.dropped += s.dropped
          known.bytesUp += s.bytesUp
          known.bytesDown += s.bytesDown
          known.serverSeconds += s.serverSeconds
          steps[s.step] = known
        } else {
          steps[s.step] = s
          order.append(s.step)
        }
      }
    }
    out.secureSteps = order.compactMap { steps[$0] }
    return out
  }
}

/// What a check-in's claim of a place in the shared cohort gave.
public enum PlaceClaim: Sendable, Hashable {
  case granted
  /// The replicas together filled the cohort.
  case full
  /// The store could not be asked: the device comes back later, the cohort stays open.
  case unavailable
}

/// What happened to a round this replica closed.
public enum ReplicaDecision: Sendable {
  /// Another replica led it: its record, the model it committed (nil when abandoned), and the
  /// strategy state stored with it.
  case decided(RoundRecord, model: Weights?, strategyState: Data?)
  /// This replica leads it: every contribution stored so far, by replica.
  case lead([String: Data])
}

/// A replica's link to the others through the shared store: the lease (who leads), heartbeats
/// and check-in rates, places in shared cohorts, contributions and decisions. An actor around
/// store calls; what to decide from them is the Coordinator's and the round machine's.
public actor ReplicaLink {
  public struct Configuration: Sendable {
    public var run: RunID
    /// This replica's name: its lease holder string (host, pid and a random part).
    public var replica: String
    public var leaseSeconds: Double
    /// How often the replica looks at the shared cohort and at decided rounds.
    public var syncInterval: Double
    /// The places in a round's cohort (`server.cohort.selection_target`) and its goal.
    public var selectionTarget: Int
    public var goal: Int
    /// The longest the leader waits for a replica that claimed places to contribute: a replica
    /// that closes its round later (its selection ran to the deadline) still makes it in.
    public var contributionWait: Double

    public init(
      run: RunID, replica: String, leaseSeconds: Double = 30, syncInterval: Double = 0.2, plan: Plan
    ) {
      self.run = run
      self.replica = replica
      self.leaseSeconds = leaseSeconds
      self.syncInterval = syncInterval
      selectionTarget = plan.server.cohort.selectionTarget
      goal = plan.server.cohort.goal
      contributionWait = plan.server.windows.selection + plan.server.windows.reporting + leaseSeconds
    }
  }

  public nonisolated let configuration: Configuration
  let store: any ReplicaStore
  let logger: Logger
  private let sleep: @Sendable (Double) async -> Void
  /// The lease as this replica last took or renewed it; nil while another replica leads.
  public private(set) var grant: LeaseGrant?
  private let metrics: ReplicaMetrics
  /// Check-ins waiting for a place, by round, and the rounds whose claim is in flight.
  private var placeWaiters: [Int: [CheckedContinuation<PlaceClaim, Never>]] = [:]
  private var claiming: Set<Int> = []
  /// Reports accepted here and not yet counted in the store, by round.
  private var unsentReports: [Int: Int] = [:]
  /// The replica stopped serving: nothing waits for decisions any more.
  private var stopped = false

  public init(
    configuration: Configuration, store: any ReplicaStore, logger: Logger,
    metrics: any MetricsFactory = MetricsSystem.factory,
    sleep: @escaping @Sendable (Double) async -> Void = { try? await Task.sleep(for: .seconds($0)) }
  ) {
    self.configuration = configuration
    self.store = store
    self.logger = logger
    self.sleep = sleep
    self.metrics = ReplicaMetrics(factory: metrics, replica: configuration.replica)
  }

  var run: RunID { configuration.run }
  var replica: String { configuration.replica }

  /// Whether this replica holds the run's lease now, by its own clock (the fencing token guards
  /// a commit however the clocks disagree).
  public var isLeader: Bool { grant.map { $0.expiresAt > Date() } ?? false }

  // MARK: Lease and heartbeat

  /// Takes or renews the lease, and tells the others this replica is alive and how fast devices
  /// check in here; returns the other live replicas' check-in rate.
  @discardableResult
  public func beat(checkInRate: Double) async -> Double {
    guard !stopped else { return 0 }
    let now = Date()
    do throws(CohortError) {
      // The heartbeat first: a replica opening the run reads a lease holder it can find among
      // the replicas.
      try await store.heartbeat(run: run, replica: replica, checkInRate: checkInRate, now: now)
      let taken = try await store.acquireLease(
        run: run, holder: replica, now: now, duration: configuration.leaseSeconds)
      if stopped, let taken {
        // The replica stopped while the lease was being renewed: it goes back at once.
        try? await store.releaseLease(run: run, holder: replica, token: taken.token)
        return 0
      }
      if taken?.token != grant?.token {
        if let taken {
          logger.notice("this replica leads the run", metadata: ["run": "\(run)", "token": "\(taken.token)"])
        } else if grant != nil {
          logger.notice("another replica leads the run now", metadata: ["run": "\(run)"])
        }
      }
      grant = taken
      metrics.leader.record(taken == nil ? 0 : 1)
      let fresh = now.addingTimeInterval(-configuration.leaseSeconds)
      let others = try await store.replicas(run).filter { $0.replica != replica && $0.seenAt >= fresh }
      metrics.replicas.record(others.count + 1)
      return others.reduce(0) { $0 + $1.checkInRate }
    } catch {
      logger.warning(
        "could not reach the other replicas", metadata: ["run": "\(run)", "error": "\(error.message)"])
      return 0
    }
  }

  /// Whether another replica of the run was alive at its last heartbeat (within a lease).
  public func othersAlive() async -> Bool {
    let fresh = Date().addingTimeInterval(-configuration.leaseSeconds)
    // Unknown counts as alive: a stopping replica must not mark a run interrupted that others
    // may still serve.
    guard let all = try? await store.replicas(run) else { return true }
    return all.contains { $0.replica != replica && $0.seenAt >= fresh }
  }

  /// Gives the lease back (the replica stops), so another may lead at once; a round waiting
  /// for its decision here stops waiting.
  public func resign() async {
    stopped = true
    guard let grant else { return }
    self.grant = nil
    metrics.leader.record(0)
    try? await store.releaseLease(run: run, holder: replica, token: grant.token)
  }

  // MARK: Shared cohort

  /// Claims a place in `round`'s cohort; false when the replicas filled it (or the store is
  /// unreachable: the device is told to come back rather than selected twice over). Check-ins
  /// that arrive while a claim is in flight wait for the next one, which claims exactly as many
  /// places as they need: one transaction per batch, not per device, and no place claimed that
  /// no device asked for.
  public func claimPlace(round: Int) async -> PlaceClaim {
    await withCheckedContinuation { waiter in
      placeWaiters[round, default: []].append(waiter)
      if claiming.insert(round).inserted {
        Task { await self.claimForWaiters(round: round) }
      }
    }
  }

  private func claimForWaiters(round: Int) async {
    while let batch = placeWaiters.removeValue(forKey: round), !batch.isEmpty {
      do throws(CohortError) {
        let granted = try await store.claimPlaces(
          run: run, round: round, replica: replica, count: batch.count, target: configuration.selectionTarget)
        metrics.placesClaimed.increment(by: granted)
        for (i, waiter) in batch.enumerated() { waiter.resume(returning: i < granted ? .granted : .full) }
      } catch {
        logger.warning(
          "could not claim places", metadata: ["round": "\(round)", "error": "\(error.message)"])
        for waiter in batch { waiter.resume(returning: .unavailable) }
      }
    }
    claiming.remove(round)
  }

  public func releasePlace(round: Int) async {
    try? await store.releasePlace(run: run, round: round, replica: replica)
  }

  /// Counts a report toward the shared goal; the counts go to the store with the next look at
  /// the others (`cohortState`), one write per round per sync interval.
  public func countReport(round: Int) {
    unsentReports[round, default: 0] += 1
  }

  private func sendReports() async {
    for (round, count) in unsentReports.sorted(by: { $0.key < $1.key }) {
      do throws(CohortError) {
        try await store.countReports(run: run, round: round, replica: replica, count: count)
        unsentReports[round, default: 0] -= count
        if unsentReports[round] == 0 { unsentReports[round] = nil }
      } catch {
        logger.warning(
          "could not count reports", metadata: ["round": "\(round)", "error": "\(error.message)"])
      }
    }
  }

  /// Whether the replicas together filled `round`'s cohort (or it was decided already), and
  /// whether they met its goal of reports.
  public func cohortState(round: Int) async -> (filled: Bool, goalMet: Bool) {
    await sendReports()
    do throws(CohortError) {
      if try await store.round(run: run, round: round) != nil { return (true, true) }
      let tally = try await store.cohortTally(run: run, round: round).values
      return (
        tally.reduce(0) { $0 + $1.selected } >= configuration.selectionTarget,
        tally.reduce(0) { $0 + $1.reported } >= configuration.goal
      )
    } catch {
      return (false, false)
    }
  }

  // MARK: Contributions and decisions

  /// Stores this replica's contribution to `round`; false when the store could not take it.
  private func contribute(round: Int, _ contribution: ReplicaContribution) async -> Bool {
    do throws(CohortError) {
      try await store.contribute(
        run: run, round: round, replica: replica, contribution: contribution.encoded())
      metrics.contributions.increment()
      return true
    } catch {
      logger.error(
        "could not store this replica's contribution; trying again",
        metadata: ["round": "\(round)", "error": "\(error.message)"])
      return false
    }
  }

  /// Stores `contribution` (again and again until the store takes it or the round is decided),
  /// then waits until `round` is decided, or this replica leads it and every live replica that
  /// claimed places in it has contributed (or the wait is over). Polls the store.
  public func decide(round: Int, contribution: ReplicaContribution) async -> ReplicaDecision? {
    let started = Date()
    var stored = false
    while !Task.isCancelled && !stopped {
      do throws(CohortError) {
        if let record = try await store.round(run: run, round: round) {
          let model =
            record.outcome == .committed
            ? try await store.checkpoint(run, through: round).map(\.weights) : nil
          let state = record.outcome == .committed ? try await store.resumeState(run, round: round) : nil
          return .decided(record, model: model, strategyState: state)
        }
        if !stored { stored = await contribute(round: round, contribution) }
        if isLeader {
          let contributions = try await store.contributions(run: run, round: round)
          let waited = Date().timeIntervalSince(started)
          // The leader has its own contribution in hand, stored or not.
          if try await awaited(round: round, contributed: Set(contributions.keys).union([replica]))
            || waited >= configuration.contributionWait
          {
            return .lead(contributions)
          }
        }
      } catch {
        logger.warning("waiting for round \(round) to be decided", metadata: ["error": "\(error.message)"])
      }
      await sleep(configuration.syncInterval)
    }
    return nil
  }

  /// Whether every live replica that claimed places in `round` has contributed.
  private func awaited(round: Int, contributed: Set<String>) async throws(CohortError) -> Bool {
    let fresh = Date().addingTimeInterval(-configuration.leaseSeconds)
    let live = Set(try await store.replicas(run).filter { $0.seenAt >= fresh }.map(\.replica))
    let claimed = try await store.cohortTally(run: run, round: round).filter { $0.value.selected > 0 }.keys
    return claimed.allSatisfy { contributed.contains($0) || !live.contains($0) }
  }

  /// Why a leader's commit did not land as its own.
  public enum CommitRefusal: Error {
    /// Another replica took the lease, or the round is in the store already (decided by another,
    /// or this commit landed and its answer was lost): the store's decision is to be followed.
    case fenced
    /// The store refused every attempt.
    case failed(CohortError)
  }

  /// Commits the round this replica led, under its fencing token; storage failures are retried
  /// with back-off (`attempts` in all).
  public func commit(
    _ record: RoundRecord, checkpoint: Weights?, devices: [DeviceParticipation], strategyState: Data?,
    secureAggregation: [SecureAggregationStepRecord], attempts: Int, backoff: Double
  ) async throws(CommitRefusal) {
    var failures = 0
    while true {
      guard let token = grant?.token else { throw .fenced }
      do throws(CohortError) {
        try await store.commitRound(
          run, record, checkpoint: checkpoint, devices: devices, lateReports: [:], resumeState: strategyState,
          secureAggregation: secureAggregation, fencingToken: token)
        metrics.roundsLed.increment()
        try? await store.forgetRounds(run: run, through: record.round)
        return
      } catch {
        if error.code == .fenced {
          grant = nil
          metrics.leader.record(0)
          throw .fenced
        }
        // A commit whose answer was lost may have landed; another replica may have decided the
        // round meanwhile. Either way the store has it, and it is followed.
        if (try? await store.round(run: run, round: record.round)) != nil { throw .fenced }
        failures += 1
        logger.error("could not commit round \(record.round)", metadata: ["error": "\(error.message)"])
        if failures >= attempts { throw .failed(error) }
        await sleep(min(60, backoff * Double(1 << min(failures - 1, 20))))
      }
    }
  }
}

/// Metrics of one replica, labelled with its name: its role (1 while it leads), the live replicas
/// it sees, and what it added to the shared run.
struct ReplicaMetrics: Sendable {
  let leader: Gauge
  let replicas: Gauge
  let placesClaimed: Counter
  let contributions: Counter
  let roundsLed: Counter

  init(factory: any MetricsFactory, replica: String) {
    let dimensions = [("replica", replica)]
    leader = Gauge(label: "cohort_replica_leader", dimensions: dimensions, factory: factory)
    replicas = Gauge(label: "cohort_replicas_live", dimensions: dimensions, factory: factory)
    placesClaimed = Counter(
      label: "cohort_replica_places_claimed_total", dimensions: dimensions, factory: factory)
    contributions = Counter(
      label: "cohort_replica_contributions_total", dimensions: dimensions, factory: factory)
    roundsLed = Counter(label: "cohort_replica_rounds_led_total", dimensions: dimensions, factory: factory)
  }
}
