import CohortCore
import CohortProtocol
import CohortServer
import CohortStore
import CohortTesting
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Testing

/// The server loop sleeps on an injected clock until the next deadline, wakes when a new one
/// appears, and ends on finish, stop or failure.
@Suite(.timeLimit(.minutes(1))) struct ServedRunTests {
  /// goal 2, target 3, minimum 2; one round to commit in at most one attempt; windows 60 s / 300 s.
  func served(clock: ManualClock, store: ResultsStore? = nil) throws -> ServedRun {
    var plan = makePlan(rounds: 1)
    plan.server.maximumAttempts = 1
    return try ServedRun(
      configuration: .init(plan: plan), initial: Weights(layout: layout, values: [0, 0]), store: store,
      clock: clock, logger: Logger(label: "test"))
  }

  @Test func theLoopSleepsUntilEachDeadlineAndFinishes() async throws {
    let time = ManualClock()
    let sleeper = TestClock()
    let run = try served(clock: time)
    let records = Mutex<[RoundRecord]>([])
    await run.coordinator.observeRounds { record in records.withLock { $0.append(record) } }
    let driving = Task { await run.drive(clock: sleeper, now: time) }
    // Asleep until the selection deadline (60 s).
    await sleeper.waitForSleepers()
    // Three devices check in: the round starts with a reporting deadline at 300 s, which wakes
    // the loop to sleep until that one instead.
    for d in 1...3 { _ = await run.checkIn(CheckIn(device: d, population: "default")) }
    await sleeper.waitForSleepers()
    time.set(299)
    sleeper.advance(by: .seconds(299))
    await sleeper.waitForSleepers()
    #expect(records.withLock { $0.isEmpty }, "nothing is due before 300 s")
    time.set(300)
    sleeper.advance(by: .seconds(1))
    // Nobody reported: the round is abandoned at its deadline, and with its one attempt spent
    // the run ends.
    #expect(await driving.value == .finished)
    #expect(records.withLock { $0.map(\.abandonReason) } == [AbandonReason.tooFewReports.rawValue])
  }

  @Test func stopEndsTheLoopAndLeavesTheRunInterrupted() async throws {
    let store = try ResultsStore.inMemory()
    let time = ManualClock()
    let sleeper = TestClock()
    let run = try served(clock: time, store: store)
    let driving = Task { await run.drive(clock: sleeper, now: time) }
    await sleeper.waitForSleepers()
    run.stop()
    #expect(await driving.value == .stopped)
    #expect(try store.run(run.run!).status == .interrupted)
    // The same plan on the same store resumes that run.
    let again = try served(clock: time, store: store)
    #expect(again.run == run.run)
  }

  /// The retries themselves are the coordinator's (CommitFailureCoordinatorTests); here a
  /// round that cannot be committed within its attempts (two, the first wait 1 s) ends the loop.
  @Test func asAServiceGracefulShutdownLeavesTheRunInterrupted() async throws {
    let store = try ResultsStore.inMemory()
    let run = try served(clock: ManualClock(), store: store)
    let group = ServiceGroup(configuration: .init(services: [run], logger: Logger(label: "test")))
    let running = Task { try await group.run() }
    // Once the loop has opened the first selection it is running as a service.
    while await run.coordinator.nextDeadline == nil { await Task.yield() }
    await group.triggerGracefulShutdown()
    try await running.value
    #expect(try store.run(run.run!).status == .interrupted)
  }

  @Test func aServerWithoutASeedResumesWithItsRunsSeedOrDrawsOneFromLibsodium() throws {
    let store = try ResultsStore.inMemory()
    var plan = makePlan(rounds: 1)
    plan.server.maximumAttempts = 1
    let first = try ServedRun.seed(in: store, plan: plan)
    #expect(first != (try ServedRun.seed(in: store, plan: plan)), "no run yet: a fresh draw each time")
    let run = try ServedRun(
      configuration: .init(plan: plan, seed: 424_242), initial: Weights(layout: layout, values: [0, 0]),
      store: store, clock: ManualClock(), logger: Logger(label: "test"))
    #expect(run.run != nil)
    // The run is resumable (running): a restarted server takes its seed, so its initial model
    // and codec randomness are the run's.
    #expect(try ServedRun.seed(in: store, plan: plan) == 424_242)
  }

  @Test func aCommitThatKeepsFailingStopsTheLoopWithTheCause() async throws {
    let store = try ResultsStore.inMemory()
    let time = ManualClock()
    let sleeper = TestClock()
    let run = try ServedRun(
      configuration: .init(plan: makePlan(rounds: 2), commitAttempts: 2, commitBackoff: 1),
      initial: Weights(layout: layout, values: [0, 0]), store: store,
      journal: FailingJournal(store: store, failures: .max), clock: time, logger: Logger(label: "test"))
    let driving = Task { await run.drive(clock: sleeper, now: time) }
    // The loop has opened round 1 and sleeps until its selection deadline.
    await sleeper.waitForSleepers(until: .seconds(60))
    for d in 1...3 { _ = await run.checkIn(CheckIn(device: d, population: "default")) }
    for d in 1...2 {
      _ = await run.report(
        UpdateReport(
          device: d, round: 1, update: Weights(layout: layout, values: [1, 1]), examples: 1, trainLoss: 0,
          bytes: 8))
    }
    // The first write failed and the retry is due at 1 s: once the loop sleeps until then, time
    // moves there; the retry fails too, and that ends the loop.
    #expect(await run.coordinator.status.nextDeadline == 1)
    await sleeper.waitForSleepers(until: .seconds(1))
    time.set(1)
    sleeper.advance(by: .seconds(1))
    guard case .failed(let failure) = await driving.value else {
      Issue.record("the loop did not stop on the failed commit")
      return
    }
    #expect(failure.code == .storage && failure.message.contains("after 2 attempts"))
    #expect(try store.rounds(run.run!).isEmpty)
    #expect(try store.run(run.run!).status == .interrupted)
  }
}

