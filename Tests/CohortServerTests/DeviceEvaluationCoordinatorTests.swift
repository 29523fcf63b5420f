import CohortCore
import CohortProtocol
import CohortServer
import CohortStore
import Testing

/// `cohort serve` keeps each reporting device's evaluation through the same pipeline.
@Suite struct DeviceEvaluationCoordinatorTests {
  @Test func reportedEvaluationsAreStoredPerDevice() async throws {
    let h = try Harness(rounds: 1)
    await h.coordinator.start()
    for d in 1...3 { _ = await h.coordinator.checkIn(CheckIn(device: d, population: "default")) }
    _ = h.link.drain()
    h.clock.set(10)
    var first = h.update(1, round: 1, [1, 0], examples: 1)
    first.evaluation = Evaluation(loss: 0.5, accuracy: 0.75, examples: 4)
    // An evaluation on no examples says nothing: neither summed nor stored.
    var second = h.update(2, round: 1, [0, 4], examples: 3)
    second.evaluation = Evaluation(loss: 0, accuracy: 0, examples: 0)
    #expect(await h.coordinator.report(first) == .accepted(round: 1))
    #expect(await h.coordinator.report(second) == .accepted(round: 1))
    let r = try #require(try h.store.rounds(h.run).first)
    #expect(r.outcome == .committed && r.federatedEvalAccuracy == 0.75 && r.federatedEvalExamples == 4)
    #expect(
      try h.store.deviceEvaluations(h.run)
        == [DeviceEvaluationRecord(round: 1, device: 1, accuracy: 0.75, loss: 0.5, examples: 4)])
  }
}
