public import CohortCompression
public import CohortCore
public import CohortML

/// A device's work for one round: train from the received model on local examples, evaluate it
/// if asked, clip (differential privacy) and encode (compression) the update. The Linux client
/// runtime and the simulator's virtual devices both run exactly this, so a simulated device and
/// a real one with the same examples, model and seed produce the same update bit for bit.
public struct LocalTraining: Sendable {
  /// One round's job.
  public struct Job: Sendable {
    public var device: Int
    public var round: Int
    public var start: Weights
    public var evaluate: Bool
    /// SCAFFOLD: the server's control variate c and this device's c_k (zeros before it first trains).
    public var controls: ControlVariates?
    /// DP-FedAvg: the L2 norm the device clips its update to.
    public var clip: Double?
    /// The round's shared codec seed (`UpdateCodec.sharedSeed`), as the server sent it; nil
    /// draws it from the run seed, as the simulator's server would.
    public var codecSeed: UInt64?

    public init(
      device: Int, round: Int, start: Weights, evaluate: Bool, controls: ControlVariates? = nil,
      clip: Double? = nil, codecSeed: UInt64? = nil
    ) {
      self.codecSeed = codecSeed
      self.device = device
      self.round = round
      self.start = start
      self.evaluate = evaluate
      self.controls = controls
      self.clip = clip
    }
  }

  /// A finished local training: the update and what the server weighs it by.
  public struct Outcome: Sendable {
    public var update: Weights
    public var examples: Int
    public var loss: Double
    public var evaluation: Evaluation?
    /// q-FedAvg: the loss of the received model on the device's training examples.
    public var lossAtGlobal: Double? = nil
    /// SCAFFOLD: the device's new control variate c_k⁺ and its change Δc_k.
    public var control: Weights? = nil
    public var controlDelta: Weights? = nil
    /// The update as the device uploads it, when the plan compresses (without secure aggregation).
    public var encoded: EncodedUpdate? = nil
    /// DP-FedAvg: whether the update's norm was within the clip before clipping (bᵢ).
    public var withinClip: Bool? = nil

    /// The bytes the upload takes: the encoded size, or 4 per Float32 value, and SCAFFOLD's Δc_k
    /// (4 per value) after it.
    public var uploadBytes: Int {
      (encoded?.wireBytes ?? update.count * MemoryLayout<Float>.size)
        + (controlDelta?.count ?? 0) * MemoryLayout<Float>.size
    }
  }

  public let plan: Plan
  public let network: Network
  /// Local training at the plan's base learning rate; a round trains with `training(round:)`.
  public let training: TrainingConfiguration
  /// The plan's update codec; nil for `compression.kind: none`.
  public let codec: UpdateCodec?
  /// The model's layout (what a checkpoint received for this plan must match).
  public let layout: WeightsLayout

  public init(plan: Plan) throws(CohortError) {
    self.plan = plan
    network = Network(plan: plan.model)
    training = TrainingConfiguration(plan: plan.device)
    layout = network.initialWeights(seed: 0).layout
    codec =
      plan.compression.kind == .none ? nil : try UpdateCodec(plan: plan.compression, dimension: layout.count)
  }

  /// Local training in `round`: the plan's learning-rate schedule applied (`training` exactly
  /// when the plan has none). In `server.mode: async` the task's round is the model version
  /// trained on, from 0; the schedule counts the version being made (v + 1), as it counts the
  /// round being made in synchronous mode, on the device and in the simulator alike.
  public func training(round: Int) -> TrainingConfiguration {
    guard plan.device.optimizer.schedule != nil else { return training }
    let made = plan.server.mode == .async ? round &+ 1 : round
    return TrainingConfiguration(plan: plan.device, round: made)
  }

  /// Trains `job` on `train` (only the examples at `indices` when given).
  /// - Parameters:
  ///   - seed: the root of the device's random streams (training order, encoding), drawn by
  ///     (seed, purpose, round, device).
  ///   - attack: a simulated adversary's change to the update, before clipping.
  public func run(
    _ job: Job, train: Dataset, indices: [Int]?, test: Dataset?, seed: UInt64,
    attack: ((Weights) -> Weights)? = nil
  ) -> Outcome {
    var rng = RandomStream(seed: seed, purpose: "train", round: job.round, device: job.device)
    // q-FedAvg weighs each device by its loss at the model it received, before training.
    let lossAtGlobal =
      plan.server.strategy.kind == .qfedavg
      ? network.evaluate(job.start, on: train, indices: indices).loss : nil
    let training = self.training(round: job.round)
    let result = LocalTrainer(network: network).train(
      from: job.start, on: train, indices: indices, configuration: training, rng: &rng,
      controlVariates: job.controls)
    let scaffold = job.controls.map {
      $0.updated(
        start: job.start, end: result.weights, steps: result.steps,
        learningRate: training.optimizer.learningRate)
    }
    var evaluation: Evaluation?
    if job.evaluate, let test, test.count > 0 {
      evaluation = network.evaluate(job.start, on: test)
    }
    var update = result.weights.difference(job.start)
    if let attack { update = attack(update) }
    // DP-FedAvg: the device clips what it sends, in the clear or into secure aggregation, before
    // any compression.
    var withinClip: Bool?
    if let clip = job.clip { withinClip = L2Clipping.clip(&update.values, to: clip) <= clip }
    var encoded: EncodedUpdate?
    if let codec {
      let shared = job.codecSeed ?? UpdateCodec.sharedSeed(runSeed: seed, round: job.round)
      if plan.secureAggregation.enabled {
        // Under secure aggregation a random mask is shared by the round's devices: each keeps the
        // masked coordinates, rescaled, and the ring encoding carries them. Quantization with a
        // fixed range happens in the ring itself (`SecureAggregationEncoding`); the plan reader
        // rejects the other codecs.
        if codec.plan.kind == .randomMask {
          var unused = RandomStream(seed: shared)
          update.values = codec.decode(codec.encode(update.values, seed: shared, stream: &unused))
        }
      } else {
        // The rotation signs or mask come from the round's shared seed and the device (the server
        // rebuilds them); the rounding draws are the device's own.
        var stream = RandomStream(seed: seed, purpose: "codec", round: job.round, device: job.device)
        encoded = codec.encode(
          update.values, seed: UpdateCodec.deviceSeed(shared: shared, round: job.round, device: job.device),
          stream: &stream)
      }
    }
    return Outcome(
      update: update, examples: result.examples / max(1, training.epochs), loss: result.meanLoss,
      evaluation: evaluation, lossAtGlobal: lossAtGlobal, control: scaffold?.control,
      controlDelta: scaffold?.delta, encoded: encoded, withinClip: withinClip)
  }
}
