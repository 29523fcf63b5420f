import CohortCore
import CohortML
import Foundation
import Testing

/// Forward passes against hand-computed values and naive reference implementations: the
/// gradient checks prove the backward pass matches the forward pass, these prove the forward
/// pass computes the right thing.
@Suite struct LayerTests {
  @Test func denseComputesWxPlusB() {
    let network = Network(inputShape: [2], layers: [.dense(outputs: 3)])
    // W is [outputs, inputs] = [[1, 2], [3, 4], [5, 6]], then b.
    let weights = Weights(layout: network.layout, values: [1, 2, 3, 4, 5, 6, 0.5, -1, 0])
    let logits = network.logits(weights, features: [1, -1, 0, 2])
    #expect(logits == [-0.5, -2, -1, 4.5, 7, 12])
    #expect(network.layout.tensors.map(\.name) == ["dense0.weight", "dense0.bias"])
    #expect(network.layout.tensors[0].shape == [3, 2])
  }

  @Test func reluClampsNegatives() {
    let network = Network(inputShape: [4], layers: [.relu])
    let logits = network.logits(Weights.zeros(network.layout), features: [-1, 0, 2.5, -0.25])
    #expect(logits == [0, 0, 2.5, 0])
  }

  @Test func maxPoolTakesWindowMaximaAndDropsRaggedEdge() {
    let network = Network(inputShape: [1, 3, 5], layers: [.maxPool(size: 2)])
    #expect(network.classes == 2)
    let image: [Float] = [
      1, 5, 2, 0, 9,
      3, 4, 8, 1, 9,
      9, 9, 9, 9, 9,
    ]
    #expect(network.logits(Weights.zeros(network.layout), features: image) == [5, 8])
  }

  @Test func convolutionMatchesDirectSum() {
    let seed: UInt64 = 31
    var rng = RandomStream(seed: seed, purpose: "conv-reference")
    for (c, h, w, f, k, p) in [
      (2, 5, 4, 3, 3, 1), (1, 6, 6, 2, 5, 2), (3, 4, 5, 2, 2, 0), (1, 3, 3, 1, 3, 2),
    ] {
      let network = Network(inputShape: [c, h, w], layers: [.conv2d(filters: f, kernel: k, padding: p)])
      let weights = rng.weights(for: network)
      let batch = 2
      let x = rng.normals(batch * c * h * w)
      let got = network.logits(weights, features: x)
      let (oh, ow) = (h + 2 * p - k + 1, w + 2 * p - k + 1)
      #expect(got.count == batch * f * oh * ow, "seed \(seed)")
      let kernel = weights[tensor: "conv0.weight"].map { $0 }
      let bias = weights[tensor: "conv0.bias"].map { $0 }
      var worst: Float = 0
      for e in 0..<batch {
        for fi in 0..<f {
          for oy in 0..<oh {
            for ox in 0..<ow {
              var sum = Double(bias[fi])
              for ci in 0..<c {
                for ki in 0..<k {
                  for kj in 0..<k {
                    let (iy, ix) = (oy + ki - p, ox + kj - p)
                    guard iy >= 0 && iy < h && ix >= 0 && ix < w else { continue }
                    sum +=
                      Double(kernel[((fi * c + ci) * k + ki) * k + kj])
                      * Double(x[e * c * h * w + (ci * h + iy) * w + ix])
                  }
                }
              }
              let value = got[((e * f + fi) * oh + oy) * ow + ox]
              worst = max(worst, abs(value - Float(sum)))
            }
          }
        }
      }
      #expect(worst < 1e-5, "seed \(seed), conv \(c)x\(h)x\(w) k\(k) p\(p): max difference \(worst)")
    }
  }

  @Test func softmaxCrossEntropyIsStableForLargeLogits() {
    // Logits pass straight into the loss; exp(1000) would overflow a naive softmax.
    let network = Network(inputShape: [3], layers: [])
    let empty = Weights.zeros(network.layout)
    let result = network.lossAndGradient(empty, features: [1000, 0, -1000, 1, 2, 3], labels: [1, 2])
    let expected = (1000.0 + log(1 + exp(-1000.0))) / 2 + (3 + log(exp(-2.0) + exp(-1.0) + 1) - 3) / 2
    #expect(result.loss.isFinite)
    #expect(abs(result.loss - expected) < 1e-4, "loss \(result.loss) vs \(expected)")
    // Gradient of the mean: (softmax − onehot) / batch.
    #expect(abs(result.inputs[0] - 0.5) < 1e-6)
    #expect(abs(result.inputs[1] + 0.5) < 1e-6)
    let p = [exp(-2.0), exp(-1.0), 1].map { $0 / (exp(-2.0) + exp(-1.0) + 1) }
    for j in 0..<3 {
      let target = (p[j] - (j == 2 ? 1 : 0)) / 2
      #expect(abs(Double(result.inputs[3 + j]) - target) < 1e-6)
    }
  }
}

/// The plan's parameter count (what `plan validate` checks against its limit) is the networks'.
@Suite struct ParameterCountTests {
  @Test(arguments: [
    ModelPlan(kind: .logisticRegression, inputShape: [60], classes: 10),
    ModelPlan(kind: .mlp, inputShape: [784], hidden: [200, 200], classes: 10),
    ModelPlan(kind: .cnn, inputShape: [1, 28, 28], classes: 62),
    ModelPlan(kind: .cnn, inputShape: [3, 13, 17], classes: 5),
  ])
  func planCountsWhatTheNetworkLaysOut(model: ModelPlan) {
    #expect(model.parameterCount == Network(plan: model).layout.count)
  }

  @Test func anOverflowingModelCountsAsTooLarge() {
    let model = ModelPlan(
      kind: .mlp, inputShape: [10_000_000], hidden: Array(repeating: 100_000, count: 16), classes: 10)
    #expect(model.parameterCount > ModelPlan.maximumParameters)
  }
}
