import CohortCore
import CohortProtocol
import CohortServer
import CohortStore
import CohortTesting
import Foundation
import Logging
import MetricsTestKit
import Synchronization
import Testing

/// The results store with a fault injected: the next `failures` writes fail as a full disk would.
final class FailingJournal: RoundJournal {
  let store: ResultsStore
  let failures: Mutex<Int>

  let code: CohortError.Code

  init(store: ResultsStore, failures: Int, code: CohortError.Code = .storage) {
    self.store = store
    self.failures = Mutex(failures)
    self.code = code
  }

  func commitRound(
    _ run: RunID, _ record: RoundRecord, checkpoint: Weights?, devices: [DeviceParticipation],
    lateReports: [Int: Int], resumeState: Data?, secureAggregation: [SecureAggregationStepRecord]
  ) throws(CohortError) {
    let fail = failures.withLock { n in
      defer { n -= 1 }
      return n > 0
    }
    if fail {
      throw CohortError(
        code,
        code == .fenced ? "another server leads the run (injected)" : "database or disk is full (injected)")
    }
    try store.commitRound(
      run, record, checkpoint: checkpoint, devices: devices, lateReports: lateReports,
      resumeState: resumeState,
      secureAggregation: secureAggregation)
  }
}

@Suite struct CommitFailureCoordinatorTests {
  struct Setup {
    let clock = ManualClock()
    let metrics = TestMetrics()
    let store: ResultsStore
    let run: RunID
    let coordinator: Coordinator

    init(failures: Int, code: CohortError.Code = .storage) throws {
      store = try ResultsStore.inMemory()
      let plan = makePlan(rounds: 2)
      let scenario = Scenario(
        planPath: "plan.yaml", plan: plan, data: .syntheticFedProx(.init(alpha: 0, beta: 0, devices: 10)),
        partition: .natural, devices: PopulationPlan(), seed: 1)
      run = try store.createRun(name: "t", scenario: scenario, createdAt: Date(timeIntervalSince1970: 0))
      coordinator = Coordinator(
        configuration: .init(plan: plan, run: run, commitAttempts: 3, commitBackoff: 1),
        initial: Weights(layout: layout, values: [1, 1]),
        store: FailingJournal(store: store, failures: failures, code: code), link: RecordingLink(),
        evaluator: nil,
        clock: clock, logger: Logger(label: "test"), metrics: metrics)
    }

    /// Round 1 with devices 1…3; devices 1 and 2 report, which closes it.
    func closeRoundOne() async {
      await coordinator.start()
      for d in 1...3 { _ = await coordinator.checkIn(CheckIn(device: d, population: "default")) }
      for d in 1...2 {
        _ = await coordinator.report(
          UpdateReport(
            device: d, round: 1, update: Weights(layout: layout, values: [1, 1]), examples: 1, trainLoss: 0,
            bytes: 8))
      }
    }

    func committedCount() throws -> Int64 {
      try metrics.expectCounter("cohort_rounds_committed_total").totalValue
    }
  }

  @Test func aFailedCommitIsRetriedAndCountedOnlyOnceWritten() async throws {
    let s = try Setup(failures: 2)
    await s.closeRoundOne()
    #expect(try s.store.rounds(s.run).isEmpty)
    #expect(try s.committedCount() == 0)
    // Devices are told to come back after the retry.
    s.clock.set(0.5)
    let reply = await s.coordinator.checkIn(CheckIn(device: 9, population: "default"))
    guard case .retry(let window) = reply else {
      Issue.record("expected a retry, got \(reply)")
      return
    }
    #expect(window.lowerBound >= 1)
    // First retry at t = 1 fails too; the second, 2 s later, succeeds.
    s.clock.set(1)
    await s.coordinator.tick()
    #expect(try s.store.rounds(s.run).isEmpty && s.committedCount() == 0)
    s.clock.set(3)
    await s.coordinator.tick()
    #expect(try s.store.rounds(s.run).map(\.round) == [1])
    #expect(try s.committedCount() == 1)
    #expect(try s.metrics.expectCounter("cohort_commit_failures_total").totalValue == 2)
    #expect(await s.coordinator.failure == nil)
  }

  @Test func pastTheBoundTheCoordinatorStopsWithTheCause() async throws {
    let s = try Setup(failures: .max)
    await s.closeRoundOne()
    for t in [1.0, 3.0] {
      s.clock.set(t)
      await s.coordinator.tick()
    }
    let failure = try #require(await s.coordinator.failure)
    #expect(failure.code == .storage)
    #expect(failure.message.contains("round 1") && failure.message.contains("disk is full"))
    #expect(await s.coordinator.status.failure != nil)
    #expect(try s.store.rounds(s.run).isEmpty)
    #expect(try s.committedCount() == 0)
  }

  /// A commit refused because another server took the lease is not retried: nothing this server
  /// writes can land any more, and its devices must move to the new leader.
  @Test func aFencedCommitStopsTheCoordinatorAtOnce() async throws {
    let s = try Setup(failures: 1, code: .fenced)
    await s.closeRoundOne()
    let failure = try #require(await s.coordinator.failure)
    #expect(failure.code == .fenced)
    #expect(try s.store.rounds(s.run).isEmpty)
    #expect(try s.metrics.expectCounter("cohort_commit_failures_total").totalValue == 1)
  }
}
