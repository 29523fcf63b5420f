import CohortCore
import CohortML
import Foundation
import Testing

/// `classes` well-separated Gaussian blobs in `dimensions` dimensions: linearly separable.
private func blobs(count: Int, dimensions: Int, classes: Int, seed: UInt64) -> Dataset {
  var rng = RandomStream(seed: seed, purpose: "blobs")
  let centres = (0..<classes).map { _ in (0..<dimensions).map { _ in Float(rng.normal()) * 4 } }
  var features: [Float] = []
  var labels: [Int32] = []
  for _ in 0..<count {
    let y = rng.int(below: classes)
    labels.append(Int32(y))
    features += centres[y].map { $0 + Float(rng.normal()) * 0.5 }
  }
  return Dataset(features: features, labels: labels, featureShape: [dimensions], classes: classes)
}

@Suite struct TrainingTests {
  @Test func trainingReducesLossOnSeparableData() {
    let seed: UInt64 = 51
    let data = blobs(count: 300, dimensions: 8, classes: 4, seed: seed)
    for network in [
      Network.logisticRegression(inputs: 8, classes: 4), .mlp(inputs: 8, hidden: [16], classes: 4),
    ] {
      var rng = RandomStream(seed: seed, purpose: "train")
      let start = network.initialWeights(&rng)
      let before = network.evaluate(start, on: data)
      let result = LocalTrainer(network: network).train(
        from: start, on: data,
        configuration: TrainingConfiguration(epochs: 3, batchSize: 10, optimizer: .init(learningRate: 0.05)),
        rng: &rng)
      let after = network.evaluate(result.weights, on: data)
      #expect(
        after.loss < 0.2 * before.loss, "seed \(seed) \(network.layers): loss \(before.loss) → \(after.loss)")
      #expect(after.accuracy > 0.97, "seed \(seed) \(network.layers): accuracy \(after.accuracy)")
      #expect(result.meanLoss < before.loss, "seed \(seed): mean training loss \(result.meanLoss)")
      #expect(result.examples == 900 && result.steps == 90)
    }
  }

  @Test func convolutionalNetworkLearns() {
    // 6×6 images whose class is the quadrant holding a bright square.
    let seed: UInt64 = 52
    var rng = RandomStream(seed: seed, purpose: "quadrants")
    var features: [Float] = []
    var labels: [Int32] = []
    for _ in 0..<120 {
      let q = rng.int(below: 4)
      var image = (0..<36).map { _ in Float(rng.normal()) * 0.3 }
      let (top, left) = ((q / 2) * 3, (q % 2) * 3)
      for y in 0..<3 {
        for x in 0..<3 {
          let pixel: Int = (top + y) * 6 + left + x
          image[pixel] += 1.5
        }
      }
      features += image
      labels.append(Int32(q))
    }
    let data = Dataset(features: features, labels: labels, featureShape: [1, 6, 6], classes: 4)
    let network = Network(
      inputShape: [1, 6, 6],
      layers: [.conv2d(filters: 4, kernel: 3, padding: 1), .relu, .maxPool(size: 2), .dense(outputs: 4)])
    let start = network.initialWeights(&rng)
    let before = network.evaluate(start, on: data)
    let result = LocalTrainer(network: network).train(
      from: start, on: data,
      configuration: TrainingConfiguration(
        epochs: 5, batchSize: 8, optimizer: .init(learningRate: 0.05, momentum: 0.5)),
      rng: &rng)
    let after = network.evaluate(result.weights, on: data)
    #expect(after.loss < 0.3 * before.loss, "seed \(seed): loss \(before.loss) → \(after.loss)")
    #expect(after.accuracy > 0.95, "seed \(seed): accuracy \(after.accuracy)")
  }

  @Test func sameSeedGivesBitIdenticalWeights() {
    let seed: UInt64 = 53
    let data = blobs(count: 57, dimensions: 5, classes: 3, seed: seed)
    let network = Network.mlp(inputs: 5, hidden: [7], classes: 3)
    let configuration = TrainingConfiguration(
      epochs: 2, batchSize: 4, optimizer: .init(learningRate: 0.1, momentum: 0.9, weightDecay: 1e-3),
      proximalMu: 0.01)
    func run(_ seed: UInt64) -> TrainingResult {
      var rng = RandomStream(seed: seed, purpose: "train")
      let start = network.initialWeights(&rng)
      return LocalTrainer(network: network).train(
        from: start, on: data, configuration: configuration, rng: &rng)
    }
    let a = run(seed)
    let b = run(seed)
    #expect(a.weights.values.map(\.bitPattern) == b.weights.values.map(\.bitPattern), "seed \(seed)")
    #expect(a.meanLoss.bitPattern == b.meanLoss.bitPattern, "seed \(seed)")
    #expect(run(seed + 1).weights != a.weights, "seed \(seed + 1)")
  }

  @Test func parallelTasksTrainLikeSerialCalls() async {
    // The simulator trains many clients at once, one task each, with OpenBLAS on one thread.
    BLAS.useOneThread()
    let seed: UInt64 = 60
    let data = blobs(count: 200, dimensions: 6, classes: 3, seed: seed)
    let network = Network.mlp(inputs: 6, hidden: [12], classes: 3)
    var initRNG = RandomStream(seed: seed, purpose: "init")
    let start = network.initialWeights(&initRNG)
    let trainer = LocalTrainer(network: network)
    let configuration = TrainingConfiguration(epochs: 2, batchSize: 8, optimizer: .init(learningRate: 0.05))
    @Sendable func client(_ k: Int) -> Weights {
      var rng = RandomStream(seed: seed, purpose: "train", device: k)
      let indices = Array(stride(from: k, to: 200, by: 4))
      return trainer.train(from: start, on: data, indices: indices, configuration: configuration, rng: &rng)
        .weights
    }
    let serial = (0..<4).map(client)
    let parallel = await withTaskGroup(of: (Int, Weights).self) { group in
      for k in 0..<4 { group.addTask { (k, client(k)) } }
      var results = [Weights?](repeating: nil, count: 4)
      for await (k, w) in group { results[k] = w }
      return results
    }
    for k in 0..<4 { #expect(parallel[k] == serial[k], "seed \(seed), client \(k)") }
  }

  @Test func epochsVisitOnePermutationEachDrawnFromTheStream() {
    // Batch size 1 exposes the visiting order: it must be RandomStream.shuffle of the indices,
    // drawn afresh each epoch from the stream passed in.
    let seed: UInt64 = 61
    let data = blobs(count: 9, dimensions: 3, classes: 3, seed: seed)
    let network = Network.logisticRegression(inputs: 3, classes: 3)
    var initRNG = RandomStream(seed: seed, purpose: "init")
    let start = network.initialWeights(&initRNG)
    var rng = RandomStream(seed: seed, purpose: "train")
    let trained = LocalTrainer(network: network).train(
      from: start, on: data,
      configuration: TrainingConfiguration(epochs: 3, batchSize: 1, optimizer: .init(learningRate: 0.3)),
      rng: &rng)

    var replay = RandomStream(seed: seed, purpose: "train")
    var w = start
    for _ in 0..<3 {
      var order = Array(0..<9)
      replay.shuffle(&order)
      for i in order {
        let x = Array(data.features[(i * 3)..<(i * 3 + 3)])
        w.axpy(-0.3, network.lossAndGradient(w, features: x, labels: [data.labels[i]]).weights)
      }
    }
    let distance = trained.weights.difference(w).l2Norm / w.difference(start).l2Norm
    #expect(distance < 1e-6, "seed \(seed): relative distance \(distance)")
    // The trainer consumed exactly the replay's draws.
    #expect(rng.next() == replay.next(), "seed \(seed)")
  }

  @Test func networkWithoutParametersTrainsAsANoOp() {
    // An empty weight vector must not trip any pointer arithmetic; the loss is still measured.
    let network = Network(inputShape: [2], layers: [.relu])
    let data = Dataset(features: [1, 0, 0, 1, 2, 0], labels: [0, 1, 0], featureShape: [2], classes: 2)
    var rng = RandomStream(seed: 62, purpose: "train")
    let result = LocalTrainer(network: network).train(
      from: .zeros(network.layout), on: data,
      configuration: TrainingConfiguration(batchSize: 2, optimizer: .init(learningRate: 0.1, momentum: 0.9)),
      rng: &rng)
    #expect(result.weights.count == 0 && result.steps == 2 && result.examples == 3)
    let evaluation = network.evaluate(result.weights, on: data)
    #expect(abs(result.meanLoss - evaluation.loss) < 1e-9 && evaluation.accuracy == 1)
  }

  @Test func lastPartialBatchIsAStep() {
    let seed: UInt64 = 54
    let data = blobs(count: 25, dimensions: 3, classes: 2, seed: seed)
    let network = Network.logisticRegression(inputs: 3, classes: 2)
    var rng = RandomStream(seed: seed, purpose: "train")
    let start = network.initialWeights(&rng)
    let trainer = LocalTrainer(network: network)
    let result = trainer.train(
      from: start, on: data,
      configuration: TrainingConfiguration(epochs: 2, batchSize: 10, optimizer: .init(learningRate: 0.1)),
      rng: &rng)
    #expect(result.steps == 6 && result.examples == 50, "seed \(seed)")

    let idle = trainer.train(
      from: start, on: data, indices: [],
      configuration: TrainingConfiguration(optimizer: .init(learningRate: 0.1)),
      rng: &rng)
    #expect(idle.weights == start && idle.steps == 0 && idle.examples == 0)
  }

  @Test func indicesRestrictTraining() {
    // Training on indices must equal training on the subset they select, bit for bit.
    let seed: UInt64 = 55
    let data = blobs(count: 40, dimensions: 4, classes: 3, seed: seed)
    let network = Network.logisticRegression(inputs: 4, classes: 3)
    let indices = [3, 7, 8, 15, 22, 23, 30, 31, 39, 0, 5]
    let configuration = TrainingConfiguration(epochs: 2, batchSize: 3, optimizer: .init(learningRate: 0.1))
    var rng = RandomStream(seed: seed, purpose: "init")
    let start = network.initialWeights(&rng)
    let trainer = LocalTrainer(network: network)
    var r1 = RandomStream(seed: seed, purpose: "train")
    var r2 = RandomStream(seed: seed, purpose: "train")
    let viaIndices = trainer.train(
      from: start, on: data, indices: indices, configuration: configuration, rng: &r1)
    let viaSubset = trainer.train(
      from: start, on: data.subset(indices), configuration: configuration, rng: &r2)
    #expect(viaIndices.weights == viaSubset.weights, "seed \(seed)")
    #expect(viaIndices.examples == 22)
  }

  /// Full-batch training must follow the optimizer's equations applied to the exact gradient:
  /// v = m·v + (g + λw + μ(w − w₀)), w −= η·v.
  @Test func optimizerFollowsMomentumWeightDecayAndProximalEquations() {
    let seed: UInt64 = 56
    let data = blobs(count: 12, dimensions: 4, classes: 3, seed: seed)
    let network = Network.mlp(inputs: 4, hidden: [5], classes: 3)
    var rng = RandomStream(seed: seed, purpose: "init")
    let start = network.initialWeights(&rng)
    for (momentum, decay, mu) in [
      (Float(0), Float(0), Float(0)), (0.9, 0, 0), (0, 0.1, 0), (0.9, 0.1, 0), (0, 0, 0.3), (0, 0.1, 0.3),
      (0.5, 0.05, 0.3),
    ] {
      let configuration = TrainingConfiguration(
        epochs: 4, batchSize: 12, optimizer: .init(learningRate: 0.2, momentum: momentum, weightDecay: decay),
        proximalMu: mu)
      var trainRNG = RandomStream(seed: seed, purpose: "train")
      let trained = LocalTrainer(network: network).train(
        from: start, on: data, configuration: configuration, rng: &trainRNG)

      var w = start
      var v = Weights.zeros(network.layout)
      for _ in 0..<4 {
        let g = network.lossAndGradient(
          w, features: data.features, labels: data.labels,
          regularization: Regularization(weightDecay: decay, proximalMu: mu, anchor: start)
        ).weights
        v.scale(by: momentum)
        v.axpy(1, g)
        w.axpy(-0.2, v)
      }
      // Only the order of summation inside a batch differs (the batch is shuffled), so the two
      // agree to rounding.
      let distance = trained.weights.difference(w).l2Norm / w.difference(start).l2Norm
      #expect(
        distance < 1e-4,
        "seed \(seed) momentum \(momentum) decay \(decay) mu \(mu): relative distance \(distance)")
    }
  }

  @Test func momentumAcceleratesAConstantGradient() {
    // With all-zero features the weight matrix gets no data gradient and the bias gradient is
    // nearly constant early on, so momentum should move the bias further than plain SGD does.
    let network = Network.logisticRegression(inputs: 3, classes: 2)
    let data = Dataset(
      features: [Float](repeating: 0, count: 30), labels: [Int32](repeating: 1, count: 10), featureShape: [3],
      classes: 2)
    func biasAfter(momentum: Float) -> Float {
      var rng = RandomStream(seed: 57, purpose: "train")
      let result = LocalTrainer(network: network).train(
        from: .zeros(network.layout), on: data,
        configuration: TrainingConfiguration(
          epochs: 5, batchSize: 10, optimizer: .init(learningRate: 0.01, momentum: momentum)),
        rng: &rng)
      return result.weights[tensor: "dense0.bias"].last!
    }
    let plain = biasAfter(momentum: 0)
    let heavy = biasAfter(momentum: 0.9)
    // Plain SGD: 5 steps of 0.01 · 0.5 ≈ 0.025. Momentum: 0.005 · (1 + 1.9 + 2.71 + 3.44 + 4.1) ≈ 0.065.
    #expect(plain > 0.02 && plain < 0.026, "plain SGD moved the bias \(plain)")
    #expect(heavy > 2 * plain, "momentum moved the bias \(heavy), plain SGD \(plain)")
  }

  @Test func weightDecayShrinksWeightsWithoutDataGradient() {
    // Zero features: the weight matrix's data gradient is exactly zero, so only decay acts on it:
    // w ← (1 − ηλ)·w each step.
    let seed: UInt64 = 58
    let network = Network.logisticRegression(inputs: 3, classes: 2)
    let data = Dataset(
      features: [Float](repeating: 0, count: 30), labels: [Int32](repeating: 0, count: 10), featureShape: [3],
      classes: 2)
    var rng = RandomStream(seed: seed, purpose: "init")
    let start = network.initialWeights(&rng)
    let result = LocalTrainer(network: network).train(
      from: start, on: data,
      configuration: TrainingConfiguration(
        epochs: 3, batchSize: 5, optimizer: .init(learningRate: 0.1, weightDecay: 0.5)),
      rng: &rng)
    let factor = Float(pow(1 - 0.1 * 0.5, Double(result.steps)))
    for (got, initial) in zip(result.weights[tensor: "dense0.weight"], start[tensor: "dense0.weight"]) {
      #expect(abs(got - initial * factor) <= 1e-6, "seed \(seed): \(got) vs \(initial * factor)")
    }
    #expect(result.steps == 6)
  }

  @Test func evaluationCountsHandMadeCase() {
    // Identity weights: the logits are the features. Examples: right, right, wrong, and a tie
    // (which goes to the first class, here the label).
    let network = Network.logisticRegression(inputs: 2, classes: 2)
    let weights = Weights(layout: network.layout, values: [1, 0, 0, 1, 0, 0])
    let data = Dataset(
      features: [2, 0, 0, 2, 3, 1, 1, 1], labels: [0, 1, 1, 0], featureShape: [2], classes: 2)
    let evaluation = network.evaluate(weights, on: data)
    #expect(evaluation.examples == 4)
    #expect(evaluation.accuracy == 0.75)
    let softplus = { (x: Double) in log(1 + exp(x)) }
    let expected = (softplus(-2) + softplus(-2) + softplus(2) + log(2.0)) / 4
    #expect(abs(evaluation.loss - expected) < 1e-6, "loss \(evaluation.loss) vs \(expected)")

    let some = network.evaluate(weights, on: data, indices: [2, 2, 0])
    #expect(some.examples == 3 && abs(some.accuracy - 1.0 / 3) < 1e-12)
    #expect(network.evaluate(weights, on: data, indices: []) == Evaluation(loss: 0, accuracy: 0, examples: 0))
  }

  @Test func evaluationSpansManyBatches() {
    // More examples than one evaluation batch holds: the result must not depend on batching.
    let seed: UInt64 = 59
    let data = blobs(count: 700, dimensions: 6, classes: 3, seed: seed)
    let network = Network.mlp(inputs: 6, hidden: [8], classes: 3)
    var rng = RandomStream(seed: seed, purpose: "init")
    let weights = network.initialWeights(&rng)
    let whole = network.evaluate(weights, on: data)
    let logits = network.logits(weights, features: data.features)
    var correct = 0
    for i in 0..<700 {
      let row = logits[(i * 3)..<(i * 3 + 3)]
      if row.firstIndex(of: row.max()!)! - i * 3 == Int(data.labels[i]) { correct += 1 }
    }
    #expect(whole.examples == 700)
    #expect(whole.accuracy == Double(correct) / 700, "seed \(seed)")
  }
}

