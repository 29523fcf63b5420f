import CohortCore
import CohortML
import Foundation
import Testing

@Suite struct AdamTests {
  /// Logistic regression 1 → 2 from zeros on one example (x = 2, label 0): every step is one batch.
  let network = Network.logisticRegression(inputs: 1, classes: 2)
  let data = Dataset(features: [2], labels: [0], featureShape: [1], classes: 2)

  func train(from values: [Float], epochs: Int, _ optimizer: OptimizerConfiguration) -> TrainingResult {
    var rng = RandomStream(seed: 1, purpose: "train")
    return LocalTrainer(network: network).train(
      from: Weights(layout: network.layout, values: values), on: data,
      configuration: TrainingConfiguration(epochs: epochs, batchSize: 1, optimizer: optimizer), rng: &rng)
  }

  @Test func twoStepsMatchHandComputedValues() {
    // Layout [W₀, W₁, b₀, b₁]. Step 1: logits 0, p = (½, ½), ∂/∂logits = (−½, ½), so
    // g = (−1, 1, −½, ½); m̂ = g, v̂ = g², and w −= 0.1 · g / (|g| + ε) ≈ ∓0.1.
    // Step 2: logits (0.3, −0.3), p₀ = 1/(1 + e^−0.6) = 0.645656, g_W₀ = 2(p₀ − 1) = −0.708688;
    // m = 0.9·(−0.1) + 0.1·(−0.708688) = −0.160869, m̂ = m / 0.19 = −0.846678;
    // v = 0.999·0.001 + 0.001·0.502239 = 0.00150124, v̂ = v / 0.001999 = 0.750995;
    // W₀ = 0.1 + 0.1 · 0.846678 / 0.866600 = 0.197701.
    let adam = OptimizerConfiguration.adam(learningRate: 0.1)
    let one = train(from: [0, 0, 0, 0], epochs: 1, adam)
    let two = train(from: [0, 0, 0, 0], epochs: 2, adam)
    #expect(one.steps == 1 && two.steps == 2)
    for (got, want) in zip(one.weights.values, [0.1, -0.1, 0.1, -0.1] as [Float]) {
      #expect(abs(got - want) < 1e-6, "step 1: \(one.weights.values)")
    }
    for (got, want) in zip(
      two.weights.values, [0.197_701_155, -0.197_701_155, 0.197_701_153, -0.197_701_153] as [Float])
    {
      #expect(abs(got - want) < 2e-6, "step 2: \(two.weights.values)")
    }
    // The state lives for one call (one participation): a second call starts its moments at
    // zero, so its first step is again ≈ ±0.1, not the 0.0977 of a continued run.
    let again = train(from: one.weights.values, epochs: 1, adam)
    #expect(abs(again.weights.values[0] - 0.2) < 1e-6, "\(again.weights.values)")
  }

  @Test func weightDecayIsAddedToTheGradient() {
    // From w = (1, 1, 0, 0) with decay 0.5 the gradient of W₁ is 2·p₁ + 0.5 > 0 and of b₁ is p₁ > 0.
    let decayed = train(from: [1, 1, 0, 0], epochs: 1, .adam(learningRate: 0.01, weightDecay: 0.5))
    let plain = train(from: [1, 1, 0, 0], epochs: 1, .adam(learningRate: 0.01))
    // The first Adam step is lr · sign(g) whatever |g|: W₀'s gradient 2(p₀ − 1) + 0.5 = −0.5 < 0
    // flips nothing, but in the plain run it is −1; both move W₀ up by lr.
    #expect(abs(decayed.weights.values[0] - 1.01) < 1e-6 && abs(plain.weights.values[0] - 1.01) < 1e-6)
    // Two steps tell them apart: the moments differ.
    let decayed2 = train(from: [1, 1, 0, 0], epochs: 2, .adam(learningRate: 0.01, weightDecay: 0.5))
    let plain2 = train(from: [1, 1, 0, 0], epochs: 2, .adam(learningRate: 0.01))
    #expect(decayed2.weights.values != plain2.weights.values)
  }

  @Test func adamLearnsAndIsDeterministic() {
    var rng = RandomStream(seed: 5, purpose: "blobs")
    var features: [Float] = []
    var labels: [Int32] = []
    for _ in 0..<200 {
      let y = rng.int(below: 3)
      labels.append(Int32(y))
      features += (0..<4).map { Float(rng.normal()) * 0.5 + ($0 == y ? 3 : 0) }
    }
    let data = Dataset(features: features, labels: labels, featureShape: [4], classes: 3)
    let mlp = Network.mlp(inputs: 4, hidden: [8], classes: 3)
    let start = mlp.initialWeights(seed: 5)
    func run() -> Weights {
      var r = RandomStream(seed: 6, purpose: "train")
      return LocalTrainer(network: mlp).train(
        from: start, on: data,
        configuration: TrainingConfiguration(epochs: 3, batchSize: 10, optimizer: .adam(learningRate: 0.01)),
        rng: &r
      ).weights
    }
    let a = run()
    #expect(a == run())
    #expect(
      mlp.evaluate(a, on: data).accuracy > 0.9
        && mlp.evaluate(a, on: data).loss < mlp.evaluate(start, on: data).loss)
  }
}

