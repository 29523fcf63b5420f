import CohortCore
import CohortSimulator
import Testing

/// Every codec with every privacy mode, with and without secure aggregation: each combination
/// either loads and runs in simulation, or is one the plan reader refuses with a message.
@Suite struct CombinationTests {
  static let codecs = [
    "{kind: none}", "{kind: quantization, bits: 8}", "{kind: quantization, bits: 8, range: 0.5}",
    "{kind: top_k, fraction: 0.2}", "{kind: random_mask, fraction: 0.5}",
  ]
  static let privacy = [
    "{kind: none}", "{kind: central_gaussian, clip: 1, noise_multiplier: 0.3}",
    "{kind: distributed_discrete_gaussian, clip: 1, noise_multiplier: 0.3}",
  ]

  /// The combinations that cannot work, and the key their message names.
  static func refusal(codec: String, privacy: String, secure: Bool) -> String? {
    let distributed = privacy.contains("distributed")
    if distributed && !secure { return "privacy.kind" }
    if distributed && !codec.contains("none") { return "compression.kind" }
    if secure && codec.contains("top_k") { return "compression.kind" }
    if secure && codec.contains("quantization") && !codec.contains("range") { return "compression.range" }
    return nil
  }

  @Test(arguments: [false, true])
  func everyCombinationRunsOrIsRefused(secure: Bool) async throws {
    for codec in Self.codecs {
      for privacy in Self.privacy {
        let keys = [
          "secure_aggregation: {enabled: \(secure)}", "compression: \(codec)", "privacy: \(privacy)",
        ]
        let build = { try smallScenario(seed: 17, dropout: 0.05, rounds: 2, planKeys: keys) }
        let label = "secure \(secure), compression \(codec), privacy \(privacy)"
        if let key = Self.refusal(codec: codec, privacy: privacy, secure: secure) {
          do {
            _ = try build()
            Issue.record("\(label): expected a refusal naming \(key)")
          } catch let error as ConfigurationError {
            #expect(error.issues.contains { $0.keyPath == key }, "\(label): \(error.issues)")
            #expect(error.issues.allSatisfy { !$0.message.isEmpty })
          }
          continue
        }
        let (summary, rounds) = try await simulate(try build())
        #expect(summary.roundsCommitted >= 1, "\(label): \(rounds.map(\.abandonReason))")
        if !privacy.contains("none") {
          #expect(rounds.contains { $0.epsilon != nil }, "\(label): ε is recorded")
        }
      }
    }
  }
}