@Suite struct ControlVariateTests {
  @Test func correctionShiftsEveryStepByServerMinusDeviceVariate() {
    // One full-batch step: plain SGD gives w1 = w − η·g; with control variates the step is
    // w − η·(g − c_k + c) = w1 − η·(c − c_k), by the definition of the corrected gradient.
    let seed: UInt64 = 7
    let data = blobs(count: 20, dimensions: 3, classes: 2, seed: seed)
    let network = Network.logisticRegression(inputs: 3, classes: 2)
    var initRng = RandomStream(seed: seed, purpose: "init")
    let start = network.initialWeights(&initRng)
    let config = TrainingConfiguration(epochs: 1, batchSize: 20, optimizer: .init(learningRate: 0.1))
    let trainer = LocalTrainer(network: network)
    var rng1 = RandomStream(seed: seed, purpose: "train")
    let plain = trainer.train(from: start, on: data, configuration: config, rng: &rng1).weights
    let c = Weights(layout: network.layout, values: (0..<network.layout.count).map { Float($0) * 0.1 })
    let ck = Weights(layout: network.layout, values: (0..<network.layout.count).map { _ in 0.05 })
    var rng2 = RandomStream(seed: seed, purpose: "train")
    let corrected = trainer.train(
      from: start, on: data, configuration: config, rng: &rng2,
      controlVariates: ControlVariates(server: c, device: ck)
    ).weights
    for i in 0..<plain.count {
      let expected = plain.values[i] - 0.1 * (c.values[i] - ck.values[i])
      #expect(abs(corrected.values[i] - expected) < 1e-6, "seed \(seed) index \(i)")
    }
    // Equal variates cancel: bit-identical to plain training.
    var rng3 = RandomStream(seed: seed, purpose: "train")
    let cancelled = trainer.train(
      from: start, on: data, configuration: config, rng: &rng3,
      controlVariates: ControlVariates(server: ck, device: ck))
    #expect(cancelled.weights == plain)
  }

  @Test func optionTwoControlUpdate() {
    // By hand: c_k⁺ = c_k − c + (x − y)/(Kη) with K = 4, η = 0.5 (Kη = 2):
    // x − y = [2, −4] → [1, −2]; c = [0.5, 0.5], c_k = [0.25, 0] → c_k⁺ = [0.75, −2.5],
    // Δc_k = c_k⁺ − c_k = [0.5, −2.5].
    let layout = WeightsLayout([TensorSpec("w", [2])])
    let cv = ControlVariates(
      server: Weights(layout: layout, values: [0.5, 0.5]), device: Weights(layout: layout, values: [0.25, 0]))
    let (control, delta) = cv.updated(
      start: Weights(layout: layout, values: [3, -1]), end: Weights(layout: layout, values: [1, 3]), steps: 4,
      learningRate: 0.5)
    #expect(control.values == [0.75, -2.5])
    #expect(delta.values == [0.5, -2.5])
  }
}