@Suite struct PlanTrainingConfigurationTests {
  @Test func theRoundsLearningRateFollowsTheSchedule() {
    var device = DevicePlan(
      optimizer: OptimizerPlan(learningRate: 0.1, schedule: .step(stepSize: 2, gamma: 0.5)))
    #expect(TrainingConfiguration(plan: device, round: 1).optimizer.learningRate == 0.1)
    #expect(TrainingConfiguration(plan: device, round: 3).optimizer.learningRate == 0.05)
    #expect(TrainingConfiguration(plan: device, round: 6).optimizer.learningRate == Float(0.1 * 0.25))
    // Without a schedule every round has the plan's rate, as before schedules existed.
    device.optimizer.schedule = nil
    #expect(TrainingConfiguration(plan: device, round: 40) == TrainingConfiguration(plan: device))
    #expect(TrainingConfiguration(plan: device).optimizer == OptimizerConfiguration(learningRate: 0.1))
  }

  @Test func anAdamPlanTrainsWithAdam() {
    let device = DevicePlan(optimizer: .adam(learningRate: 0.002, beta1: 0.8, beta2: 0.99, epsilon: 1e-6))
    let c = TrainingConfiguration(plan: device)
    #expect(c.optimizer == .adam(learningRate: 0.002, beta1: 0.8, beta2: 0.99, epsilon: 1e-6))
  }
}

@Suite struct InitializationTests {
  let network = Network.mlp(inputs: 60, hidden: [200], classes: 10)

  func tensor(_ w: Weights, _ name: String) -> [Float] { Array(w[tensor: name]) }

  @Test func zerosDrawsNothing() {
    #expect(network.initialWeights(seed: 3, scheme: .zeros).values.allSatisfy { $0 == 0 })
  }

  @Test func autoIsTheDefaultAndGlorotUniformScalesEveryLayerByFanInPlusFanOut() {
    let auto = network.initialWeights(seed: 3)
    #expect(auto == network.initialWeights(seed: 3, scheme: nil))
    let glorot = network.initialWeights(seed: 3, scheme: .glorotUniform)
    // The same draws in the same order: the output layer (not before a ReLU) is Glorot under
    // both; the hidden layer is He under auto, Glorot under glorot_uniform.
    #expect(tensor(glorot, "dense1.weight") == tensor(auto, "dense1.weight"))
    let he = Float((6.0 / 60).squareRoot())
    let limit = Float((6.0 / 260).squareRoot())
    let g0 = tensor(glorot, "dense0.weight")
    let a0 = tensor(auto, "dense0.weight")
    #expect(g0.allSatisfy { abs($0) <= limit } && (g0.map { abs($0) }.max() ?? 0) > 0.99 * limit)
    #expect(a0.allSatisfy { abs($0) <= he } && (a0.map { abs($0) }.max() ?? 0) > 0.99 * limit)
    #expect(zip(g0, a0).allSatisfy { abs($0 - $1 * limit / he) <= 1e-6 })
    for w in [auto, glorot] {
      #expect(
        tensor(w, "dense0.bias").allSatisfy { $0 == 0 } && tensor(w, "dense1.bias").allSatisfy { $0 == 0 })
    }
  }

  @Test func heNormalHasStandardDeviationRootTwoOverFanIn() {
    let w = network.initialWeights(seed: 3, scheme: .heNormal)
    for (name, fanIn) in [("dense0.weight", 60.0), ("dense1.weight", 200.0)] {
      let v = tensor(w, name).map(Double.init)
      let mean = v.reduce(0, +) / Double(v.count)
      let sd = (v.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(v.count)).squareRoot()
      let want = (2 / fanIn).squareRoot()
      // 12,000 and 2,000 draws: the sample deviation is within a few percent.
      #expect(abs(sd / want - 1) < 0.06 && abs(mean) < 0.1 * want, "\(name): sd \(sd), want \(want)")
    }
    #expect(w == network.initialWeights(seed: 3, scheme: .heNormal))
    #expect(w != network.initialWeights(seed: 4, scheme: .heNormal))
  }

  @Test func theConvolutionsFansCountTheKernelArea() {
    let cnn = Network.cnn(inputShape: [1, 8, 8], classes: 3)
    let w = cnn.initialWeights(seed: 1, scheme: .glorotUniform)
    // conv0: fan_in 1·25, fan_out 32·25.
    let limit = Float((6.0 / (25 + 800)).squareRoot())
    let conv = tensor(w, "conv0.weight")
    #expect(conv.allSatisfy { abs($0) <= limit } && (conv.map { abs($0) }.max() ?? 0) > 0.95 * limit)
  }

  @Test func aPlanWithInitialReadsTheFile() throws {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cohort-init-\(getpid())")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let lr = Network.logisticRegression(inputs: 3, classes: 2)
    let values: [Float] = [1, 2, 3, 4, 5, 6, -1, -2]
    // dense0.weight [2, 3] then dense0.bias [2], as the layout lays them out.
    let header =
      "{\"dense0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
      + "\"dense0.bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]}}"
    var data = Data()
    withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { data.append(contentsOf: $0) }
    data.append(contentsOf: Array(header.utf8))
    data.append(Float32LittleEndian.data(values))
    let path = directory.appendingPathComponent("w.safetensors").path
    _ = FileManager.default.createFile(atPath: path, contents: data)
    let plan = ModelPlan(kind: .logisticRegression, inputShape: [3], classes: 2, initial: path)
    #expect(try lr.initialWeights(plan: plan, seed: 9).values == values)
    // Another model's plan: the tensors do not match, and the error names them.
    let other = ModelPlan(kind: .logisticRegression, inputShape: [4], classes: 2, initial: path)
    #expect(throws: CohortError.self) { try Network(plan: other).initialWeights(plan: other, seed: 9) }
    // No file: the seed and scheme decide.
    let drawn = ModelPlan(kind: .logisticRegression, inputShape: [3], classes: 2, initialization: .zeros)
    #expect(try lr.initialWeights(plan: drawn, seed: 9).values.allSatisfy { $0 == 0 })
  }
}
