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
  ServerReply, [RoundStateMachine.Action]
) {
  let r = m.checkIn(CheckIn(device: device, population: "p"), now: now)
  return (r.reply, r.actions)
}

func isRetry(_ reply: ServerReply) -> Bool {
  if case .retry = reply { true } else { false }
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
    #expect(isRetry(checkIn(&m, 3, at: 11).0))
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
    #expect(isRetry(checkIn(&m, 11, at: 16).0))  // cohort full: pace steering answers
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

@Suite struct CheckInRateTests {
  @Test func aBurstDoesNotMoveTheMedian() {
    var rate = CheckInRate(bucketSeconds: 60)
    // A steady check-in every 2 s for 20 minutes: 30 per bucket, 0.5 per second.
    for t in stride(from: 0.0, to: 1200, by: 2) { rate.record(now: t) }
    #expect(rate.perSecond(now: 1200) == 0.5)
    // 2,000 devices reconnect within one second.
    for i in 0..<2000 { rate.record(now: 1200 + Double(i) / 2000) }
    #expect(rate.perSecond(now: 1261) == 0.5)
  }

  @Test func aNewServerAssumesNoRateUntilABucketEnds() {
    var rate = CheckInRate(bucketSeconds: 60)
    for i in 0..<500 { rate.record(now: Double(i) / 500) }
    #expect(rate.perSecond(now: 30) == 0)
  }

  @Test func aLastingChangeIsFollowed() {
    var rate = CheckInRate(bucketSeconds: 10, buckets: 5)
    for t in stride(from: 0.0, to: 50, by: 1) { rate.record(now: t) }
    #expect(rate.perSecond(now: 50) == 1)
    for t in stride(from: 50.0, to: 100, by: 0.25) { rate.record(now: t) }
    #expect(rate.perSecond(now: 100) == 4)
    // Silence empties the buckets.
    #expect(rate.perSecond(now: 200) == 0)
  }
}

@Suite struct PaceSteeringBoundTests {
  /// goal 100, target 130, selection 60 s, reporting 300 s, retry windows at most 30 minutes.
  func machine() -> RoundStateMachine {
    let plan = ServerPlan(
      rounds: 5, cohort: CohortPlan(goal: 100),
      windows: WindowsPlan(selection: 60, reporting: 300, maximumRetry: 1800))
    return RoundStateMachine(configuration: .init(plan: plan, population: "p"))
  }

  @Test func aBurstOfTwoThousandCheckInsKeepsEveryRetryWindowWithinThePlansBound() {
    var m = machine()
    _ = m.start(now: 0)
    // An honest population checking in about once a second for 20 minutes (rounds come and go).
    var device = 0
    var honest: [ClosedRange<Double>] = []
    for t in stride(from: 0.0, to: 1200, by: 1) {
      device += 1
      if case .retry(let w) = m.checkIn(CheckIn(device: device, population: "p"), now: t).reply {
        honest.append(w)
        #expect(w.upperBound - t <= 1800 && w.lowerBound <= w.upperBound)
      }
    }
    let honestLongest = honest.map { $0.upperBound - $0.lowerBound }.max() ?? 0
    // 2,000 check-ins within one second of virtual time.
    var longest = 0.0
    for i in 0..<2000 {
      let now = 1200 + Double(i) / 2000
      let (reply, _) = m.checkIn(CheckIn(device: 100_000 + i, population: "p"), now: now)
      if case .retry(let w) = reply {
        #expect(w.lowerBound >= now && w.lowerBound <= w.upperBound)
        #expect(w.upperBound - now <= 1800, "window \(w) at \(now)")
        longest = max(longest, w.upperBound - w.lowerBound)
      }
    }
    // The burst does not stretch the windows beyond what the honest rate gave.
    #expect(longest <= max(honestLongest, 60) + 1e-9)
  }

  @Test func windowsAreClampedForAnyRate() {
    let pace = PaceSteering(wanted: 10, selectionWindow: 60, maximumRetry: 600)
    for rate in [0, 1, 1e6, .infinity, .nan, -5] {
      let w = pace.retryWindow(now: 100, nextSelectionOpens: 1e12, checkInRate: rate)
      #expect(w.lowerBound >= 100 && w.upperBound <= 700 && w.lowerBound <= w.upperBound)
    }
  }
}

@Suite struct CohortSamplingTests {
  func plan(rounds: Int = 3, goal: Int = 4, attempts: Int? = nil) -> ServerPlan {
    ServerPlan(
      rounds: rounds, maximumAttempts: attempts,
      cohort: CohortPlan(goal: goal, overSelection: 1, minimumFraction: 1, sampling: .uniform),
      windows: WindowsPlan(selection: 60, reporting: 300))
  }

  @Test func uniformSamplingInvitesWhenTheRoundCanStart() {
    var m = RoundStateMachine(configuration: .init(plan: plan(), population: "p"))
    #expect(m.start(now: 0) == [.invite(round: 1, count: 4)])
    for d in 1...3 { #expect(checkIn(&m, d, at: 0).1.isEmpty) }
    let (_, actions) = checkIn(&m, 4, at: 0)
    #expect(actions == [.configure(round: 1, devices: [1, 2, 3, 4], reportingDeadline: 300)])
    // Round 2 gathers while round 1 reports, without an invitation: it could not start yet.
    #expect(m.selectingRound == 2)
    for d in 1...4 { _ = m.report(device: d, round: 1, isWellFormed: true, now: 10) }
    #expect(m.committed(round: 1, now: 11) == [.invite(round: 2, count: 4)])
  }

  @Test func invitedDevicesGetAWholeSelectionWindowAfterALongRound() {
    var m = RoundStateMachine(configuration: .init(plan: plan(), population: "p"))
    _ = m.start(now: 0)
    for d in 1...4 { _ = checkIn(&m, d, at: 0) }
    // Round 1 reports for 100 s, longer than round 2's selection window (0…60 s).
    for d in 1...4 { _ = m.report(device: d, round: 1, isWellFormed: true, now: 100) }
    #expect(m.committed(round: 1, now: 100) == [.invite(round: 2, count: 4)])
    #expect(m.nextDeadline == 160, "the window starts when the round can start")
    #expect(m.tick(now: 100).isEmpty)
    for d in 5...8 { _ = checkIn(&m, d, at: 100) }
    #expect(m.reportingRound == 2)
  }

  @Test func aFullPoolKeepsAUniformSampleOfEveryoneWhoCame() {
    // While round 1 reports, 400 devices check in for round 2's 4 places: each should keep a
    // place with probability 1/100.
    var kept = [Int](repeating: 0, count: 400)
    for seed in 0..<300 {
      var m = RoundStateMachine(
        configuration: .init(plan: plan(), population: "p", seed: UInt64(seed)))
      _ = m.start(now: 0)
      for d in 1...4 { _ = checkIn(&m, 1000 + d, at: 0) }
      var released = 0
      for d in 0..<400 {
        let (reply, actions) = checkIn(&m, d, at: 1)
        if case .waitForTask = reply {} else { released += 1 }
        released += actions.filter { if case .release = $0 { true } else { false } }.count
      }
      #expect(released == 396, "seed \(seed)")
      for d in 1...4 { _ = m.report(device: 1000 + d, round: 1, isWellFormed: true, now: 10) }
      guard case .configure(2, let devices, _) = m.committed(round: 1, now: 11).first else {
        Issue.record("seed \(seed): round 2 did not start")
        continue
      }
      for d in devices { kept[d] += 1 }
    }
    // 1,200 places over 400 devices: 3 each on average; early and late comers alike.
    let early = kept[0..<200].reduce(0, +)
    let late = kept[200..<400].reduce(0, +)
    #expect(early + late == 1200)
    #expect(abs(early - late) < 150, "early \(early), late \(late)")
  }

  @Test func aPopulationNoLargerThanTheGoalTakesPartWhole() {
    let p = ServerPlan(rounds: 2, cohort: CohortPlan(goal: 10, overSelection: 1.3, minimumFraction: 0.8))
    let c = RoundStateMachine.Configuration(plan: p, population: "p", populationSize: 3)
    #expect(c.goal == 3 && c.selectionTarget == 3 && c.minimumReports == 3)
    var m = RoundStateMachine(configuration: c)
    _ = m.start(now: 0)
    for d in 0..<2 { _ = checkIn(&m, d, at: 0) }
    #expect(checkIn(&m, 2, at: 0).1 == [.configure(round: 1, devices: [0, 1, 2], reportingDeadline: 300)])
  }

  @Test func roundsCountCommitsWithinTheAttemptBudget() {
    var m = RoundStateMachine(
      configuration: .init(plan: plan(rounds: 2, goal: 2, attempts: 4), population: "p"))
    _ = m.start(now: 0)
    // Round 1: nobody comes; abandoned at the selection deadline.
    #expect(m.tick(now: 60).first == .abandon(round: 1, reason: .tooFewCheckIns, counts: RoundCounts()))
    // Round 2 commits.
    _ = checkIn(&m, 1, at: 61)
    _ = checkIn(&m, 2, at: 61)
    _ = m.report(device: 1, round: 2, isWellFormed: true, now: 62)
    _ = m.report(device: 2, round: 2, isWellFormed: true, now: 62)
    _ = m.committed(round: 2, now: 63)
    #expect(m.committedRounds == 1 && m.selectingRound == 3 && !m.isFinished)
    // Rounds 3 and 4 are abandoned: the budget of 4 attempts is spent with 1 of 2 committed.
    _ = m.tick(now: 200)
    let last = m.tick(now: 300)
    #expect(last.last == .finish, "\(last)")
    #expect(m.isFinished && m.attempts == 4 && m.committedRounds == 1)
  }
}

@Suite struct CommitFailureTests {
  @Test func aFailedCommitIsRetriedWithBackOffAndDevicesComeBackAfterIt() {
    var m = RoundStateMachine(
      configuration: .init(
        plan: ServerPlan(rounds: 3, cohort: CohortPlan(goal: 4, overSelection: 1.25, minimumFraction: 0.75)),
        population: "p", commitAttempts: 3, commitBackoff: 2))
    _ = m.start(now: 0)
    for d in 1...5 { _ = checkIn(&m, d, at: 10) }
    for d in 1...4 { _ = m.report(device: d, round: 1, isWellFormed: true, now: 20) }
    #expect(m.commitFailed(round: 1, now: 21).isEmpty)
    #expect(m.isRetryingCommit && m.nextDeadline == 23)
    // A device checking in meanwhile is told to come back after the retry.
    guard case .retry(let w) = checkIn(&m, 50, at: 22).0 else {
      Issue.record("expected a retry")
      return
    }
    #expect(w.lowerBound >= 23)
    #expect(m.tick(now: 23) == [.retryCommit(round: 1)])
    #expect(m.commitFailed(round: 1, now: 24).isEmpty)
    #expect(m.nextDeadline == 28, "the wait doubles")
    #expect(m.tick(now: 28) == [.retryCommit(round: 1)])
    #expect(m.commitFailed(round: 1, now: 29) == [.stop(round: 1, attempts: 3)])
  }

  @Test func aRetryThatSucceedsGoesOn() {
    var m = machineReporting()
    for d in 1...4 { _ = m.report(device: d, round: 1, isWellFormed: true, now: 20) }
    _ = m.commitFailed(round: 1, now: 21)
    #expect(m.tick(now: 22) == [.retryCommit(round: 1)])
    _ = m.committed(round: 1, now: 22)
    #expect(!m.isRetryingCommit && m.committedRounds == 1)
  }

  @Test func theSnapshotKeepsEverythingTheMachineDecidesWith() throws {
    var m = RoundStateMachine(
      configuration: .init(
        plan: ServerPlan(rounds: 3, cohort: CohortPlan(goal: 4, overSelection: 1.25, sampling: .uniform)),
        population: "p", seed: 7))
    _ = m.start(now: 0)
    for d in 1...5 { _ = checkIn(&m, d, at: 10) }
    for d in 6...40 { _ = checkIn(&m, d, at: Double(d) * 3) }
    _ = m.report(device: 1, round: 1, isWellFormed: true, now: 130)
    var w = SnapshotWriter()
    m.save(into: &w)
    var r = SnapshotReader(w.bytes)
    var restored = try RoundStateMachine(configuration: m.configuration, restoring: &r)
    #expect(r.isAtEnd)
    var again = SnapshotWriter()
    restored.save(into: &again)
    #expect(again.bytes == w.bytes)
    // Both go on the same way, reservoir draws and pace steering included.
    for d in 41...60 {
      #expect(checkIn(&m, d, at: 200) == checkIn(&restored, d, at: 200))
    }
  }
}
