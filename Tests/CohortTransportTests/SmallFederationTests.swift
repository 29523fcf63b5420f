import CohortCore
import CohortStore
import Foundation
import Testing

@testable import CohortTransport

/// A federation no larger than its goal: three devices, all of them in each of 20 rounds.
@Suite(.serialized) struct SmallFederationTests {
  @Test func threeDevicesCommitTwentyOfTwentyRounds() async throws {
    let scenario = try networkScenario(devices: 3, rounds: 20)
    let directory = try temporaryDirectory("small")
    let network = try await EndToEndTests().federate(
      scenario, security: .insecureLoopback, client: .insecure, directory: directory)
    let committed = network.rounds.filter { $0.outcome == .committed }
    #expect(committed.count == 20 && network.rounds.count == 20, "seed \(scenario.seed): \(network.rounds)")
    #expect(committed.allSatisfy { $0.reported == 3 }, "seed \(scenario.seed)")
  }
}
