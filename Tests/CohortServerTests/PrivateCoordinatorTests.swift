import CohortCore
import CohortPrivacy
import CohortProtocol
import CohortServer
import CohortStore
import Foundation
import Testing

@Suite struct PrivateCoordinatorTests {
  func report(_ h: Harness, _ device: DeviceID, round: Int, _ values: [Float], examples: Int, within: Bool)
    -> UpdateReport
  {
    var r = h.update(device, round: round, values, examples: examples)
    r.withinClip = within
    return r
  }

  @Test func theModelIsTheNoisySumOverTheGoalAndTheRoundRecordsEpsilon() async throws {
    let seed: UInt64 = 3
    let privacy = PrivacyPlan(
      kind: .centralGaussian, clip: 10, noiseMultiplier: 0.5, delta: 1e-5,
      adaptiveClipping: .init(countNoiseMultiplier: 1, initialClip: 10))
    let h = try Harness(privacy: privacy, populationSize: 20, privacySeed: seed)
    await h.coordinator.start()
    for d in 1...3 { _ = await h.coordinator.checkIn(CheckIn(device: d, population: "default")) }
    let sent = h.link.drain()
    #expect(sent.first?.assignment.clipNorm == 10, "devices are told the clip")
    h.clock.set(10)
    _ = await h.coordinator.report(report(h, 1, round: 1, [1, 0], examples: 1, within: true))
    _ = await h.coordinator.report(report(h, 2, round: 1, [0, 4], examples: 3, within: false))

    // Equal weights (examples ignored), noise from (seed, dp-noise, 1), divided by the goal (2).
    let mechanism = try #require(
      CentralGaussianMechanism(plan: privacy, expectedCohort: 2, populationSize: 20, seed: seed))
    var sum: [Double] = [1, 4]
    mechanism.addNoise(to: &sum, clip: 10, round: 1)
    #expect(sum != [1, 4])
    let expected = sum.map { Float(1) + Float($0 * (1.0 / 2)) }
    #expect(try h.store.checkpoint(h.run, round: 1).weights.values == expected, "seed \(seed)")
    let r = try #require(try h.store.rounds(h.run).first)
    let epsilon = try PrivacyAccountant.epsilon(
      samplingRate: 0.1, noiseMultiplier: 0.5, steps: 1, delta: 1e-5)
    #expect(r.epsilon == epsilon.epsilon)

    // One of the two updates was within the clip: the next round's clip follows the noisy count.
    let clip = mechanism.nextClip(after: 1, clip: 10, unclipped: 1)
    #expect(await h.coordinator.clipNorm == clip)
    for d in 4...6 { _ = await h.coordinator.checkIn(CheckIn(device: d, population: "default")) }
    #expect(h.link.drain().first?.assignment.clipNorm == clip)
  }

  @Test func withoutPrivacyNoClipTravels() async throws {
    let h = try Harness()
    await h.coordinator.start()
    for d in 1...3 { _ = await h.coordinator.checkIn(CheckIn(device: d, population: "default")) }
    #expect(h.link.drain().first?.assignment.clipNorm == nil)
  }
}
