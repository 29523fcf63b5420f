import CohortCore
import CohortProtocol
import CohortServer
import CohortStore
import CohortTesting
import Foundation
import Logging
import Testing

/// Central evaluation that reports the model's first value as its accuracy, so tests can see
/// which model was evaluated.
struct FirstValueEvaluator: CentralEvaluator {
  func evaluate(_ weights: Weights) async -> Evaluation {
    Evaluation(loss: 0, accuracy: Double(weights.values[0]), examples: 1)
  }
}

let layout = WeightsLayout([TensorSpec("w", [2])])

/// goal 2, target 3, minimum 2; windows 60 s / 300 s.
func makePlan(rounds: Int) -> Plan {
  Plan(
    name: "test", model: ModelPlan(kind: .logisticRegression, inputShape: [1], classes: 2),
    server: ServerPlan(
      rounds: rounds, cohort: CohortPlan(goal: 2, overSelection: 1.5, minimumFraction: 1),
      windows: WindowsPlan(selection: 60, reporting: 300)))
}

struct Harness {
  let clock = ManualClock()
  let link = RecordingLink()
  let store: ResultsStore
  let run: RunID
  let coordinator: Coordinator

  init(
    rounds: Int = 2, autoCommit: Bool = true, secureAggregation: (any SecureAggregationDriver)? = nil,
    privacy: PrivacyPlan = PrivacyPlan(), populationSize: Int? = nil, privacySeed: UInt64? = nil
  ) throws {
    store = try ResultsStore.inMemory()
    var plan = makePlan(rounds: rounds)
    plan.privacy = privacy
    let scenario = Scenario(
      planPath: "plan.yaml", plan: plan, data: .syntheticFedProx(.init(alpha: 0, beta: 0, devices: 10)),
      partition: .natural, devices: PopulationPlan(), seed: 1)
    run = try store.createRun(name: "t", scenario: scenario, createdAt: Date(timeIntervalSince1970: 0))
    coordinator = Coordinator(
      configuration: .init(
        plan: plan, run: run, autoCommit: autoCommit, populationSize: populationSize,
        secureAggregation: secureAggregation, privacySeed: privacySeed),
      initial: Weights(layout: layout, values: [1, 1]), store: store, link: link,
      evaluator: FirstValueEvaluator(),
      clock: clock, logger: Logger(label: "test"))
  }

  func update(_ device: DeviceID, round: Int, _ values: [Float], examples: Int) -> UpdateReport {
    UpdateReport(
      device: device, round: round, update: Weights(layout: layout, values: values), examples: examples,
      trainLoss: 0.5, bytes: 8)
  }
}

/// A secure-aggregation driver with a fixed answer, recording which devices it was asked about.
final class FixedSecureSum: SecureAggregationDriver, @unchecked Sendable {
  let answer: SecureSum
  var asked: [(round: Int, devices: [DeviceID])] = []
  init(_ answer: SecureSum) { self.answer = answer }
  func secureSum(round: Int, devices: [DeviceID]) async -> SecureSum {
    asked.append((round, devices))
    return answer
  }
}

@Suite struct SecureAggregationCoordinatorTests {
  static let steps = [
    SecureAggregationStepRecord(
      step: "advertise_keys", entered: 2, dropped: 0, bytesUp: 100, bytesDown: 0, serverSeconds: 0),
    SecureAggregationStepRecord(
      step: "masked_input", entered: 2, dropped: 0, bytesUp: 500, bytesDown: 60, serverSeconds: 0),
  ]

  func reportsWithoutUpdates(_ h: Harness) async -> [ServerReply] {
    await h.coordinator.start()
    for d in 1...3 { _ = await h.coordinator.checkIn(CheckIn(device: d, population: "default")) }
    _ = h.link.drain()
    h.clock.set(10)
    let empty = Weights(layout: WeightsLayout([]), values: [])
    var replies: [ServerReply] = []
    // A report that carries its update in the clear is refused: under secure aggregation the
    // update travels only inside the protocol.
    replies.append(await h.coordinator.report(h.update(1, round: 1, [1, 0], examples: 1)))
    for d in 1...2 {
      replies.append(
        await h.coordinator.report(
          UpdateReport(device: d, round: 1, update: empty, examples: 10, trainLoss: 0.5, bytes: 0)))
    }
    return replies
  }

