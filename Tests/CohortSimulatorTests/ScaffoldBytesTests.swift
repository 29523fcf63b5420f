import CohortCore
import CohortSimulator
import CohortStore
import Foundation
import Testing

@Suite struct ScaffoldBytesTests {
  /// SCAFFOLD sends the server's control variate c with each task and each device uploads its
  /// Δc_k with its update: both count, so a round costs twice FedAvg's bytes each way.
  @Test func controlVariatesCountInBytesBothWays() async throws {
    let parameters = 610
    let fedavg = try await simulate(try smallScenario(seed: 3)).1
    let scaffold = try await simulate(
      try smallScenario(seed: 3, planKeys: ["  strategy: {kind: scaffold}"])
    ).1
    for r in fedavg where r.outcome == .committed {
      #expect(r.bytesDown == r.selected * parameters * 4 && r.bytesUp >= r.reported * parameters * 4)
    }
    let committed = scaffold.filter { $0.outcome == .committed }
    #expect(!committed.isEmpty)
    for r in committed {
      #expect(r.bytesDown == r.selected * 2 * parameters * 4, "round \(r.round): \(r)")
      // Every upload (counted whether accepted or not) is an update and a Δc_k of the model's size.
      #expect(r.bytesUp >= r.reported * 2 * parameters * 4, "round \(r.round): \(r)")
      #expect(r.bytesUp % (2 * parameters * 4) == 0, "round \(r.round): \(r)")
    }
  }

  /// A round's duration is on the run's (simulated) clock; its real time is what computing it
  /// took on this machine, recorded beside it.
  @Test func roundsRecordSimulatedDurationAndRealSeconds() async throws {
    let rounds = try await simulate(try smallScenario(seed: 3)).1
    for r in rounds where r.outcome == .committed {
      #expect(r.durationSeconds == r.endedAt - r.startedAt)
      let real = try #require(r.realSeconds)
      #expect(real >= 0 && real.isFinite)
    }
  }
}
