public import CohortCore

/// A scenario's data made concrete: the pooled training examples, the central test set, and
/// the division of the training examples among devices.
public struct FederatedData: Sendable {
  public var train: Dataset
  public var test: Dataset
  public var partition: Partition
  /// Each device's own test examples, as indices into `test`, when the data says whose they
  /// are (a CSV test file with the client column, a LEAF test file, or a test fraction split off
  /// data with owners) and devices are the data's owners (a natural partition); nil otherwise.
  /// Devices evaluate the model they receive on these (federated evaluation).
  public var deviceTests: [[Int]]?

  public init(train: Dataset, test: Dataset, partition: Partition, deviceTests: [[Int]]? = nil) {
    self.train = train
    self.test = test
    self.partition = partition
    self.deviceTests = deviceTests
  }

  /// Loads (or generates) the scenario's data and partitions it. Every draw comes from streams
  /// derived from the scenario's seed, so the same scenario gives the same data and partition.
  public static func load(_ scenario: Scenario) throws(CohortError) -> FederatedData {
    let (train, test) = try examples(scenario)
    try checkModelFits(scenario.plan.model, train)
    let partition = try partitionExamples(train, scenario)
    let deviceTests = scenario.partition == .natural ? ownTests(train: train, test: test) : nil
    return FederatedData(train: train, test: test, partition: partition, deviceTests: deviceTests)
  }

  /// For each training client (by index into `train.clientNames`), the test examples whose owner
  /// has the same name; nil unless both sets name owners. Test owners with no training examples
  /// are left to the central test set only.
  static func ownTests(train: Dataset, test: Dataset) -> [[Int]]? {
    guard let names = train.clientNames, let owners = test.clients, let testNames = test.clientNames else {
      return nil
    }
    var index: [String: Int] = [:]
    for (i, name) in names.enumerated() where index[name] == nil { index[name] = i }
    let device = testNames.map { index[$0] }
    var result = [[Int]](repeating: [], count: names.count)
    for (i, owner) in owners.enumerated() {
      guard owner >= 0 && Int(owner) < device.count, let k = device[Int(owner)] else { continue }
      result[k].append(i)
    }
    return result
  }

  static func examples(_ scenario: Scenario) throws(CohortError) -> (train: Dataset, test: Dataset) {
    let seed = scenario.seed
    func withTest(
      _ train: Dataset, _ test: DataSource.TestData, load: (String) throws(CohortError) -> Dataset
    )
      throws(CohortError) -> (Dataset, Dataset)
    {
      switch test {
      case .file(let path): return (train, try load(path))
      case .fraction(let f):
        var rng = RandomStream(seed: seed, purpose: "test-split")
        return try train.split(testFraction: f, rng: &rng)
      }
    }
    switch scenario.data {
    case .syntheticFedProx(let s):
      let generator = try SyntheticFedProx(
        .init(
          alpha: s.alpha, beta: s.beta, iid: s.iid, devices: s.devices,
          maxSamplesPerDevice: s.maxSamplesPerDevice),
        seed: seed)
      return generator.pooled()
    case .csv(let c):
      let train = try CSVDataset.load(path: c.path, labelColumn: c.labelColumn, clientColumn: c.clientColumn)
      return try withTest(train, c.test) { path throws(CohortError) in
        // A test file may leave out the client column: its examples are then central only.
        try CSVDataset.load(
          path: path, labelColumn: c.labelColumn, clientColumn: c.clientColumn, clientColumnOptional: true)
      }
    case .idx(let i):
      let train = try IDXDataset.load(images: i.images, labels: i.labels)
      if let images = i.testImages, let labels = i.testLabels {
        return (train, try IDXDataset.load(images: images, labels: labels))
      }
      return try withTest(train, .fraction(i.testFraction)) { _ throws(CohortError) in train }
    case .leaf(let l):
      let train = try LEAFDataset.load(path: l.train)
      return try withTest(train, l.test) { path throws(CohortError) in try LEAFDataset.load(path: path) }
    }
  }

  static func checkModelFits(_ model: ModelPlan, _ data: Dataset) throws(CohortError) {
    // Vector models take any example flattened; the CNN needs the exact image shape.
    let fits =
      model.kind == .cnn ? model.inputShape == data.featureShape : model.inputCount == data.featureCount
    guard fits else {
      throw CohortError(
        .shapeMismatch,
        "the plan's model takes inputs of shape \(model.inputShape), but the data's examples have shape "
          + "\(data.featureShape)",
        fix: model.kind == .cnn
          ? "set model.input_shape to \(data.featureShape)" : "set model.inputs to \(data.featureCount)")
    }
    let dataClasses = data.labelCounts().lastIndex { $0 > 0 }.map { $0 + 1 } ?? 0
    guard model.classes >= dataClasses else {
      throw CohortError(
        .shapeMismatch,
        "the data has labels up to \(dataClasses - 1) but the model has \(model.classes) classes",
        fix: "set model.classes to at least \(dataClasses)")
    }
  }