  @Test func theRoundTakesItsModelFromTheSecureSum() async throws {
    let driver = FixedSecureSum(
      SecureSum(
        weightedSum: [2, -4], totalWeight: 2, survivors: [1, 2], examples: 20, failure: nil,
        steps: Self.steps,
        rejectedMessages: 1))
    let h = try Harness(rounds: 1, secureAggregation: driver)
    let replies = await reportsWithoutUpdates(h)
    #expect(replies == [.rejected(.malformed), .accepted(round: 1), .accepted(round: 1)])
    #expect(driver.asked.map(\.devices) == [[1, 2]])
    // [1, 1] + [2, −4] / 2.
    #expect(try h.store.checkpoint(h.run, round: 1).weights.values == [2, -1])
    let r = try #require(try h.store.rounds(h.run).first)
    // The refused report's 8 bytes were received too.
    #expect(r.bytesUp == 8 + 600 && r.bytesDown == 3 * 8 + 60 && r.rejected == 2)
    #expect(try h.store.secureAggregationSteps(h.run).map(\.1) == Self.steps)
  }

  @Test func aFailedProtocolAbandonsTheRoundWithItsReason() async throws {
    let driver = FixedSecureSum(
      SecureSum(
        weightedSum: nil, totalWeight: 0, survivors: [], examples: 0,
        failure: "only 1 device sent a masked input",
        steps: Self.steps, rejectedMessages: 0))
    let h = try Harness(rounds: 1, secureAggregation: driver)
    _ = await reportsWithoutUpdates(h)
    let r = try #require(try h.store.rounds(h.run).first)
    #expect(r.outcome == .abandoned && r.abandonReason == "secure_aggregation_failed")
    #expect(try h.store.latestCheckpoint(h.run) == nil)
    #expect(try h.store.secureAggregationSteps(h.run).count == 2)
  }
}

@Suite struct CoordinatorTests {
  @Test func roundsCommitFedAvgModelsWithTheirCounts() async throws {
    let h = try Harness()
    await h.coordinator.start()
    for d in 1...3 {
      #expect(
        await h.coordinator.checkIn(CheckIn(device: d, population: "default")) == .waitForTask(round: 1))
    }
    let sent = h.link.drain()
    #expect(sent.count == 1 && sent[0].devices == [1, 2, 3] && sent[0].assignment.task.round == 1)
    #expect(sent[0].assignment.checkpoint.values == [1, 1])

