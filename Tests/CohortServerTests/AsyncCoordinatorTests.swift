import CohortCore
import CohortProtocol
import CohortStore
import CohortTesting
import Foundation
import Logging
import Synchronization
import Testing

@testable import CohortServer

/// An asynchronous plan on the two-parameter test model: concurrency 3, buffer 2, at most one
/// version of staleness, 3 versions, FedAvg weighted by examples.
func makeAsyncPlan(versions: Int = 3, concurrency: Int = 3, buffer: Int = 2, maximumStaleness: Int = 1)
  -> Plan
{
  var plan = makePlan(rounds: versions)
  plan.server.asynchronous = AsyncPlan(
    concurrency: concurrency, buffer: buffer, staleness: .constant, maximumStaleness: maximumStaleness)
  return plan
}

/// The results store with faults injected into the asynchronous writes: the next `failures`
/// buffer saves or commits fail as a full disk would.
final class FailingAsyncJournal: AsyncJournal {
  let store: ResultsStore
  let failures: Mutex<Int>

  init(store: ResultsStore, failures: Int) {
    self.store = store
    self.failures = Mutex(failures)
  }

  private func fail() throws(CohortError) {
    let fail = failures.withLock { n in
      defer { n -= 1 }
      return n > 0
    }
    if fail { throw CohortError(.storage, "database or disk is full (injected)") }
  }

  func commitRound(
    _ run: RunID, _ record: RoundRecord, checkpoint: Weights?, devices: [DeviceParticipation],
    lateReports: [Int: Int], resumeState: Data?, secureAggregation: [SecureAggregationStepRecord]
  ) throws(CohortError) {
    try fail()
    try store.commitRound(
      run, record, checkpoint: checkpoint, devices: devices, lateReports: lateReports,
      resumeState: resumeState,
      secureAggregation: secureAggregation)
  }

  func saveAsyncBuffer(_ run: RunID, version: Int, state: Data) throws(CohortError) {
    try fail()
    try store.saveAsyncBuffer(run, version: version, state: state)
  }

  func recordEvaluation(_ run: RunID, round: Int, _ evaluation: Evaluation) throws(CohortError) {
    try store.recordEvaluation(run, round: round, evaluation)
  }
}

/// A coordinator of `plan` on a results store in `directory` (a file, so a second coordinator
/// can resume the run as a restarted server would).
struct AsyncHarness {
  let clock = ManualClock()
  let link = RecordingLink()
  let store: ResultsStore
  let run: RunID
  let coordinator: AsyncCoordinator

  init(
    plan: Plan, store: ResultsStore, run: RunID? = nil, journal: (any AsyncJournal)? = nil
  ) throws {
    self.store = store
    if let run {
      self.run = run
    } else {
      let scenario = Scenario(
        planPath: "plan.yaml", plan: plan, data: .syntheticFedProx(.init(alpha: 0, beta: 0, devices: 10)),
        partition: .natural, devices: PopulationPlan(), seed: 1)
      self.run = try store.createRun(name: "t", scenario: scenario, createdAt: Date(timeIntervalSince1970: 0))
    }
    let saved = try ServedRun.asyncState(in: store, run: self.run)
    let initial = try store.latestCheckpoint(self.run)?.weights ?? Weights(layout: layout, values: [1, 1])
    let committed = try store.rounds(self.run).filter { $0.outcome == .committed }.count
    coordinator = try AsyncCoordinator(
      configuration: .init(plan: plan, run: self.run), initial: initial, committed: committed, saved: saved,
      store: journal ?? store, link: link, evaluator: FirstValueEvaluator(), clock: clock,
      logger: Logger(label: "test"))
  }

  func checkIn(_ device: DeviceID) async -> ServerReply {
    await coordinator.checkIn(CheckIn(device: device, population: "default"))
  }

  func update(_ device: DeviceID, version: Int, _ values: [Float], examples: Int = 1) -> UpdateReport {
    UpdateReport(
      device: device, round: version, update: Weights(layout: layout, values: values), examples: examples,
      trainLoss: 0.5, bytes: 8)
  }
}

