import CohortCore
import Testing

@testable import CohortProtocol

@Suite struct QuantizedRingTests {
  @Test func theSumOfCodesDecodesToTheSumOfWeightedUpdates() {
    var plan = CompressionPlan()
    plan.kind = .quantization
    plan.bits = 8
    plan.range = 0.5
    let n = 30
    let d = 610
    var shared = RandomStream(seed: 21, purpose: "secagg-rotation", round: 3)
    let ring = QuantizedRing(plan: plan, dimension: d, devices: n, rotationSeed: shared.next())
    #expect(ring.ringBits == 8 + 5)
    var data = RandomStream(seed: 21, purpose: "quantized-ring-test")
    var sum = [UInt32](repeating: 0, count: d + 1)
    var expected = [Double](repeating: 0, count: d)
    var weights = 0.0
    for device in 0..<n {
      let update = (0..<d).map { _ in Float(data.uniform() * 0.6 - 0.3) }
      let weight = Float(0.2 + 0.8 * data.uniform())
      for i in 0..<d { expected[i] += Double(update[i] * weight) }
      weights += Double(weight)
      var random = RandomStream(seed: 21, purpose: "codes", device: device)
      for (i, code) in ring.encode(update, weight: weight, random: &random).enumerated() { sum[i] &+= code }
    }
    let (decoded, total) = ring.decodeSum(sum, devices: n)
    // Each device's rounding error is zero-mean, independent per coordinate and below one step
    // (1/255); rotated back, a coordinate's error is a ±1-weighted mix of them with standard
    // deviation at most √n·step/2 ≈ 0.01 here, so n·step ≈ 0.12 is a generous bound.
    let step = 1.0 / 255
    let worst = zip(decoded, expected).map { abs($0 - $1) }.max() ?? 1
    #expect(worst < Double(n) * step, "seed 21: worst error \(worst)")
    #expect(abs(total - weights) < Double(n) / 255, "seed 21: weights \(total) vs \(weights)")
  }
}