    h.clock.set(10)
    // Device 9 was never selected; device 1 sends NaN first, then a good update.
    #expect(
      await h.coordinator.report(h.update(9, round: 1, [5, 5], examples: 1)) == .rejected(.notSelected))
    #expect(
      await h.coordinator.report(h.update(1, round: 1, [.nan, 0], examples: 1)) == .rejected(.malformed))
    #expect(await h.coordinator.report(h.update(1, round: 1, [1, 0], examples: 1)) == .accepted(round: 1))
    #expect(await h.coordinator.report(h.update(2, round: 1, [0, 4], examples: 3)) == .accepted(round: 1))
    // The goal (2) is met: the third, over-selected device is late.
    #expect(await h.coordinator.report(h.update(3, round: 1, [9, 9], examples: 1)) == .rejected(.late))

    let rounds = try h.store.rounds(h.run)
    #expect(rounds.count == 1)
    let r = try #require(rounds.first)
    #expect(r.outcome == .committed && r.selected == 3 && r.reported == 2 && r.rejected == 2)
    // Bytes up count every report received while the round was open, accepted or not.
    #expect(r.bytesDown == 3 * 8 && r.bytesUp == 4 * 8)
    // FedAvg weighted by examples: [1,1] + (1·[1,0] + 3·[0,4]) / 4 = [1.25, 4].
    let checkpoint = try h.store.checkpoint(h.run, round: 1).weights
    #expect(checkpoint.values == [1.25, 4])
    #expect(r.evalAccuracy == 1.25)

    // Round 2 was gathering while round 1 reported; it is configured with the new model.
    for d in 4...6 { _ = await h.coordinator.checkIn(CheckIn(device: d, population: "default")) }
    let next = h.link.drain()
    #expect(next.count == 1 && next[0].assignment.checkpoint.values == [1.25, 4])
    h.clock.set(20)
    _ = await h.coordinator.report(h.update(4, round: 2, [1, 1], examples: 1))
    _ = await h.coordinator.report(h.update(5, round: 2, [1, 1], examples: 1))
    #expect(await h.coordinator.isFinished)
    let all = try h.store.rounds(h.run)
    // The late report of round 1 was added to round 1's record in round 2's transaction.
    #expect(all.map(\.late) == [1, 0])
    #expect(try h.store.checkpoint(h.run, round: nil).weights.values == [2.25, 5])
  }

  @Test func reportsBeyondThePlansBoundsAreOutOfRangeAndTheRoundGoesOn() async throws {
    let h = try Harness(rounds: 1)
    await h.coordinator.start()
    for d in 1...3 { _ = await h.coordinator.checkIn(CheckIn(device: d, population: "default")) }
    _ = h.link.drain()
    h.clock.set(10)
    // 2^63 − 1 examples once crashed the server's sum at the next honest report; an accuracy of
    // −3 and an infinite evaluation loss once went into the record.
    #expect(
      await h.coordinator.report(h.update(1, round: 1, [1, 0], examples: .max)) == .rejected(.outOfRange))
    var lying = h.update(2, round: 1, [1, 0], examples: 1)
    lying.evaluation = Evaluation(loss: .infinity, accuracy: -3, examples: 5)
    #expect(await h.coordinator.report(lying) == .rejected(.outOfRange))
    // The same devices, honest now, are counted and the round commits.
    #expect(await h.coordinator.report(h.update(1, round: 1, [1, 0], examples: 1)) == .accepted(round: 1))
    #expect(await h.coordinator.report(h.update(2, round: 1, [0, 4], examples: 3)) == .accepted(round: 1))
    let r = try #require(try h.store.rounds(h.run).first)
    #expect(r.outcome == .committed && r.rejected == 2 && r.reported == 2)
    #expect(try h.store.checkpoint(h.run, round: 1).weights.values == [1.25, 4])
  }

  @Test func updatesThatOverflowTheModelAbandonTheRoundAndKeepTheModel() async throws {
    let h = try Harness(rounds: 2)
    await h.coordinator.start()
    // Finite and within the plan (no norm bound): round 1's model is 3e38, round 2's would be ∞.
    for round in 1...2 {
      for d in 1...3 {
        _ = await h.coordinator.checkIn(CheckIn(device: 10 * round + d, population: "default"))
      }
      _ = h.link.drain()
      h.clock.set(Double(10 * round))
      for d in 1...2 {
        #expect(
          await h.coordinator.report(h.update(10 * round + d, round: round, [3e38, 0], examples: 1))
            == .accepted(round: round))
      }
    }
    let rounds = try h.store.rounds(h.run)
    #expect(rounds.map(\.outcome) == [.committed, .abandoned])
    #expect(rounds.last?.abandonReason == "non_finite_model")
    #expect(try h.store.latestCheckpoint(h.run)?.round == 1)
    #expect(await h.coordinator.global.values.allSatisfy(\.isFinite))
  }

  @Test func deadlineBelowMinimumAbandonsAndKeepsTheModel() async throws {
    let h = try Harness(rounds: 1)
    await h.coordinator.start()
    for d in 1...3 { _ = await h.coordinator.checkIn(CheckIn(device: d, population: "default")) }
    _ = h.link.drain()
    _ = await h.coordinator.report(h.update(1, round: 1, [1, 0], examples: 1))
    await h.coordinator.dropped(device: 2, round: 1)
    h.clock.set(400)
    await h.coordinator.tick()
    let r = try #require(try h.store.rounds(h.run).first)
    #expect(
      r.outcome == .abandoned && r.abandonReason == "too_few_reports" && r.dropped == 1 && r.reported == 1)
    #expect(try h.store.latestCheckpoint(h.run) == nil)
    #expect(await h.coordinator.global.values == [1, 1])
    let devices = try h.store.devices(h.run)
    #expect(devices.map(\.dropouts) == [0, 1, 0] && devices.map(\.reports) == [1, 0, 0])
  }

  @Test func checkInsBeyondTheCohortArePaceSteered() async throws {
    let h = try Harness()
    await h.coordinator.start()
    for d in 1...3 { _ = await h.coordinator.checkIn(CheckIn(device: d, population: "default")) }
    for d in 4...6 { _ = await h.coordinator.checkIn(CheckIn(device: d, population: "default")) }
    // Rounds 1 and 2 are spoken for; device 7 is told when to come back.
    guard case .retry(let window) = await h.coordinator.checkIn(CheckIn(device: 7, population: "default"))
    else {
      Issue.record("expected a retry window")
      return
    }
    #expect(window.lowerBound >= 0 && window.upperBound > window.lowerBound)
  }

  @Test func snapshotTakenBeforeCommitResumesIdentically() async throws {
    // Run 1: commits round 1 at a quiet point with its snapshot, as the simulator does.
    let h = try Harness(rounds: 2, autoCommit: false)
    await h.coordinator.start()
    for d in 1...3 { _ = await h.coordinator.checkIn(CheckIn(device: d, population: "default")) }
    _ = h.link.drain()
    _ = await h.coordinator.report(h.update(1, round: 1, [1, 0], examples: 1))
    _ = await h.coordinator.report(h.update(2, round: 1, [0, 1], examples: 1))
    #expect(await h.coordinator.hasPendingCommit)
    var writer = SnapshotWriter()
    await h.coordinator.snapshot().save(into: &writer)
    let state = Data(writer.bytes)
    try await h.coordinator.commitPending(resumeState: state)

    // A new coordinator from the store's checkpoint and state continues with round 2.
    let (round, stored) = try #require(try h.store.latestResumeState(h.run))
    #expect(round == 1 && stored == state)
    var reader = SnapshotReader(Array(stored))
    let restored = try Coordinator.Snapshot(
      configuration: .init(plan: makePlan(rounds: 2)), restoring: &reader)
    #expect(reader.isAtEnd)
    let link = RecordingLink()
    let resumed = Coordinator(
      configuration: .init(plan: makePlan(rounds: 2), run: h.run, autoCommit: false),
      initial: try h.store.checkpoint(h.run, round: 1).weights, resumingAfter: 1, snapshot: restored,
      store: h.store, link: link, evaluator: nil, clock: ManualClock(10), logger: Logger(label: "test"))
    await resumed.start()
    for d in 4...6 { _ = await resumed.checkIn(CheckIn(device: d, population: "default")) }
    let sent = link.drain()
    #expect(sent.first?.assignment.task.round == 2)
    #expect(sent.first?.assignment.checkpoint.values == [1.5, 1.5])
  }
}