@Suite struct AsyncCoordinatorTests {
  /// Devices are admitted up to the concurrency, each handed the current version at once; the
  /// next is told when to come back.
  @Test func admitsUpToTheConcurrencyAndNamesTheVersion() async throws {
    let h = try AsyncHarness(plan: makeAsyncPlan(), store: try ResultsStore.inMemory())
    await h.coordinator.start()
    for d in 1...3 { #expect(await h.checkIn(d) == .waitForTask(round: 0)) }
    let tasks = h.link.drain()
    #expect(tasks.map(\.devices) == [[1], [2], [3]])
    #expect(tasks.allSatisfy { $0.assignment.task.round == 0 && $0.assignment.checkpoint.values == [1, 1] })
    #expect(tasks.allSatisfy { $0.assignment.task.reportingDeadline == 300 })
    guard case .retry(let window) = await h.checkIn(4) else {
      Issue.record("a fourth device was admitted beyond the concurrency of 3")
      return
    }
    #expect(window.lowerBound >= 0 && window.upperBound <= 3600)
    #expect(
      await h.coordinator.checkIn(CheckIn(device: 5, population: "other")) == .rejected(.wrongPopulation))
  }

  /// Two folds make version 1 = initial + the example-weighted mean, committed with its
  /// checkpoint; a device admitted after it trains on version 1; an update two versions stale is
  /// refused and counted in the next row's `late`.
  @Test func aFullBufferIsCommittedAsTheNextVersionAndStaleUpdatesAreRefused() async throws {
    let h = try AsyncHarness(plan: makeAsyncPlan(), store: try ResultsStore.inMemory())
    await h.coordinator.start()
    for d in 1...3 { _ = await h.checkIn(d) }
    h.clock.set(10)
    #expect(await h.coordinator.report(h.update(1, version: 0, [1, 0], examples: 1)) == .accepted(round: 0))
    #expect(
      await h.coordinator.report(h.update(1, version: 0, [1, 0], examples: 1)) == .rejected(.duplicate))
    #expect(await h.coordinator.report(h.update(2, version: 0, [0, 3], examples: 3)) == .accepted(round: 0))
    let v1 = try #require(try h.store.latestCheckpoint(h.run))
    #expect(v1.round == 1)
    #expect(v1.weights.values == [1.25, 3.25])
    #expect(await h.coordinator.globalRound == 1)
    // Devices 1 and 2 train on version 1; device 3 still on version 0.
    _ = h.link.drain()
    for d in 1...2 { #expect(await h.checkIn(d) == .waitForTask(round: 1)) }
    #expect(await h.coordinator.report(h.update(1, version: 1, [2, 2])) == .accepted(round: 1))
    #expect(await h.coordinator.report(h.update(2, version: 1, [2, 2])) == .accepted(round: 1))
    // Version 2 is applied: device 3's update on version 0 is two versions stale.
    #expect(await h.coordinator.report(h.update(3, version: 0, [9, 9])) == .rejected(.late))
    _ = await h.checkIn(3)
    _ = await h.checkIn(1)
    #expect(await h.coordinator.report(h.update(3, version: 2, [0, 0])) == .accepted(round: 2))
    #expect(await h.coordinator.report(h.update(1, version: 2, [0, 0])) == .accepted(round: 2))
    #expect(await h.coordinator.isFinished)
    let rows = try h.store.rounds(h.run)
    #expect(rows.map(\.round) == [1, 2, 3])
    #expect(rows.map(\.reported) == [2, 2, 2])
    #expect(rows.map(\.late) == [0, 0, 1])
    #expect(rows.map(\.maximumStaleness) == [0, 0, 0])
    // Evaluated every version (the plan's `every: 1`): the first value of each model.
    #expect(rows.map(\.evalAccuracy) == [1.25, 3.25, 3.25])
  }

  /// A device that misses its reporting deadline, or whose stream ends, frees its slot, and the
  /// drop is counted in the next row.
  @Test func aDeviceGoneOrPastItsDeadlineFreesItsSlot() async throws {
    let h = try AsyncHarness(plan: makeAsyncPlan(), store: try ResultsStore.inMemory())
    await h.coordinator.start()
    for d in 1...3 { _ = await h.checkIn(d) }
    #expect(await h.coordinator.nextDeadline == 300)
    if case .waitForTask = await h.checkIn(4) { Issue.record("admitted beyond the concurrency") }
    await h.coordinator.dropped(device: 1, round: 0)
    #expect(await h.checkIn(4) == .waitForTask(round: 0))
    h.clock.set(300)
    await h.coordinator.tick()
    #expect(await h.coordinator.nextDeadline == nil)
    // Devices 2, 3 and 4 missed the deadline: their reports no longer count.
    #expect(await h.coordinator.report(h.update(2, version: 0, [1, 1])) == .rejected(.notSelected))
    for d in 5...6 { _ = await h.checkIn(d) }
    for d in 5...6 { _ = await h.coordinator.report(h.update(d, version: 0, [1, 1])) }
    let row = try #require(try h.store.rounds(h.run).first)
    #expect(row.dropped == 4)
    #expect(row.reported == 2)
  }

