import CohortTesting
import Foundation
import Testing

@Suite struct PrivateSimulationCLITests {
  func privateScenario(_ privacy: String, rounds: Int = 6) -> String {
    let text = smallScenario.replacingOccurrences(
      of: "    strategy: {kind: fedavg}\n", with: "    strategy: {kind: fedavg}\n  privacy: \(privacy)\n"
    ).replacingOccurrences(of: "rounds: 6", with: "rounds: \(rounds)")
    #expect(text != smallScenario)
    return text
  }

  @Test func killedRunWithAdaptiveClippingResumesToTheSameCheckpoint() throws {
    // The clip adapts after every round and must come back exactly from the saved state.
    let dir = TemporaryDirectory()
    let scenario = dir.write(
      "dp.yaml",
      privateScenario("{kind: central_gaussian, clip: 0.3, noise_multiplier: 0.8, adaptive_clipping: {}}"))
    let whole = try simulateJSON([scenario, "--db", dir.file("whole.sqlite")])
    #expect(whole["epsilon"] as? Double != nil && whole["delta"] as? Double == 1e-5, "\(whole)")
    let db = dir.file("crash.sqlite")
    let crashed = try cohort(["simulate", scenario, "--db", db, "--crash-after-round", "3"])
    #expect(crashed.status != 0)
    let resumed = try simulateJSON(["--resume", "1", "--db", db])
    #expect(resumed["checkpoint_sha256"] as? String == whole["checkpoint_sha256"] as? String)
    #expect(resumed["epsilon"] as? Double == whole["epsilon"] as? Double)
    let shown = try cohort(["runs", "show", "1", "--db", db])
    #expect(shown.stdout.contains("privacy ε"), "\(shown.stdout)")
    #expect(shown.stdout.contains(" ε "), "\(shown.stdout)")
  }

  @Test func theBudgetStopIsPrinted() throws {
    let dir = TemporaryDirectory()
    func epsilon(_ rounds: Int) throws -> Double {
      let r = try cohort([
        "privacy", "epsilon", "--sampling-rate", "0.1", "--noise-multiplier", "1", "--rounds", "\(rounds)",
        "--delta", "1e-5", "--json",
      ])
      let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
      return object?["epsilon"] as? Double ?? 0
    }
    let target = (try epsilon(2) + epsilon(3)) / 2
    let scenario = dir.write(
      "budget.yaml",
      privateScenario("{kind: central_gaussian, noise_multiplier: 1, target_epsilon: \(target)}"))
    let result = try cohort(["simulate", scenario, "--db", dir.file("b.sqlite")])
    #expect(result.status == 0, "\(result.stderr)")
    #expect(result.stdout.contains("privacy budget reached: ε after round 3 would be"), "\(result.stdout)")
    #expect(result.stdout.contains("stopping after round 2"), "\(result.stdout)")
    #expect(result.stdout.contains("2 committed of 2"), "\(result.stdout)")
  }
}