@Suite struct StrategyStateTests {
  @Test func serverOptimizerStateSurvivesASnapshot() async throws {
    var plan = makePlan(rounds: 2)
    plan.server.strategy = StrategyPlan(.fedavgm(serverLearningRate: 1, momentum: 0.9))
    let coordinator = Coordinator(
      configuration: .init(plan: plan, autoCommit: false), initial: Weights(layout: layout, values: [0, 0]),
      store: nil, link: RecordingLink(), evaluator: nil, clock: ManualClock(), logger: Logger(label: "test"))
    await coordinator.start()
    for d in 1...3 { _ = await coordinator.checkIn(CheckIn(device: d, population: "default")) }
    for d in 1...2 {
      _ = await coordinator.report(
        UpdateReport(
          device: d, round: 1, update: Weights(layout: layout, values: [1, 2]), examples: 1, trainLoss: 0,
          bytes: 8))
    }
    // FedAvgM with zero initial velocity: v = mean update = [1, 2]; w = 0 + 1·v.
    #expect(await coordinator.global.values == [1, 2])
    let state = await coordinator.strategyState
    #expect(state.velocity == [1, 2])

    var writer = SnapshotWriter()
    await coordinator.snapshot().save(into: &writer)
    var reader = SnapshotReader(writer.bytes)
    let restored = try Coordinator.Snapshot(configuration: .init(plan: plan), restoring: &reader)
    #expect(reader.isAtEnd)
    let resumed = Coordinator(
      configuration: .init(plan: plan, autoCommit: false), initial: Weights(layout: layout, values: [1, 2]),
      resumingAfter: 1, snapshot: restored, store: nil, link: RecordingLink(), evaluator: nil,
      clock: ManualClock(),
      logger: Logger(label: "test"))
    #expect(await resumed.strategyState == state)
  }
}
