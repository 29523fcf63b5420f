import CohortCore
import Foundation
import Testing

@Suite struct CompressionPlanTests {
  let base = "name: p\nmodel: {kind: logistic_regression, inputs: 60, classes: 10}\n"

  func plan(_ compression: String, extra: String = "") throws -> CompressionPlan {
    try Plan.parse(yaml: base + extra + "compression: \(compression)\n", file: "p.yaml").compression
  }

  func issues(_ compression: String, extra: String = "") -> [ConfigurationIssue] {
    planIssues(base + extra + "compression: \(compression)\n")
  }

  @Test func defaultsAndEveryKeyIsRead() throws {
    #expect(try Plan.parse(yaml: base, file: "p.yaml").compression == CompressionPlan())
    #expect(try plan("{kind: none}") == CompressionPlan())
    #expect(try plan("{kind: quantization}") == .quantization())
    #expect(
      try plan("{kind: quantization, bits: 4, rotation: none, range: 0.5, rounding: deterministic}")
        == .quantization(bits: 4, rotation: .none, range: 0.5, rounding: .deterministic))
    #expect(try plan("{kind: quantization, range: per_vector}").range == nil)
    #expect(try plan("{kind: top_k, fraction: 0.1}") == CompressionPlan(kind: .topK, fraction: 0.1))
    #expect(try plan("{kind: random_mask, fraction: 1}") == CompressionPlan(kind: .randomMask, fraction: 1))
  }

  @Test func badValuesNameTheirKeys() {
    let found = issues("{kind: quantization, bits: 17, rotation: walsh, range: -1, rounding: up}")
    #expect(
      Set(found.map(\.keyPath))
        == ["compression.bits", "compression.rotation", "compression.range", "compression.rounding"],
      "\(found)")
    let range = found.first { $0.keyPath == "compression.range" }?.message ?? ""
    #expect(range.contains("per_vector") && range.contains("positive number"), "\(range)")
    #expect(issues("{kind: quantization, bits: 0}").map(\.keyPath) == ["compression.bits"])
    #expect(issues("{kind: quantization, range: wide}").map(\.keyPath) == ["compression.range"])
    for bad in ["0", "1.5", "-0.1"] {
      #expect(issues("{kind: top_k, fraction: \(bad)}").map(\.keyPath) == ["compression.fraction"], "\(bad)")
    }
    let missing = issues("{kind: random_mask}")
    #expect(missing.map(\.keyPath) == ["compression.fraction"] && missing[0].message.contains("missing"))
  }

  @Test func keysOfOtherKindsAreRejected() {
    let q = issues("{kind: quantization, fraction: 0.1}")
    #expect(q.map(\.keyPath) == ["compression.fraction"] && q[0].message.contains("bits"), "\(q)")
    let t = issues("{kind: top_k, fraction: 0.1, bits: 4}")
    #expect(t.map(\.keyPath) == ["compression.bits"], "\(t)")
    let n = issues("{kind: none, bits: 4}")
    #expect(n.map(\.keyPath) == ["compression.bits"] && n[0].message.contains("no parameters"), "\(n)")
  }

  @Test func combinationsSecureAggregationCannotSumAreRejected() throws {
    let secAgg = "secure_aggregation: {enabled: true}\n"
    let topK = issues("{kind: top_k, fraction: 0.1}", extra: secAgg)
    #expect(topK.map(\.keyPath) == ["compression.kind"], "\(topK)")
    #expect(topK.first?.message.contains("top-k indices differ per device") == true, "\(topK)")
    #expect(topK.first?.message.contains("random_mask") == true)
    let perVector = issues("{kind: quantization, bits: 8}", extra: secAgg)
    #expect(perVector.map(\.keyPath) == ["compression.range"], "\(perVector)")
    #expect(perVector.first?.message.contains("each device's range differs") == true, "\(perVector)")
    // A fixed range is one meaning for every device's codes: their sum decodes.
    #expect(try plan("{kind: quantization, bits: 8, range: 1}", extra: secAgg).range == 1)
    // The distributed discrete Gaussian rounds to its own lattice: no codec on top.
    let ddg = issues(
      "{kind: quantization, bits: 8, range: 1}",
      extra: secAgg + "privacy: {kind: distributed_discrete_gaussian}\n")
    #expect(ddg.map(\.keyPath) == ["compression.kind"], "\(ddg)")
    // A mask from a seed the round's devices share can be summed, and disabled SecAgg allows all.
    #expect(try plan("{kind: random_mask, fraction: 0.5}", extra: secAgg).kind == .randomMask)
    let off = "secure_aggregation: {enabled: false}\n"
    #expect(try plan("{kind: top_k, fraction: 0.1}", extra: off).kind == .topK)
    #expect(try plan("{kind: quantization}", extra: off).kind == .quantization)
  }

  /// `kind: none` encodes as before the other kinds existed, so stored plans keep their SHA-256;
  /// other kinds write their parameters, and every plan survives a JSON round trip.
  @Test func encodingIsStableAndRoundTrips() throws {
    let json = String(decoding: try JSONEncoder().encode(CompressionPlan()), as: UTF8.self)
    #expect(json == #"{"kind":"none"}"#)
    for p in [
      CompressionPlan(), .quantization(),
      .quantization(bits: 2, rotation: .none, range: 3, rounding: .deterministic),
      CompressionPlan(kind: .topK, fraction: 0.25), CompressionPlan(kind: .randomMask, fraction: 0.5),
    ] {
      #expect(try JSONDecoder().decode(CompressionPlan.self, from: JSONEncoder().encode(p)) == p, "\(p)")
    }
    let a = try Plan.parse(yaml: base, file: "p.yaml")
    let b = try Plan.parse(yaml: base + "compression: {kind: none}\n", file: "p.yaml")
    let c = try Plan.parse(yaml: base + "compression: {kind: quantization}\n", file: "p.yaml")
    #expect(a.sha256 == b.sha256 && a.sha256 != c.sha256)
  }
}
