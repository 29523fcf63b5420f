import CohortCore
import CohortSimulator
import CohortStore
import Foundation
import Logging
import Testing

/// The small scenario of SimulationTests with a `compression` section (and optionally secure
/// aggregation).
private func compressedScenario(seed: UInt64, compression: String, secure: Bool = false) throws -> Scenario {
  try smallScenario(
    seed: seed, planKeys: ["secure_aggregation: {enabled: \(secure)}", "compression: \(compression)"])
}

@Suite struct CompressionSimulationTests {
  /// Every upload of a 610-value update quantized to b bits with a per-vector range is
  /// 1 + 8 + ⌈610·b/8⌉ bytes (bit width, range, levels), so a round's bytes_up is a whole number of them, at least one per
  /// report, and far below the uncompressed 2,440 per upload.
  @Test(arguments: [8, 4, 2])
  func quantizedRoundsCountTheEncodedBytes(bits: Int) async throws {
    let seed: UInt64 = 11
    let encoded = 1 + 8 + (610 * bits + 7) / 8
    let (summary, rounds) = try await simulate(
      try compressedScenario(seed: seed, compression: "{kind: quantization, bits: \(bits)}"))
    let (plainSummary, plainRounds) = try await simulate(
      try compressedScenario(seed: seed, compression: "{kind: none}"))
    #expect(summary.roundsCommitted == 4 && plainSummary.roundsCommitted == 4, "seed \(seed)")
    for r in rounds {
      #expect(r.bytesUp % encoded == 0, "seed \(seed), round \(r.round): \(r.bytesUp) bytes")
      #expect(r.bytesUp >= r.reported * encoded, "seed \(seed), round \(r.round): \(r)")
      #expect(r.bytesUp < r.reported * 610 * 4, "seed \(seed), round \(r.round): \(r)")
    }
    #expect(summary.bytesUp == rounds.reduce(0) { $0 + $1.bytesUp })
    #expect(summary.bytesUp < plainSummary.bytesUp, "seed \(seed)")
    #expect(plainRounds.allSatisfy { $0.bytesUp % 2440 == 0 })
    // Same seed, same run.
    let again = try await simulate(
      try compressedScenario(seed: seed, compression: "{kind: quantization, bits: \(bits)}")
    ).0
    #expect(again.checkpointSHA256 == summary.checkpointSHA256, "seed \(seed)")
    // Unbiased rounding keeps the model close to the uncompressed one (4 short rounds: loosely).
    let gap = abs((summary.finalAccuracy ?? 0) - (plainSummary.finalAccuracy ?? 0))
    #expect(
      gap < (bits >= 4 ? 0.05 : 0.1),
      "seed \(seed): accuracy \(summary.finalAccuracy ?? 0) vs \(plainSummary.finalAccuracy ?? 0) uncompressed"
    )
  }

  @Test(arguments: ["{kind: top_k, fraction: 0.1}", "{kind: random_mask, fraction: 0.5}"])
  func sparsifiedRoundsRun(_ compression: String) async throws {
    let seed: UInt64 = 12
    let perUpload = 4 + (compression.contains("top_k") ? 61 * 8 : 305 * 4)
    let (summary, rounds) = try await simulate(try compressedScenario(seed: seed, compression: compression))
    #expect(summary.roundsCommitted == 4, "seed \(seed)")
    for r in rounds {
      #expect(r.bytesUp % perUpload == 0 && r.bytesUp >= r.reported * perUpload, "seed \(seed): \(r)")
    }
  }

  /// A random mask shared by the round's devices runs under secure aggregation.
  @Test func randomMaskRunsUnderSecureAggregation() async throws {
    let seed: UInt64 = 13
    let (summary, _) = try await simulate(
      try compressedScenario(seed: seed, compression: "{kind: random_mask, fraction: 0.5}", secure: true))
    #expect(summary.roundsCommitted == 4, "seed \(seed)")
  }

  /// Fixed-range quantization sums in the secure-aggregation ring: the model lands near the one
  /// plain quantization (the same codes, decoded one by one) gives.
  @Test func fixedRangeQuantizationRunsInsideSecureAggregation() async throws {
    let seed: UInt64 = 14
    let compression = "{kind: quantization, bits: 8, range: 0.5}"
    let (secure, rounds) = try await simulate(
      try compressedScenario(seed: seed, compression: compression, secure: true))
    let (plain, _) = try await simulate(try compressedScenario(seed: seed, compression: compression))
    #expect(secure.roundsCommitted == 4, "seed \(seed): \(rounds.map(\.abandonReason))")
    let gap = abs((secure.finalAccuracy ?? 0) - (plain.finalAccuracy ?? 1))
    #expect(gap < 0.03, "seed \(seed): accuracy \(secure.finalAccuracy ?? 0) vs \(plain.finalAccuracy ?? 0)")
  }
}
