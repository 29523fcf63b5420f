import CohortCore
import CohortProtocol
import Testing

/// A replica's round machine: goal 4, target 5, minimum 3 (which the leader applies, not the
/// replica); windows 60 s and 300 s; 3 rounds.
func makeReplicaMachine(minimumGroup: Int = 0) -> RoundStateMachine {
  let plan = ServerPlan(
    rounds: 3, cohort: CohortPlan(goal: 4, overSelection: 1.25, minimumFraction: 0.75),
    windows: WindowsPlan(selection: 60, reporting: 300))
  var configuration = RoundStateMachine.Configuration(plan: plan, population: "p")
  configuration.sharedCohort = true
  configuration.minimumGroup = minimumGroup
  return RoundStateMachine(configuration: configuration)
}

/// Round 1 reporting with devices 1…5 (configured at t = 10), round 2 selecting.
func replicaMachineReporting() -> RoundStateMachine {
  var m = makeReplicaMachine()
  _ = m.start(now: 0)
  for d in 1...5 { _ = checkIn(&m, d, at: 10) }
  return m
}

func counts(selected: Int = 0, reported: Int = 0, dropped: Int = 0) -> RoundCounts {
  var c = RoundCounts()
  c.selected = selected
  c.reported = reported
  c.dropped = dropped
  return c
}

func retryWindow(_ reply: ServerReply) -> ClosedRange<Double>? {
  if case .retry(let window) = reply { window } else { nil }
}

@Suite struct SharedCohortTests {
  @Test func openPlaceIsOnlyForAReplicaMachine() {
    var m = makeMachine()
    _ = m.start(now: 0)
    #expect(m.openPlace(for: 1) == nil)
  }

  @Test func openPlaceNamesTheSelectingRoundForADeviceThatWouldGetAPlace() {
    var m = makeReplicaMachine()
    #expect(m.openPlace(for: 1) == nil, "no round is selecting before the start")
    _ = m.start(now: 0)
    #expect(m.openPlace(for: 1) == 1)
    _ = checkIn(&m, 1, at: 1)
    #expect(m.openPlace(for: 1) == nil, "a member has its place")
    #expect(m.openPlace(for: 2) == 1)
  }

  @Test func openPlaceIsNilForABusyDeviceUntilItReports() {
    var m = replicaMachineReporting()
    #expect(m.reportingRound == 1 && m.selectingRound == 2)
    #expect(m.openPlace(for: 3) == nil, "device 3 owes its report for round 1")
    #expect(m.openPlace(for: 6) == 2)
    _ = m.report(device: 3, round: 1, isWellFormed: true, now: 20)
    #expect(m.openPlace(for: 3) == 2)
  }

  @Test func openPlaceIsNilWhenTheCohortIsFull() {
    var m = replicaMachineReporting()
    // Round 2's cohort fills while round 1 still reports, so it keeps gathering.
    for d in 6...10 { #expect(checkIn(&m, d, at: 11).0 == .waitForTask(round: 2)) }
    #expect(m.selectingRound == 2)
    #expect(m.openPlace(for: 11) == nil)
    #expect(isRetry(checkIn(&m, 11, at: 12).0))
  }

  @Test func openPlaceIsNilOnceTheOthersFilledTheCohort() {
    var m = replicaMachineReporting()
    _ = checkIn(&m, 6, at: 11)
    #expect(m.cohortFilledElsewhere(round: 2, now: 12).isEmpty)
    #expect(m.openPlace(for: 7) == nil)
  }

  @Test func filledElsewhereSendsCheckInsAwayAndClosesSelectionWhenThePreviousRoundCloses() {
    var m = replicaMachineReporting()
    _ = checkIn(&m, 6, at: 11)
    _ = checkIn(&m, 7, at: 11)
    // Another round's number, or this one a second time, changes nothing.
    #expect(m.cohortFilledElsewhere(round: 3, now: 12).isEmpty)
    // Round 1 still reports: selection cannot close yet.
    #expect(m.cohortFilledElsewhere(round: 2, now: 12).isEmpty)
    #expect(m.cohortFilledElsewhere(round: 2, now: 12).isEmpty)
    #expect(m.selectingRound == 2)
    #expect(isRetry(checkIn(&m, 8, at: 13).0), "the others took the remaining places")
    #expect(checkIn(&m, 6, at: 13).0 == .waitForTask(round: 2), "a member keeps its place")
    for d in 1...3 { _ = m.report(device: d, round: 1, isWellFormed: true, now: 20) }
    let (_, closing) = m.report(device: 4, round: 1, isWellFormed: true, now: 20)
    #expect(closing == [.aggregate(round: 1, counts: counts(selected: 5, reported: 4))])
    #expect(
      m.committed(round: 1, now: 30) == [.configure(round: 2, devices: [6, 7], reportingDeadline: 330)])
    #expect(m.reportingRound == 2 && m.selectingRound == 3)
  }

