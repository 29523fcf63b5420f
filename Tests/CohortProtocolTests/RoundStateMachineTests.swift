import CohortCore
import CohortProtocol
import Testing

/// goal 4, target 5 (over-selection 1.25), minimum 3 reports; windows 60 s and 300 s; 3 rounds.
func makeMachine(rounds: Int = 3, resumingAfter: Int = 0) -> RoundStateMachine {
  let plan = ServerPlan(
    rounds: rounds, cohort: CohortPlan(goal: 4, overSelection: 1.25, minimumFraction: 0.75),
    windows: WindowsPlan(selection: 60, reporting: 300))
  return RoundStateMachine(configuration: .init(plan: plan, population: "p"), resumingAfter: resumingAfter)
}

func checkIn(_ m: inout RoundStateMachine, _ device: DeviceID, at now: Double) -> (
  ServerReply?, [RoundStateMachine.Action]
) {
  let r = m.checkIn(CheckIn(device: device, population: "p"), now: now)
  return (r.reply, r.actions)
}

/// Starts round 1 and checks in devices 1…5, which fills the cohort and configures it at t = 10.
func machineReporting() -> RoundStateMachine {
  var m = makeMachine()
  _ = m.start(now: 0)
  for d in 1...5 { _ = checkIn(&m, d, at: 10) }
  return m
}

@Suite struct RoundStateMachineTests {
  @Test func configurationDerivesFromThePlan() {
    let c = makeMachine().configuration
    #expect(c.goal == 4 && c.selectionTarget == 5 && c.minimumReports == 3)
  }

  @Test func fullCohortIsConfiguredAndNextSelectionOpens() {
    var m = makeMachine()
    #expect(m.start(now: 0).isEmpty)
    #expect(m.selectingRound == 1 && m.nextDeadline == 60)
    for d in 1...4 {
      let (reply, actions) = checkIn(&m, d, at: 5)
      #expect(reply == .waitForTask(round: 1) && actions.isEmpty)
    }
    // Checking in twice is harmless.
    #expect(checkIn(&m, 4, at: 6).0 == .waitForTask(round: 1))
    let (reply, actions) = checkIn(&m, 5, at: 10)
    #expect(reply == .waitForTask(round: 1))
    #expect(actions == [.configure(round: 1, devices: [1, 2, 3, 4, 5], reportingDeadline: 310)])
    #expect(m.reportingRound == 1 && m.selectingRound == 2)
    // A device already training in round 1 is not also gathered for round 2.
    #expect(checkIn(&m, 3, at: 11).0 == nil)
  }

  @Test func tooFewCheckInsAbandonsTheRound() {
    var m = makeMachine()
    _ = m.start(now: 0)
    _ = checkIn(&m, 1, at: 1)
    _ = checkIn(&m, 2, at: 2)
    #expect(m.tick(now: 59).isEmpty)
    var counts = RoundCounts()
    counts.selected = 2
    #expect(m.tick(now: 60) == [.abandon(round: 1, reason: .tooFewCheckIns, counts: counts)])
    #expect(m.selectingRound == 2 && m.nextDeadline == 120)
    // Devices 1 and 2 wait on for round 2: with one more the cohort reaches its minimum.
    #expect(checkIn(&m, 1, at: 61).0 == .waitForTask(round: 2))
    _ = checkIn(&m, 3, at: 62)
    #expect(m.tick(now: 120) == [.configure(round: 2, devices: [1, 2, 3], reportingDeadline: 420)])
  }

  @Test func selectionDeadlineWithTheMinimumStartsASmallerCohort() {
    var m = makeMachine()
    _ = m.start(now: 0)
    for d in 1...3 { _ = checkIn(&m, d, at: 1) }
    #expect(m.tick(now: 60) == [.configure(round: 1, devices: [1, 2, 3], reportingDeadline: 360)])
  }