  static func partitionExamples(_ data: Dataset, _ scenario: Scenario) throws(CohortError) -> Partition {
    var rng = RandomStream(seed: scenario.seed, purpose: "partition")
    if scenario.partition == .natural {
      let partition = try Partitioner.natural(data)
      if let count = scenario.devices.count, count != partition.clientCount {
        throw CohortError(
          .invalidConfiguration,
          "devices.count is \(count) but the data names \(partition.clientCount) clients (partition kind natural)",
          fix: "set devices.count to \(partition.clientCount) or leave it out")
      }
      return partition
    }
    guard let clients = scenario.populationSize else {
      throw CohortError(
        .invalidConfiguration, "partition kind \(scenario.partition) needs the number of devices",
        fix: "set devices.count in the scenario")
    }
    switch scenario.partition {
    case .natural, .iid:
      return try Partitioner.iid(exampleCount: data.count, clients: clients, rng: &rng)
    case .dirichlet(let alpha, nil):
      return try Partitioner.dirichlet(
        labels: data.labels, classes: data.classes, clients: clients, alpha: alpha, rng: &rng)
    case .dirichlet(let alpha, let minimum?):
      return try Partitioner.dirichlet(
        labels: data.labels, classes: data.classes, clients: clients, alpha: alpha, minimumSize: minimum.size,
        onSmall: minimum.onSmall, rng: &rng)
    case .pathological(let k):
      return try Partitioner.pathological(
        labels: data.labels, classes: data.classes, clients: clients, classesPerClient: k, rng: &rng)
    case .innerDirichlet(let alpha, let law):
      return try Partitioner.innerDirichlet(
        labels: data.labels, classes: data.classes, clients: clients, alpha: alpha, law: law, rng: &rng)
    case .sized(let law):
      return try Partitioner.sized(exampleCount: data.count, clients: clients, law: law, rng: &rng)
    case .shards(let perClient):
      return try Partitioner.shards(
        labels: data.labels, clients: clients, shardsPerClient: perClient, rng: &rng)
    case .quantitySkew(let sizes):
      return try Partitioner.quantitySkew(exampleCount: data.count, clients: clients, sizes: sizes, rng: &rng)
    }
  }
}

extension Network {
  /// The network a plan's `model` section describes.
  public init(plan model: ModelPlan) {
    switch model.kind {
    case .logisticRegression: self = .logisticRegression(inputs: model.inputCount, classes: model.classes)
    case .mlp: self = .mlp(inputs: model.inputCount, hidden: model.hidden, classes: model.classes)
    case .cnn: self = .cnn(inputShape: model.inputShape, classes: model.classes)
    }
  }
}

extension TrainingConfiguration {
  /// Local training as a plan's `device` section describes it, at the base learning rate.
  public init(plan device: DevicePlan) {
    let o = device.optimizer
    let optimizer: OptimizerConfiguration
    switch o.kind {
    case .sgd:
      optimizer = OptimizerConfiguration(
        learningRate: Float(o.learningRate), momentum: Float(o.momentum), weightDecay: Float(o.weightDecay))
    case .adam:
      optimizer = .adam(
        learningRate: Float(o.learningRate), beta1: Float(o.beta1 ?? OptimizerPlan.defaultBeta1),
        beta2: Float(o.beta2 ?? OptimizerPlan.defaultBeta2),
        epsilon: Float(o.epsilon ?? OptimizerPlan.defaultEpsilon), weightDecay: Float(o.weightDecay))
    }
    self.init(
      epochs: device.epochs, batchSize: device.batchSize, optimizer: optimizer,
      proximalMu: Float(device.proximalMu))
  }

  /// Local training in `round` (1-based): the learning rate follows the plan's schedule; without
  /// one this is `init(plan:)` exactly.
  public init(plan device: DevicePlan, round: Int) {
    self.init(plan: device)
    if device.optimizer.schedule != nil {
      optimizer.learningRate = Float(device.optimizer.learningRate(round: round))
    }
  }
}

extension Network {
  /// The model every run of a scenario starts from, drawn from the scenario's seed; the same
  /// for `cohort train`, `cohort simulate` and `cohort model export --round 0`.
  public func initialWeights(seed: UInt64, scheme: ModelPlan.Initialization? = nil) -> Weights {
    var rng = RandomStream(seed: seed, purpose: "initial-weights")
    return initialWeights(&rng, scheme: scheme)
  }

  /// The first global model of a run of `model` (this network's plan): read from
  /// `model.initial` when the plan gives a file, otherwise drawn from `seed` with `model.init`.
  /// Throws when the file cannot be read or does not match the layout, naming the tensor.
  public func initialWeights(plan model: ModelPlan, seed: UInt64) throws(CohortError) -> Weights {
    guard let path = model.initial else { return initialWeights(seed: seed, scheme: model.initialization) }
    return try SafetensorsReader.load(path: path, layout: layout)
  }
}
