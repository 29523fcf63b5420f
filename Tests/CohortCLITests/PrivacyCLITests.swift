import Foundation
import Testing

@Suite struct PrivacyCLITests {
  /// The first reference value of Google's dp-accounting: q = 0.01, z = 1.1, T = 10,000, δ = 1e-5 → ε = 5.6320.
  @Test func epsilonMatchesTheReference() throws {
    let arguments = [
      "privacy", "epsilon", "--sampling-rate", "0.01", "--noise-multiplier", "1.1", "--rounds", "10000",
      "--delta", "1e-5",
    ]
    let text = try cohort(arguments)
    #expect(text.status == 0, "\(text.stderr)")
    #expect(text.stdout.contains("epsilon           5.6320"), "\(text.stdout)")
    #expect(text.stdout.contains("optimal order     4.7"), "\(text.stdout)")

    let json = try cohort(arguments + ["--json"])
    #expect(json.status == 0, "\(json.stderr)")
    let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
    let epsilon = object?["epsilon"] as? Double ?? 0
    #expect(abs(epsilon - 5.6320) / 5.6320 < 0.005, "\(json.stdout)")
    #expect(object?["order"] as? Double == 4.7, "\(json.stdout)")
  }

  @Test func noiseCalibratesTheReferenceNoiseMultiplier() throws {
    let result = try cohort([
      "privacy", "noise", "--sampling-rate", "0.01", "--rounds", "10000", "--delta", "1e-5",
      "--target-epsilon", "5.632", "--json",
    ])
    #expect(result.status == 0, "\(result.stderr)")
    let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
    let z = object?["noise_multiplier"] as? Double ?? 0
    let epsilon = object?["epsilon"] as? Double ?? .infinity
    #expect(abs(z - 1.1) < 0.01, "\(result.stdout)")
    #expect(epsilon <= 5.632 && epsilon > 5.632 * 0.99, "\(result.stdout)")
  }

  @Test func invalidValuesNameTheFlag() throws {
    let rate = try cohort([
      "privacy", "epsilon", "--sampling-rate", "1.5", "--noise-multiplier", "1", "--rounds", "10", "--delta",
      "1e-5",
    ])
    #expect(rate.status != 0)
    #expect(rate.stderr.contains("--sampling-rate must be in (0, 1]"), "\(rate.stderr)")
    let delta = try cohort([
      "privacy", "noise", "--sampling-rate", "0.1", "--rounds", "10", "--delta", "1", "--target-epsilon", "1",
    ])
    #expect(delta.status != 0)
    #expect(delta.stderr.contains("--delta must be in (0, 1)"), "\(delta.stderr)")
  }
}