  /// A device may count twice in one version: its stale update and its update on the current
  /// version are both folded into the same buffer. The device counters count both.
  @Test func aDeviceFoldedTwiceInOneVersionCountsTwice() async throws {
    let h = try AsyncHarness(plan: makeAsyncPlan(), store: try ResultsStore.inMemory())
    for d in 1...3 { _ = await h.checkIn(d) }
    for d in 2...3 { _ = await h.coordinator.report(h.update(d, version: 0, [1, 1])) }
    #expect(await h.coordinator.report(h.update(1, version: 0, [1, 1])).isAccepted)
    #expect(await h.checkIn(1) == .waitForTask(round: 1))
    #expect(await h.coordinator.report(h.update(1, version: 1, [1, 1])).isAccepted)
    let rows = try h.store.rounds(h.run)
    #expect(rows.map(\.reported) == [2, 2])
    #expect(rows.map(\.maximumStaleness) == [0, 1])
    let one = try #require(try h.store.devices(h.run).first { $0.device == 1 })
    #expect(one.reports == 2 && one.participations == 2)
  }

  /// An update whose figures are beyond the plan's report rules is refused and its device's
  /// slot is freed.
  @Test func aReportBeyondTheRulesIsRefusedAndFreesItsSlot() async throws {
    let h = try AsyncHarness(plan: makeAsyncPlan(concurrency: 1), store: try ResultsStore.inMemory())
    await h.coordinator.start()
    _ = await h.checkIn(1)
    #expect(await h.coordinator.report(h.update(1, version: 0, [.nan, 0])) == .rejected(.malformed))
    #expect(await h.checkIn(2) == .waitForTask(round: 0))
    #expect(
      await h.coordinator.report(h.update(2, version: 0, [1, 1], examples: Int.max)) == .rejected(.outOfRange)
    )
    #expect(await h.checkIn(3) == .waitForTask(round: 0))
  }

  /// The server is killed in the middle of a buffer (the coordinator is dropped, nothing shut
  /// down): a new one on the same database goes on from the stored buffer and strategy state.
  /// The acknowledged update is not lost (version 2 is what an uninterrupted run makes, bit for
  /// bit, FedAdam's moments included) and not folded twice (its replay is refused as a duplicate).
  @Test(arguments: [StrategyPlan.Rule.fedavg(weighted: true), .fedadam(.init(serverLearningRate: 0.1))])
  func aRunKilledMidBufferResumesWithEveryAcknowledgedUpdateOnce(strategy: StrategyPlan.Rule) async throws {
    let dir = TemporaryDirectory()
    var plan = makeAsyncPlan(buffer: 3)
    plan.server.strategy.rule = strategy
    let reports: [(DeviceID, [Float], Int)] = [(1, [0.5, -1], 2), (2, [0.25, 4], 1), (3, [-3, 0.125], 5)]
    /// Version 1 from all three, then all three admitted to version 1.
    func versionOne(_ h: AsyncHarness) async {
      for (d, _, _) in reports { _ = await h.checkIn(d) }
      for (d, v, n) in reports { _ = await h.coordinator.report(h.update(d, version: 0, v, examples: n)) }
      for (d, _, _) in reports { #expect(await h.checkIn(d) == .waitForTask(round: 1)) }
    }

    let uninterrupted = try AsyncHarness(plan: plan, store: try ResultsStore.inMemory())
    await versionOne(uninterrupted)
    for (d, v, n) in reports {
      #expect(
        await uninterrupted.coordinator.report(uninterrupted.update(d, version: 1, v, examples: n)).isAccepted
      )
    }
    let expected = try #require(try uninterrupted.store.latestCheckpoint(uninterrupted.run))
    #expect(expected.round == 2)

    let path = dir.file("server.sqlite")
    var first: AsyncHarness? = try AsyncHarness(plan: plan, store: try ResultsStore(path: path))
    let run = first!.run
    await versionOne(first!)
    let (d1, v1, n1) = reports[0]
    #expect(await first!.coordinator.report(first!.update(d1, version: 1, v1, examples: n1)).isAccepted)
    // Killed: no shutdown, no status written; the store is closed as a dead process's would be.
    try first!.store.close()
    first = nil

    let second = try AsyncHarness(plan: plan, store: try ResultsStore(path: path), run: run)
    // The device that was acknowledged sends its upload again (it may not have seen the answer).
    #expect(
      await second.coordinator.report(second.update(d1, version: 1, v1, examples: n1))
        == .rejected(.duplicate))
    // Devices 2 and 3 were training when the server died: they report to the new one.
    for (d, v, n) in reports.dropFirst() {
      #expect(await second.coordinator.report(second.update(d, version: 1, v, examples: n)).isAccepted)
    }
    let resumed = try #require(try second.store.latestCheckpoint(run))
    #expect(resumed.round == 2)
    #expect(resumed.weights.values == expected.weights.values, "\(strategy)")
    #expect(try second.store.rounds(run).map(\.reported) == [3, 3])
    #expect(try second.store.devices(run).map(\.reports) == [2, 2, 2])
  }

  /// A stored state that is not one refuses to start, saying what to do.
  @Test func anUnreadableStoredStateIsRefused() throws {
    #expect(throws: CohortError.self) {
      _ = try AsyncCoordinator(
        configuration: .init(plan: makeAsyncPlan()), initial: Weights(layout: layout, values: [1, 1]),
        saved: Data("{not json".utf8), store: nil, link: RecordingLink(), evaluator: nil,
        clock: ManualClock(),
        logger: Logger(label: "test"))
    }
  }

  /// A buffer save or a version's commit that fails is undone: the device is not acknowledged
  /// (told to come back), the buffer is as before, and the same upload counts once the store
  /// works again. Failing writes in a row stop the coordinator with the cause.
  @Test func aFailedWriteIsNotAcknowledgedAndIsUndone() async throws {
    let store = try ResultsStore.inMemory()
    let plan = makeAsyncPlan(buffer: 2)
    let journal = FailingAsyncJournal(store: store, failures: 1)
    let h = try AsyncHarness(plan: plan, store: store, journal: journal)
    for d in 1...2 { _ = await h.checkIn(d) }
    guard case .retry = await h.coordinator.report(h.update(1, version: 0, [1, 1])) else {
      Issue.record("a report was answered although its buffer was not stored")
      return
    }
    #expect(await h.coordinator.report(h.update(1, version: 0, [1, 1])).isAccepted)
    // The commit of version 1 fails once: not acknowledged, then counted on the resend.
    journal.failures.withLock { $0 = 1 }
    guard case .retry = await h.coordinator.report(h.update(2, version: 0, [3, 3])) else {
      Issue.record("the update that filled the buffer was answered although its version was not committed")
      return
    }
    #expect(try store.rounds(h.run).isEmpty)
    #expect(await h.coordinator.report(h.update(2, version: 0, [3, 3])).isAccepted)
    #expect(try store.latestCheckpoint(h.run)?.weights.values == [3, 3])

    journal.failures.withLock { $0 = 100 }
    for d in 1...2 { _ = await h.checkIn(d) }
    for _ in 0..<6 { _ = await h.coordinator.report(h.update(1, version: 1, [1, 1])) }
    let failure = try #require(await h.coordinator.failure)
    #expect(failure.message.contains("could not be stored after 6 attempts"))
    #expect(await h.coordinator.status.failure != nil)
  }

  /// A device whose stream ended while it trained frees its slot, but the upload it resends on
  /// a new stream (docs/PROTOCOL.md §2.7) still counts until its reporting deadline.
  @Test func aDeviceThatLostItsStreamMayStillSendItsUpdate() async throws {
    let h = try AsyncHarness(
      plan: makeAsyncPlan(concurrency: 2, buffer: 3), store: try ResultsStore.inMemory())
    for d in 1...2 { _ = await h.checkIn(d) }
    await h.coordinator.dropped(device: 1, round: 0)
    #expect(await h.checkIn(3) == .waitForTask(round: 0))
    #expect(await h.coordinator.report(h.update(1, version: 0, [1, 1])).isAccepted)
    #expect(await h.coordinator.report(h.update(1, version: 0, [1, 1])) == .rejected(.duplicate))
    // Device 3 loses its stream too; its reporting deadline still stands, and passes with
    // device 2's, which is still connected: neither update counts any more.
    await h.coordinator.dropped(device: 3, round: 0)
    #expect(await h.coordinator.nextDeadline == 300)
    h.clock.set(300)
    await h.coordinator.tick()
    #expect(await h.coordinator.nextDeadline == nil)
    #expect(await h.coordinator.report(h.update(2, version: 0, [1, 1])) == .rejected(.notSelected))
    #expect(await h.coordinator.report(h.update(3, version: 0, [1, 1])) == .rejected(.notSelected))
  }

  /// A buffer whose mean overflows Float32 makes no model: the version is recorded as abandoned,
  /// the model stays, and the run goes on to the next version.
  @Test func aVersionThatIsNotFiniteIsAbandonedAndTheModelKept() async throws {
    var plan = makeAsyncPlan()
    // A step of 10 along a mean near Float32's largest value goes past it.
    plan.server.asynchronous?.serverLearningRate = 10
    let h = try AsyncHarness(plan: plan, store: try ResultsStore.inMemory())
    for d in 1...3 { _ = await h.checkIn(d) }
    let huge = Float.greatestFiniteMagnitude
    for d in 1...2 { _ = await h.coordinator.report(h.update(d, version: 0, [huge, huge])) }
    let row = try #require(try h.store.rounds(h.run).first)
    #expect(row.outcome == .abandoned && row.abandonReason?.contains("not finite") == true)
    #expect(await h.coordinator.global.values == [1, 1])
    #expect(await h.coordinator.globalRound == 1)
    #expect(try h.store.latestCheckpoint(h.run) == nil)
  }

  /// When the last version is applied, the devices still training are let go: no deadline of
  /// theirs is left, and the run is finished.
  @Test func theDevicesStillTrainingWhenTheRunEndsAreLetGo() async throws {
    let h = try AsyncHarness(plan: makeAsyncPlan(versions: 1), store: try ResultsStore.inMemory())
    for d in 1...3 { _ = await h.checkIn(d) }
    for d in 1...2 { _ = await h.coordinator.report(h.update(d, version: 0, [1, 1])) }
    #expect(await h.coordinator.isFinished)
    #expect(await h.coordinator.nextDeadline == nil)
    #expect(await h.coordinator.report(h.update(3, version: 0, [1, 1])) == .rejected(.late))
    guard case .retry = await h.checkIn(4) else {
      Issue.record("a device was admitted after the last version")
      return
    }
  }

  /// Killed right after a version's commit: the state committed with the version is newer than
  /// the buffer saved before it, and the resumed run starts from it (an empty buffer at version 1).
  @Test func aRunKilledRightAfterACommitResumesFromTheCommittedState() async throws {
    let dir = TemporaryDirectory()
    let path = dir.file("server.sqlite")
    let plan = makeAsyncPlan()
    var first: AsyncHarness? = try AsyncHarness(plan: plan, store: try ResultsStore(path: path))
    let run = first!.run
    for d in 1...2 { _ = await first!.checkIn(d) }
    for d in 1...2 { _ = await first!.coordinator.report(first!.update(d, version: 0, [1, 1])) }
    #expect(try first!.store.asyncBuffer(run)?.version == 0)
    try first!.store.close()
    first = nil
    let second = try AsyncHarness(plan: plan, store: try ResultsStore(path: path), run: run)
    #expect(await second.coordinator.globalRound == 1)
    #expect(await second.coordinator.global.values == [2, 2])
    #expect(await second.coordinator.report(second.update(1, version: 0, [1, 1])) == .rejected(.duplicate))
    #expect(await second.checkIn(1) == .waitForTask(round: 1))
  }

  /// A version evaluated slowly holds back the publication of the next: observers see versions
  /// in order.
  @Test func versionsArePublishedInOrderWhateverTheirEvaluationTakes() async throws {
    var plan = makeAsyncPlan(versions: 4, buffer: 1)
    plan.server.evaluation.every = 2
    let (entered, enter) = AsyncStream.makeStream(of: Void.self)
    let (gate, open) = AsyncStream.makeStream(of: Void.self)
    let evaluator = GatedEvaluator(entered: enter, gate: gate)
    let store = try ResultsStore.inMemory()
    let scenario = Scenario(
      planPath: "plan.yaml", plan: plan, data: .syntheticFedProx(.init(alpha: 0, beta: 0, devices: 10)),
      partition: .natural, devices: PopulationPlan(), seed: 1)
    let run = try store.createRun(name: "t", scenario: scenario, createdAt: Date(timeIntervalSince1970: 0))
    let coordinator = try AsyncCoordinator(
      configuration: .init(plan: plan, run: run), initial: Weights(layout: layout, values: [1, 1]),
      store: store, link: RecordingLink(), evaluator: evaluator, clock: ManualClock(),
      logger: Logger(label: "test"))
    let seen = Mutex<[Int]>([])
    await coordinator.observeRounds { record in seen.withLock { $0.append(record.round) } }
    func report(_ device: DeviceID, _ version: Int) async -> ServerReply {
      _ = await coordinator.checkIn(CheckIn(device: device, population: "default"))
      return await coordinator.report(
        UpdateReport(
          device: device, round: version, update: Weights(layout: layout, values: [1, 1]), examples: 1,
          trainLoss: 0.5, bytes: 8))
    }
    #expect(await report(1, 0).isAccepted)
    // Version 2 is evaluated (every 2): its report waits in the evaluation, held at the gate.
    let second = Task { await report(2, 1) }
    var entries = entered.makeAsyncIterator()
    _ = await entries.next()
    #expect(await report(3, 2).isAccepted)
    #expect(seen.withLock { $0 } == [1])
    open.yield()
    #expect(await second.value.isAccepted)
    #expect(seen.withLock { $0 } == [1, 2, 3])
    open.yield()
    _ = await report(4, 3)
    #expect(seen.withLock { $0 } == [1, 2, 3, 4])
  }

  /// A journal that cannot store the buffer is refused for an asynchronous plan rather than
  /// run without storing what it acknowledges.
  @Test func aJournalThatCannotStoreTheBufferIsRefused() throws {
    let store = try ResultsStore.inMemory()
    #expect(throws: CohortError.self) {
      _ = try ServedRun(
        configuration: .init(plan: makeAsyncPlan()), initial: Weights(layout: layout, values: [1, 1]),
        store: store, journal: FailingJournal(store: store, failures: 0), logger: Logger(label: "test"))
    }
  }

  /// `cohort serve` runs secure aggregation only in synchronous rounds, and says so.
  @Test func secureAggregationIsRefusedInAsyncMode() throws {
    var plan = makeAsyncPlan()
    plan.secureAggregation.enabled = true
    #expect(throws: CohortError.self) {
      _ = try AsyncHarness(plan: plan, store: try ResultsStore.inMemory())
    }
  }
}