  @Test func goalReachedAggregatesAndLaterReportsAreLate() {
    var m = machineReporting()
    for d in 1...3 {
      let (reply, actions) = m.report(device: d, round: 1, isWellFormed: true, now: 20)
      #expect(reply == .accepted(round: 1) && actions.isEmpty)
    }
    let (reply, actions) = m.report(device: 4, round: 1, isWellFormed: true, now: 30)
    #expect(reply == .accepted(round: 1))
    var counts = RoundCounts()
    counts.selected = 5
    counts.reported = 4
    #expect(actions == [.aggregate(round: 1, counts: counts)])
    // The over-selected fifth device is late, both while the round commits and after.
    #expect(m.report(device: 5, round: 1, isWellFormed: true, now: 31).reply == .rejected(.late))
    _ = m.committed(round: 1, now: 32)
    #expect(m.report(device: 5, round: 1, isWellFormed: true, now: 33).reply == .rejected(.late))
  }

  @Test func deadlineWithTheMinimumAggregatesThoseThatReported() {
    var m = machineReporting()
    for d in 1...3 { _ = m.report(device: d, round: 1, isWellFormed: true, now: 100) }
    // Round 2's selection window (opened at 10) cannot close while round 1 reports, so the next
    // deadline is round 1's.
    #expect(m.nextDeadline == 310)
    #expect(m.tick(now: 309).isEmpty)
    var counts = RoundCounts()
    counts.selected = 5
    counts.reported = 3
    #expect(m.tick(now: 310) == [.aggregate(round: 1, counts: counts)])
    // A report after the deadline is late.
    #expect(m.report(device: 4, round: 1, isWellFormed: true, now: 311).reply == .rejected(.late))
  }

  @Test func deadlineBelowTheMinimumAbandons() {
    var m = machineReporting()
    for d in 1...2 { _ = m.report(device: d, round: 1, isWellFormed: true, now: 100) }
    _ = m.dropped(device: 3, round: 1, now: 101)
    var counts = RoundCounts()
    counts.selected = 5
    counts.reported = 2
    counts.dropped = 1
    let actions = m.tick(now: 310)
    #expect(actions.first == .abandon(round: 1, reason: .tooFewReports, counts: counts))
  }

  @Test func reportAfterDeadlineClosesTheRoundAndIsLate() {
    var m = machineReporting()
    for d in 1...3 { _ = m.report(device: d, round: 1, isWellFormed: true, now: 100) }
    let (reply, actions) = m.report(device: 4, round: 1, isWellFormed: true, now: 400)
    #expect(reply == .rejected(.late))
    #expect(actions.count == 1)
    if case .aggregate(1, let counts) = actions.first {
      #expect(counts.reported == 3)
    } else {
      Issue.record("expected round 1 to aggregate, got \(actions)")
    }
  }

  @Test func duplicateUnselectedAndMalformedReportsAreRejectedAndCounted() {
    var m = machineReporting()
    #expect(m.report(device: 1, round: 1, isWellFormed: true, now: 20).reply == .accepted(round: 1))
    #expect(m.report(device: 1, round: 1, isWellFormed: true, now: 21).reply == .rejected(.duplicate))
    #expect(m.report(device: 99, round: 1, isWellFormed: true, now: 22).reply == .rejected(.notSelected))
    #expect(m.report(device: 2, round: 1, isWellFormed: false, now: 23).reply == .rejected(.malformed))
    #expect(m.report(device: 2, round: 7, isWellFormed: true, now: 24).reply == .rejected(.unknownRound))
    // A malformed report does not use up the device's turn.
    #expect(m.report(device: 2, round: 1, isWellFormed: true, now: 25).reply == .accepted(round: 1))
    _ = m.report(device: 3, round: 1, isWellFormed: true, now: 26)
    let actions = m.tick(now: 310)
    var counts = RoundCounts()
    counts.selected = 5
    counts.reported = 3
    counts.rejected = 3
    #expect(actions == [.aggregate(round: 1, counts: counts)])
  }

  @Test func everyoneReportingOrDroppingClosesEarly() {
    var m = machineReporting()
    for d in 1...3 { _ = m.report(device: d, round: 1, isWellFormed: true, now: 20) }
    #expect(m.dropped(device: 4, round: 1, now: 21).isEmpty)
    let actions = m.dropped(device: 5, round: 1, now: 22)
    var counts = RoundCounts()
    counts.selected = 5
    counts.reported = 3
    counts.dropped = 2
    #expect(actions == [.aggregate(round: 1, counts: counts)])
  }

