public import CohortCore

/// A device optimizer. `sgd`: stochastic gradient descent with optional heavy-ball momentum and
/// L2 weight decay, `v = momentum · v + (g + weightDecay · w)`, `w −= learningRate · v`
/// (PyTorch's convention; with momentum 0 this is plain SGD). `adam`: Adam with bias correction
/// on `g + weightDecay · w` (PyTorch's `torch.optim.Adam`). Optimizer state starts at zero in
/// every training call: it lives for one participation.
public struct OptimizerConfiguration: Sendable, Hashable, Codable {
  public enum Kind: String, Sendable, Hashable, Codable { case sgd, adam }

  public var kind: Kind
  public var learningRate: Float
  /// SGD only.
  public var momentum: Float
  public var weightDecay: Float
  /// Adam only: the moments' decays and the denominator's ε.
  public var beta1: Float
  public var beta2: Float
  public var epsilon: Float

  public init(learningRate: Float, momentum: Float = 0, weightDecay: Float = 0) {
    self.kind = .sgd
    self.learningRate = learningRate
    self.momentum = momentum
    self.weightDecay = weightDecay
    self.beta1 = 0
    self.beta2 = 0
    self.epsilon = 0
  }

  /// Adam, with the usual defaults.
  public static func adam(
    learningRate: Float = 0.001, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8,
    weightDecay: Float = 0
  ) -> OptimizerConfiguration {
    var c = OptimizerConfiguration(learningRate: learningRate, weightDecay: weightDecay)
    c.kind = .adam
    c.beta1 = beta1
    c.beta2 = beta2
    c.epsilon = epsilon
    return c
  }
}

/// How a client trains locally in one round.
public struct TrainingConfiguration: Sendable, Hashable, Codable {
  /// Passes over the client's examples, each in a fresh random order.
  public var epochs: Int
  /// Examples per step; the last step of an epoch takes what is left.
  public var batchSize: Int
  public var optimizer: OptimizerConfiguration
  /// FedProx's μ (Li et al. 2020): adds (μ/2)·‖w − w_global‖² to the loss, where w_global is
  /// the weights training starts from. 0 is FedAvg's plain local SGD.
  public var proximalMu: Float

  public init(
    epochs: Int = 1, batchSize: Int = 10, optimizer: OptimizerConfiguration, proximalMu: Float = 0
  ) {
    self.epochs = epochs
    self.batchSize = batchSize
    self.optimizer = optimizer
    self.proximalMu = proximalMu
  }
}

/// What one local training run produced.
public struct TrainingResult: Sendable {
  public var weights: Weights
  /// The mean cross-entropy of the examples trained on, each measured in the forward pass of its
  /// step (so with the weights of that moment); regularisation terms are not included. 0 when
  /// nothing was trained.
  public var meanLoss: Double
  /// Examples processed, counting every epoch.
  public var examples: Int
  /// Optimizer steps taken.
  public var steps: Int

  public init(weights: Weights, meanLoss: Double, examples: Int, steps: Int) {
    self.weights = weights
    self.meanLoss = meanLoss
    self.examples = examples
    self.steps = steps
  }
}