/// Central evaluation that tells when it starts and waits at a gate for each evaluation.
struct GatedEvaluator: CentralEvaluator {
  let entered: AsyncStream<Void>.Continuation
  let gate: AsyncStream<Void>
  func evaluate(_ weights: Weights) async -> Evaluation {
    entered.yield()
    var iterator = gate.makeAsyncIterator()
    _ = await iterator.next()
    return Evaluation(loss: 0, accuracy: Double(weights.values[0]), examples: 1)
  }
}

extension ServerReply {
  var isAccepted: Bool {
    if case .accepted = self { return true }
    return false
  }
}

@Suite struct ReportingDeadlinesTests {
  @Test func theEarliestIsFoundPastRemovedAndReplacedDeadlines() {
    var d = ReportingDeadlines()
    #expect(d.earliest() == nil)
    for device in 0..<200 { d[device] = Double(device) }
    d[0] = nil
    d[1] = 500
    #expect(d.earliest() == 2)
    #expect(d.due(now: 99.5) == Array(2...99))
    #expect(d.earliest() == 100)
    // A clock set back: an earlier deadline still comes out first.
    d[7] = 50
    #expect(d.earliest() == 50)
    #expect(d.due(now: 150) == [7] + Array(100...150))
    #expect(d.due(now: 1000) == Array(151...199) + [1])
    #expect(d.earliest() == nil)
  }
}
