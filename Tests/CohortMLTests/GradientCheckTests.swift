import CohortCore
import CohortML
import Testing

/// Finite-difference checks of every layer kind's gradients, with respect to both the parameters
/// and the inputs, through the public `lossAndGradient` (the kernels training runs).
@Suite struct GradientCheckTests {
  let checker = GradientChecker()

  /// Draws weights, a batch and labels from `seed` and checks parameter and input gradients,
  /// skipping the few coordinates whose perturbation crosses a ReLU kink or a max-pool tie.
  func checkNetwork(
    _ network: Network, batch: Int, seed: UInt64, step: Float = 1e-2,
    regularization: (Weights) -> Regularization = { _ in Regularization() },
    sourceLocation: SourceLocation = #_sourceLocation
  ) {
    var rng = RandomStream(seed: seed, purpose: "gradient-check")
    let weights = rng.weights(for: network)
    let features = rng.normals(batch * network.inputCount)
    let labels = rng.labels(batch, classes: network.classes)
    let regularization = regularization(weights)
    let gradient = network.lossAndGradient(
      weights, features: features, labels: labels, regularization: regularization)
    let pattern = ActivationPattern(network)
    let checker = GradientChecker(step: step)
    let centre = pattern(weights.values, features)

    if network.layout.count > 0 {
      let loss = { (w: [Float]) in
        network.lossAndGradient(
          Weights(layout: network.layout, values: w), features: features, labels: labels,
          regularization: regularization
        ).loss
      }
      let report = checker.check(
        analytic: gradient.weights.values, at: weights.values, valid: { pattern($0, features) == centre },
        loss: loss)
      #expect(
        checker.passes(report), "seed \(seed): parameter gradient \(report)", sourceLocation: sourceLocation)
    }
    let loss = { (x: [Float]) in
      network.lossAndGradient(weights, features: x, labels: labels, regularization: regularization).loss
    }
    let report = checker.check(
      analytic: gradient.inputs, at: features, valid: { pattern(weights.values, $0) == centre }, loss: loss)
    #expect(checker.passes(report), "seed \(seed): input gradient \(report)", sourceLocation: sourceLocation)
  }

  @Test func dense() {
    checkNetwork(Network(inputShape: [5], layers: [.dense(outputs: 4)]), batch: 3, seed: 11)
  }

  @Test func relu() {
    checkNetwork(Network(inputShape: [6], layers: [.relu]), batch: 3, seed: 12)
  }

  @Test func softmaxCrossEntropy() {
    checkNetwork(Network(inputShape: [7], layers: []), batch: 4, seed: 13)
  }

  @Test func convolution() {
    // Non-square image, several channels, padding 1.
    checkNetwork(
      Network(inputShape: [2, 5, 4], layers: [.conv2d(filters: 3, kernel: 3, padding: 1)]), batch: 2, seed: 14
    )
    // 'Same' 5×5 as in the CNN, wider than the image is tall.
    checkNetwork(
      Network(inputShape: [1, 4, 6], layers: [.conv2d(filters: 2, kernel: 5, padding: 2)]), batch: 2, seed: 15
    )
    // No padding.
    checkNetwork(
      Network(inputShape: [2, 4, 4], layers: [.conv2d(filters: 2, kernel: 2, padding: 0)]), batch: 2, seed: 16
    )
  }

  @Test func maxPool() {
    // Width 5 leaves a ragged column that the pool drops; its gradient must be zero.
    checkNetwork(Network(inputShape: [2, 4, 5], layers: [.maxPool(size: 2)]), batch: 2, seed: 17)
  }

  @Test func weightDecayAndProximalTerms() {
    let network = Network(inputShape: [4], layers: [.dense(outputs: 3)])
    let seed: UInt64 = 18
    var rng = RandomStream(seed: seed, purpose: "anchor")
    let anchor = rng.weights(for: network)
    checkNetwork(network, batch: 3, seed: seed) { _ in
      Regularization(weightDecay: 0.3, proximalMu: 0.7, anchor: anchor)
    }

    // The loss carries exactly the two penalty terms on top of the cross-entropy.
    let weights = rng.weights(for: network)
    let features = rng.normals(3 * 4)
    let labels = rng.labels(3, classes: 3)
    let plain = network.lossAndGradient(weights, features: features, labels: labels).loss
    let penalised = network.lossAndGradient(
      weights, features: features, labels: labels,
      regularization: Regularization(weightDecay: 0.3, proximalMu: 0.7, anchor: anchor)
    ).loss
    let offset = weights.difference(anchor)
    let expected = plain + 0.15 * weights.dot(weights) + 0.35 * offset.dot(offset)
    #expect(abs(penalised - expected) < 1e-5 * abs(expected), "seed \(seed): \(penalised) vs \(expected)")
  }

  @Test func wholeNetworks() {
    // A smaller step for deep stacks: fewer perturbations then cross a kink somewhere inside.
    checkNetwork(.mlp(inputs: 6, hidden: [5, 4], classes: 3), batch: 4, seed: 19, step: 3e-3)
    checkNetwork(
      Network(
        inputShape: [2, 6, 6],
        layers: [
          .conv2d(filters: 3, kernel: 3, padding: 1), .relu, .maxPool(size: 2),
          .conv2d(filters: 2, kernel: 3, padding: 1), .relu, .maxPool(size: 3),
          .dense(outputs: 4), .relu, .dense(outputs: 3),
        ]), batch: 2, seed: 20, step: 3e-3)
  }

  /// The checker must reject gradients that are slightly wrong, or the tests above prove nothing.
  @Test func checkerRejectsWrongGradients() {
    let seed: UInt64 = 21
    var rng = RandomStream(seed: seed, purpose: "gradient-check")
    let network = Network(inputShape: [2, 5, 4], layers: [.conv2d(filters: 3, kernel: 3, padding: 1)])
    let weights = rng.weights(for: network)
    let features = rng.normals(2 * network.inputCount)
    let labels = rng.labels(2, classes: network.classes)
    let analytic = network.lossAndGradient(weights, features: features, labels: labels).weights.values
    let numeric = checker.numeric(at: weights.values, indices: Array(weights.values.indices)) { w in
      network.lossAndGradient(Weights(layout: network.layout, values: w), features: features, labels: labels)
        .loss
    }
    let all = Array(analytic.indices)
    let honest = checker.compare(analytic: analytic, numeric: numeric, indices: all)
    #expect(checker.passes(honest), "seed \(seed): \(honest)")

    let largest = all.max { abs(analytic[$0]) < abs(analytic[$1]) }!
    var wrong = analytic
    wrong[largest] *= 1.1  // 10% off in one component
    #expect(!checker.passes(checker.compare(analytic: wrong, numeric: numeric, indices: all)), "seed \(seed)")

    wrong = analytic.map { $0 * 1.05 }  // 5% off everywhere (e.g. a wrong batch normalisation)
    #expect(!checker.passes(checker.compare(analytic: wrong, numeric: numeric, indices: all)), "seed \(seed)")

    wrong = analytic
    wrong.swapAt(0, 1)  // two neighbouring kernel taps swapped (an im2col off-by-one)
    #expect(!checker.passes(checker.compare(analytic: wrong, numeric: numeric, indices: all)), "seed \(seed)")

    wrong = analytic
    let smallest = all.min { abs(analytic[$0]) < abs(analytic[$1]) }!
    wrong[smallest] += 0.05 * abs(analytic[largest])  // a small component off by 5% of the scale
    #expect(!checker.passes(checker.compare(analytic: wrong, numeric: numeric, indices: all)), "seed \(seed)")
  }
}