/// A journal whose commits wait at a gate, as a remote store's do.
final class GatedJournal: RoundJournal, @unchecked Sendable {
  let store: ResultsStore
  let entered: AsyncStream<Void>.Continuation
  let gate: AsyncStream<Void>

  init(store: ResultsStore, entered: AsyncStream<Void>.Continuation, gate: AsyncStream<Void>) {
    self.store = store
    self.entered = entered
    self.gate = gate
  }

  func commitRound(
    _ run: RunID, _ record: RoundRecord, checkpoint: Weights?, devices: [DeviceParticipation],
    lateReports: [Int: Int], resumeState: Data?, secureAggregation: [SecureAggregationStepRecord]
  ) async throws(CohortError) {
    entered.yield()
    var iterator = gate.makeAsyncIterator()
    _ = await iterator.next()
    try store.commitRound(
      run, record, checkpoint: checkpoint, devices: devices, lateReports: lateReports,
      resumeState: resumeState,
      secureAggregation: secureAggregation)
  }
}

@Suite(.timeLimit(.minutes(1))) struct AsynchronousCommitTests {
  /// While the last round's commit is in flight (a remote store), another event can move the
  /// deadline first (a device's stream ends: no deadline is left); when the commit then lands
  /// and the run finishes, the loop must still be woken, or it waits for ever.
  @Test func theLoopIsWokenWhenTheLastCommitLandsAfterTheDeadlineWent() async throws {
    let store = try ResultsStore.inMemory()
    let (entered, enter) = AsyncStream.makeStream(of: Void.self)
    let (gate, open) = AsyncStream.makeStream(of: Void.self)
    let run = try ServedRun(
      configuration: .init(plan: makePlan(rounds: 1)), initial: Weights(layout: layout, values: [0, 0]),
      store: store, journal: GatedJournal(store: store, entered: enter, gate: gate), clock: ManualClock(),
      logger: Logger(label: "test"))
    let wakes = Mutex(0)
    await run.coordinator.observeDeadlines { wakes.withLock { $0 += 1 } }
    await run.coordinator.start()
    for d in 1...3 { _ = await run.checkIn(CheckIn(device: d, population: "default")) }
    let reports = Task {
      for d in 1...2 {
        _ = await run.report(
          UpdateReport(
            device: d, round: 1, update: Weights(layout: layout, values: [1, 1]), examples: 1, trainLoss: 0.5,
            bytes: 8))
      }
    }
    var commits = entered.makeAsyncIterator()
    _ = await commits.next()
    // The commit is in flight; device 3's stream ends, which wakes the loop (the round's
    // reporting deadline is gone), and the loop finds the run not finished yet.
    await run.dropped(device: 3, round: 1)
    #expect(await run.coordinator.status.isFinished == false)
    let before = wakes.withLock { $0 }
    open.yield()
    await reports.value
    #expect(await run.coordinator.status.isFinished)
    #expect(wakes.withLock { $0 } > before, "the loop was not woken when the run finished")
  }
}