  @Test func filledElsewhereWithNothingInFlightConfiguresAtOnce() {
    var m = makeReplicaMachine()
    _ = m.start(now: 0)
    _ = checkIn(&m, 1, at: 1)
    _ = checkIn(&m, 2, at: 1)
    #expect(
      m.cohortFilledElsewhere(round: 1, now: 5) == [
        .configure(round: 1, devices: [1, 2], reportingDeadline: 305)
      ])
  }

  @Test func aReplicaWithAnEmptyPartAggregatesAtOnce() {
    var m = makeReplicaMachine()
    _ = m.start(now: 0)
    #expect(
      m.cohortFilledElsewhere(round: 1, now: 5) == [
        .configure(round: 1, devices: [], reportingDeadline: 305), .aggregate(round: 1, counts: counts()),
      ])
    #expect(m.reportingRound == nil && m.selectingRound == 2)
  }

  @Test func anEmptyPartAtTheSelectionDeadlineAggregatesRatherThanAbandons() {
    var m = makeReplicaMachine()
    _ = m.start(now: 0)
    #expect(
      m.tick(now: 60) == [
        .configure(round: 1, devices: [], reportingDeadline: 360), .aggregate(round: 1, counts: counts()),
      ])
    // A machine of its own would abandon the same round.
    var alone = makeMachine()
    _ = alone.start(now: 0)
    #expect(alone.tick(now: 60) == [.abandon(round: 1, reason: .tooFewCheckIns, counts: counts())])
  }

  @Test func aPartSmallerThanTheMinimumGroupReleasesItsDevices() {
    var m = makeReplicaMachine(minimumGroup: 3)
    _ = m.start(now: 0)
    _ = checkIn(&m, 1, at: 1)
    _ = checkIn(&m, 2, at: 2)
    let actions = m.tick(now: 60)
    #expect(actions.count == 4)
    let released = actions.prefix(2).compactMap { action -> DeviceID? in
      if case .release(let device, _) = action { device } else { nil }
    }
    #expect(released == [1, 2])
    #expect(
      Array(actions.suffix(2)) == [
        .configure(round: 1, devices: [], reportingDeadline: 360), .aggregate(round: 1, counts: counts()),
      ])
  }

  @Test func aPartOfTheMinimumGroupIsConfigured() {
    var m = makeReplicaMachine(minimumGroup: 3)
    _ = m.start(now: 0)
    for d in 1...3 { _ = checkIn(&m, d, at: 1) }
    #expect(m.tick(now: 60) == [.configure(round: 1, devices: [1, 2, 3], reportingDeadline: 360)])
  }

  @Test func goalMetElsewhereClosesReporting() {
    var m = replicaMachineReporting()
    _ = m.report(device: 1, round: 1, isWellFormed: true, now: 20)
    #expect(m.goalMetElsewhere(round: 2, now: 21).isEmpty, "round 2 is not reporting")
    #expect(
      m.goalMetElsewhere(round: 1, now: 21) == [
        .aggregate(round: 1, counts: counts(selected: 5, reported: 1))
      ])
    #expect(m.reportingRound == nil)
    #expect(m.report(device: 2, round: 1, isWellFormed: true, now: 22).reply == .rejected(.late))
    #expect(m.goalMetElsewhere(round: 1, now: 23).isEmpty)
  }

  @Test func goalMetElsewhereWithNoReportHereStillAggregates() {
    var m = replicaMachineReporting()
    #expect(m.goalMetElsewhere(round: 1, now: 21) == [.aggregate(round: 1, counts: counts(selected: 5))])
  }

  @Test func reportsBelowTheMinimumAtTheDeadlineAggregateHere() {
    var m = replicaMachineReporting()
    _ = m.report(device: 1, round: 1, isWellFormed: true, now: 20)
    #expect(m.tick(now: 310) == [.aggregate(round: 1, counts: counts(selected: 5, reported: 1))])
  }

  @Test func otherReplicasCheckInsLengthenRetryWindows() {
    func window(otherRate: Double) -> ClosedRange<Double>? {
      var m = replicaMachineReporting()
      for d in 6...10 { _ = checkIn(&m, d, at: 11) }
      m.otherCheckInRate = otherRate
      return retryWindow(checkIn(&m, 11, at: 12).0)
    }
    // No whole bucket has passed here, so only the others' rate counts: 1 check-in per second
    // offers 60 devices per 60 s window for 5 places, so returns spread over 12 windows.
    #expect(window(otherRate: 0) == 12...72)
    #expect(window(otherRate: 1) == 12...732)
    #expect(window(otherRate: 1000) == 12...3612, "within the bound on retry windows")
  }
}
