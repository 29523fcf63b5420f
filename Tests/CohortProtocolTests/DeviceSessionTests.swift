import CohortProtocol
import Testing

@Suite struct DeviceSessionTests {
  func session() -> DeviceSession {
    DeviceSession(
      configuration: .init(device: 7, population: "p", taskWait: 100, initialBackoff: 10, maximumBackoff: 35))
  }

  let task = RoundTask(round: 3, checkpointSHA256: "abc", reportingDeadline: 500)

  @Test func fullParticipation() {
    var s = session()
    #expect(s.wake(now: 0) == [.send(CheckIn(device: 7, population: "p"))])
    #expect(s.received(.waitForTask(round: 3), now: 1).isEmpty)
    #expect(s.state == .waitingForTask(round: 3, until: 101))
    #expect(s.received(.task(task), now: 5) == [.train(task)])
    #expect(s.trained(round: 3, succeeded: true, now: 50) == [.upload(round: 3)])
    #expect(s.received(.accepted(round: 3), now: 60) == [.finished(round: 3, accepted: true)])
    #expect(s.state == .idle)
  }

  @Test func paceSteeringSendsTheDeviceToSleep() {
    var s = session()
    _ = s.wake(now: 0)
    #expect(s.received(.retry(window: 100...200), now: 1) == [.sleep(window: 100...200)])
    #expect(s.state == .idle)
  }

  @Test func refusalsBackOffExponentiallyUpToTheMaximum() {
    var s = session()
    var windows: [ClosedRange<Double>] = []
    for _ in 0..<4 {
      _ = s.wake(now: 0)
      if case .sleep(let w) = s.received(.rejected(.protocolVersion), now: 0).first { windows.append(w) }
    }
    #expect(windows == [0...10, 0...20, 0...35, 0...35])
  }

  @Test func lateTrainingIsNotUploaded() {
    var s = session()
    _ = s.wake(now: 0)
    _ = s.received(.task(task), now: 1)
    let actions = s.trained(round: 3, succeeded: true, now: 501)
    #expect(actions.first == .finished(round: 3, accepted: false))
    #expect(s.state == .idle)
  }

  @Test func rejectedUploadEndsTheParticipation() {
    var s = session()
    _ = s.wake(now: 0)
    _ = s.received(.task(task), now: 1)
    _ = s.trained(round: 3, succeeded: true, now: 2)
    #expect(s.received(.rejected(.late), now: 3) == [.finished(round: 3, accepted: false)])
  }

  @Test func waitingForATaskTimesOut() {
    var s = session()
    _ = s.wake(now: 0)
    _ = s.received(.waitForTask(round: 3), now: 0)
    #expect(s.tick(now: 99).isEmpty)
    #expect(s.tick(now: 100) == [.sleep(window: 100...110)])
  }

  @Test func staleRepliesAreIgnored() {
    var s = session()
    #expect(s.received(.accepted(round: 1), now: 0).isEmpty)
    _ = s.wake(now: 0)
    _ = s.received(.task(task), now: 1)
    _ = s.trained(round: 3, succeeded: true, now: 2)
    #expect(s.received(.accepted(round: 2), now: 3).isEmpty)
    #expect(s.state == .reporting(round: 3))
  }

  @Test func lostConnectionDuringTrainingEndsAndBacksOff() {
    var s = session()
    _ = s.wake(now: 0)
    _ = s.received(.task(task), now: 1)
    #expect(s.connectionLost(now: 5) == [.finished(round: 3, accepted: false), .sleep(window: 5...15)])
  }
}