  @Test func nextCohortGathersDuringReportingAndStartsAfterCommit() {
    var m = machineReporting()
    // Round 2 fills up while round 1 is still reporting, and must wait for round 1's model.
    for d in 6...10 { #expect(checkIn(&m, d, at: 15).1.isEmpty) }
    #expect(checkIn(&m, 11, at: 16).0 == nil)  // cohort full: pace steering answers
    for d in 1...4 { _ = m.report(device: d, round: 1, isWellFormed: true, now: 50) }
    #expect(m.selectingRound == 2 && m.reportingRound == nil)
    let actions = m.committed(round: 1, now: 51)
    #expect(actions == [.configure(round: 2, devices: [6, 7, 8, 9, 10], reportingDeadline: 351)])
    #expect(m.selectingRound == 3)
  }

  @Test func selectionWindowDoesNotExpireWhileThePreviousRoundReports() {
    var m = machineReporting()
    _ = checkIn(&m, 6, at: 15)
    // Round 2's window (10…70) passes while round 1 still reports: nothing is abandoned yet,
    // and the timer is not asked to fire at 70 again and again (a simulator livelocked on
    // that): the next deadline is round 1's reporting deadline.
    #expect(m.nextDeadline == 310)
    #expect(m.tick(now: 100).isEmpty)
    #expect(m.nextDeadline == 310)
    for d in 7...8 { _ = checkIn(&m, d, at: 150) }
    for d in 1...4 { _ = m.report(device: d, round: 1, isWellFormed: true, now: 200) }
    #expect(m.nextDeadline == nil, "round 1 aggregates; round 2's window waits for its commit")
    #expect(
      m.committed(round: 1, now: 201) == [.configure(round: 2, devices: [6, 7, 8], reportingDeadline: 501)])
  }

  @Test func runFinishesAfterTheLastRound() {
    var m = makeMachine(rounds: 1)
    _ = m.start(now: 0)
    for d in 1...5 { _ = checkIn(&m, d, at: 1) }
    #expect(m.selectingRound == nil)
    for d in 1...4 { _ = m.report(device: d, round: 1, isWellFormed: true, now: 2) }
    #expect(m.committed(round: 1, now: 3) == [.finish])
    #expect(m.isFinished && m.nextDeadline == nil)
  }

  @Test func resumedRunContinuesAfterItsLastCommittedRound() {
    var m = makeMachine(rounds: 10, resumingAfter: 6)
    _ = m.start(now: 0)
    #expect(m.selectingRound == 7)
    #expect(m.report(device: 1, round: 6, isWellFormed: true, now: 1).reply == .rejected(.late))
  }

  @Test func foreignCheckInsAreRefused() {
    var m = makeMachine()
    _ = m.start(now: 0)
    #expect(m.checkIn(CheckIn(device: 1, population: "other"), now: 1).reply == .rejected(.wrongPopulation))
    #expect(
      m.checkIn(CheckIn(device: 1, population: "p", protocolVersion: 99), now: 1).reply
        == .rejected(.protocolVersion))
  }

  @Test func shutdownAbandonsWhatIsInFlight() {
    var m = machineReporting()
    _ = checkIn(&m, 6, at: 15)
    let actions = m.shutdown(now: 20)
    #expect(actions.count == 2)
    #expect(actions.allSatisfy { if case .abandon(_, .shutdown, _) = $0 { true } else { false } })
    #expect(m.isFinished)
  }
}

@Suite struct PaceSteeringTests {
  @Test func smallPopulationsReturnTogetherInTheNextWindow() {
    let pace = PaceSteering(wanted: 100, selectionWindow: 60)
    #expect(pace.retryWindow(now: 10, nextSelectionOpens: 300, checkInRate: 0.5) == 300...360)
    #expect(pace.retryWindow(now: 400, nextSelectionOpens: 300, checkInRate: 0.5) == 400...460)
  }

  @Test func largePopulationsAreSpreadToTheRateARoundCanUse() {
    let pace = PaceSteering(wanted: 100, selectionWindow: 60)
    // 50 check-ins a second offer 3,000 per window for 100 places: spread over 30 windows.
    let w = pace.retryWindow(now: 0, nextSelectionOpens: 120, checkInRate: 50)
    #expect(w.lowerBound == 120 && w.upperBound == 120 + 1800)
    // The arrival rate inside the spread is then the rate the round wants.
    #expect(abs(50 * 60 / (w.upperBound - w.lowerBound) * 60 - 100) < 1e-9)
  }
}
